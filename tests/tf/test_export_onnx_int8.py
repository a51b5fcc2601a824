"""Portable int8 ONNX files on every CPU's fast kernels: export keeps s8 weights and bounds each pair of
K-neighbour weights (|w1| + |w2| <= 128), so no GEMM-lowered layer can saturate a CPU without VNNI. The
property is checked from the file alone, and a file that breaks it is refused. (How predict and bench open
foreign s8 files is the runtime's: tests/tf/test_runtime.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetl.core import artifact
from edgetl.core.errors import ArtifactCheckError
from edgetl.core.formats import FORMATS
from edgetl.core.runtime import INT8_WEIGHTS


def run_file(blob: bytes, name: str, x: np.ndarray) -> np.ndarray:
    """Probabilities of a file in memory, through its registry row's runner."""
    fmt = FORMATS[name]
    return fmt.runner_class()(blob, fmt).outputs(x)


def gemm_layers(proto):
    """(node, weight array) of every GEMM-lowered layer with int8 weights."""
    from onnx import numpy_helper

    from edgetl.export.onnx_int8 import _weights

    inits = {t.name: t for t in proto.graph.initializer}
    return [(node, name, numpy_helper.to_array(inits[name])) for node, name, _ in _weights(proto.graph)]


def set_weight(proto, name: str, w: np.ndarray) -> None:
    from onnx import numpy_helper

    t = next(t for t in proto.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(w, name))


def avx2_gemm(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """u8 activations (M, K) x s8 weights (rows, K) the way AVX2's vpmaddubsw + vpmaddwd add them: each
    K-neighbour pair (2j, 2j+1) summed in a saturating int16 lane, then the pairs in int32."""
    if k.shape[1] % 2:
        a, k = np.pad(a, ((0, 0), (0, 1))), np.pad(k, ((0, 0), (0, 1)))
    prod = a[:, None, :].astype(np.int32) * k[None, :, :].astype(np.int32)
    pairs = np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767)
    return pairs.sum(-1)


def test_onnx_int8_cannot_saturate_checked_from_the_file(tiny_exported):
    """The property holds in the file itself, so a VNNI or Arm machine catches a regression as well as an
    AVX2 one: every GEMM-lowered layer keeps s8 weights (the VNNI fast path) with no K-neighbour pair over
    128, and AVX2's saturating pair sums, emulated on the worst-case input (all 255), equal exact sums."""
    import onnx

    from edgetl.export.onnx_int8 import k_pairs, saturation_risks

    path = tiny_exported / "model-int8.onnx"
    proto = onnx.load(path)
    assert artifact.read_meta(path)["int8_weights"] == INT8_WEIGHTS
    layers = gemm_layers(proto)
    assert len(layers) >= 30 and all(w.dtype == np.int8 for _, _, w in layers)
    assert saturation_risks(proto) == []
    for node, _, w in layers:
        assert np.abs(k_pairs(node, w).astype(np.int16)).sum(-1).max() <= 128
        k = k_pairs(node, w).reshape(len(k_pairs(node, w)), -1)
        a = np.full((1, k.shape[1]), 255, np.uint8)
        assert np.array_equal(avx2_gemm(a, k), a.astype(np.int64) @ k.T.astype(np.int64))
    sessions = json.loads((tiny_exported / "manifest.json").read_text())["artifacts"]["onnx-int8"]["parity"]["sessions"]
    assert sessions["saturation_risks"] == 0 and sessions["x64quantprecision_agreement"] == 1.0
    assert sessions["tolerance"] == FORMATS["onnx-int8"].options["session_tolerance"]


def test_pairs_follow_onnxruntimes_k_order(tiny_exported):
    """The crux of the proof: onnxruntime reduces a conv over K = (kh, kw, input channel), input channel
    fastest, and AVX2 adds K indices (2j, 2j+1) in one lane. On the first conv (3 input channels, K = 27)
    two big weights saturate when they are neighbouring channels of one tap, or the last channel of a tap
    and the first of the next (flagged; the emulated AVX2 sum is wrong); the same weights on neighbouring
    taps of one channel are never added in one lane (not flagged, exact). An (I, kh, kw) order would have
    it the other way round."""
    import onnx

    from edgetl.export.onnx_int8 import k_pairs, saturation_risks

    proto = onnx.load(tiny_exported / "model-int8.onnx")
    node, name, w = next((n, nm, w) for n, nm, w in gemm_layers(proto) if w.ndim == 4 and w.shape[1] == 3)
    cases = {((0, 0, 0, 0), (0, 1, 0, 0)): True,  # channels 0 and 1 of tap (0, 0)
             ((0, 2, 0, 0), (0, 0, 0, 1)): True,  # channel 2 of tap (0, 0), channel 0 of tap (0, 1)
             ((0, 0, 0, 0), (0, 0, 0, 1)): False}  # channel 0 of taps (0, 0) and (0, 1)
    for (i, j), flagged in cases.items():
        weights = w.copy()
        weights[0] = 0
        weights[i] = weights[j] = 127
        set_weight(proto, name, weights)
        assert (saturation_risks(proto) != []) is flagged, (i, j)
        k = k_pairs(node, weights).reshape(weights.shape[0], -1)[:1]
        a = np.full((1, k.shape[1]), 255, np.uint8)
        assert np.array_equal(avx2_gemm(a, k), a.astype(np.int64) @ k.T.astype(np.int64)) is not flagged


def test_bounded_pairs_repairs_a_saturating_layer(tiny_exported):
    """bounded_pairs brings an over-bound layer within the bound and keeps the weights s8; a file with
    bounds already met is left bit-identical in its outputs."""
    import onnx

    from edgetl.export.onnx_int8 import bounded_pairs, saturation_risks

    proto = onnx.load(tiny_exported / "model-int8.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    before = run_file(proto.SerializeToString(), "onnx-int8", x)
    stats = bounded_pairs(proto)
    assert stats["pairs_changed"] == 0 and stats["layers"] >= 30
    assert np.array_equal(run_file(proto.SerializeToString(), "onnx-int8", x), before)
    node, name, w = gemm_layers(proto)[5]
    big = np.where(w >= 0, 127, -127).astype(np.int8)
    set_weight(proto, name, big)
    assert saturation_risks(proto) == [node.output[0]]
    stats = bounded_pairs(proto)
    assert stats["pairs_changed"] > 0 and saturation_risks(proto) == []
    assert all(w.dtype == np.int8 for _, _, w in gemm_layers(proto))


def test_onnx_int8_with_saturating_weights_is_refused(tiny_exported):
    """An int8 ONNX file whose s8 weights could saturate fails its check from the file alone, before
    anything runs, whatever this CPU is."""
    import onnx

    from edgetl.export.parity import check_onnx_sessions

    proto = onnx.load(tiny_exported / "model-int8.onnx")
    _, name, w = gemm_layers(proto)[3]
    set_weight(proto, name, np.where(w >= 0, 100, -100).astype(np.int8))
    nothing = np.zeros((0, 32, 32, 3), np.float32)
    with pytest.raises(ArtifactCheckError, match=r"GEMM layer.* s8 weight pairs over \|w1\| \+ \|w2\| <= 128 .* saturate"):
        check_onnx_sessions(FORMATS["onnx-int8"], proto.SerializeToString(), nothing[:, 0, 0, :2], nothing)


def _dq_conv_graph(w: np.ndarray):
    """input -> QuantizeLinear -> DequantizeLinear -> depthwise Conv with float weights `w` ->
    QuantizeLinear -> DequantizeLinear: a layer kept in float between int8 ones."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = w.shape[0]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.linspace(-1, 1, c).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Conv", ["dq", "w", "b"], ["conv"], group=c, pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["conv", "s", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _session_out(proto, x, optimize: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize \
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_a_layer_kept_in_float_runs_in_float():
    """A float conv between int8 layers gives the same outputs in a default onnxruntime session as with
    every graph rewrite off: its weights (channel scales 1e-3 to 5: per-tensor int8 would round the
    small channels to zero) are not quantized on the way."""
    from edgetl.export.onnx_int8 import float_layers_kept_float

    rng = np.random.default_rng(0)
    c = 8
    w = (rng.standard_normal((c, 1, 3, 3)) * np.logspace(-3, np.log10(5), c)[:, None, None, None]).astype(np.float32)
    x = rng.uniform(-3, 3, (1, c, 6, 6)).astype(np.float32)
    proto = _dq_conv_graph(w)
    reference = _session_out(proto, x, optimize=False)
    assert float_layers_kept_float(proto) == 1
    assert float_layers_kept_float(proto) == 0  # its input is per-channel now: nothing left to do
    # at most one output step (0.05) apart, where float sums in another order round the other way
    assert np.abs(_session_out(proto, x, optimize=True) - reference).max() <= 0.05 + 1e-6
    np.testing.assert_array_equal(_session_out(proto, x, optimize=False), reference)

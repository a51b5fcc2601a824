"""The exporter's steps on the tiny run, called directly on one export context (no model reload per
test): lossless compaction of every converter output, the per-tensor rewrite and the size budget's
decisions, the int8 accuracy check and its registry tolerance, and stopping at the first failure."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from edgetl.core.errors import ArtifactCheckError
from edgetl.core.formats import EXPORT_FORMATS, FORMATS


@pytest.fixture(scope="module")
def ctx(tiny_exported):
    """The export context of the tiny run, as `factory.export_run` made it (calib 16, the run's seed)."""
    from edgetl.core.rundir import Run
    from edgetl.export.context import build_context

    run = Run(tiny_exported)
    return build_context(run, run.split_items("train"), run.split_items("val"), calib_n=16)


@pytest.fixture(scope="module")
def raw(ctx) -> dict[str, bytes]:
    """Every registry converter's own output (before compaction and metadata)."""
    from edgetl.export.convert import converted

    return {name: converted(ctx, FORMATS[name]) for name in EXPORT_FORMATS}


def run_file(blob: bytes, name: str, x: np.ndarray) -> np.ndarray:
    """Probabilities of a file in memory, through its registry row's runner."""
    fmt = FORMATS[name]
    return fmt.runner_class()(blob, fmt).outputs(x)


# ---------------------------------------------------------------------------------------------- compaction
def _outputs(blob: bytes, suffix: str, x: np.ndarray, onnx_level=None) -> tuple[np.ndarray, tuple]:
    """Raw output tensors (no dequantization) and the I/O signature, straight from the runtime."""
    if suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=blob)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        ys = []
        for k in range(len(x)):
            xi = x[k:k + 1]
            if i["dtype"] != np.float32:
                s, z = i["quantization"]
                xi = np.clip(np.round(xi / s + z), -128, 127).astype(i["dtype"])
            it.set_tensor(i["index"], xi)
            it.invoke()
            ys.append(it.get_tensor(o["index"]).copy())
        sig = (i["name"], o["name"], np.dtype(i["dtype"]).name, np.dtype(o["dtype"]).name,
               tuple(i["shape"]), tuple(o["shape"]), i["quantization"], o["quantization"])
        return np.concatenate(ys), sig
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if onnx_level is not None:
        so.graph_optimization_level = onnx_level
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    i, o = sess.get_inputs()[0], sess.get_outputs()[0]
    y = np.concatenate([sess.run(None, {i.name: x[k:k + 1]})[0] for k in range(len(x))])
    return y, (i.name, o.name, i.type, o.type, tuple(i.shape), tuple(o.shape))


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_compaction_is_lossless(ctx, raw, name):
    """Compacted + metadata against the converter's own output: same I/O names, types, shapes and
    quantization, bit-identical outputs (ONNX also without graph optimizations), metadata readable;
    int8 and TFLite files get smaller."""
    import onnxruntime as ort

    from edgetl.export.artifacts import compact, embed

    fmt = FORMATS[name]
    slim = compact(fmt, raw[name])
    final, meta = embed(ctx, fmt, slim)
    x = np.random.default_rng(3).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    levels = [None] if fmt.suffix == ".tflite" else [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, None]
    for level in levels:
        y_raw, io_raw = _outputs(raw[name], fmt.suffix, x, level)
        y_fin, io_fin = _outputs(final, fmt.suffix, x, level)
        assert io_fin == io_raw
        assert y_fin.dtype == y_raw.dtype and np.array_equal(y_fin, y_raw), (name, level)
    assert io_fin[0] == "input" and (fmt.suffix == ".tflite" or io_fin[1] == "probabilities")
    assert meta["format"] == name and meta["input"]["name"] == io_fin[0] and meta["output"]["name"] == io_fin[1]
    if fmt.precision == "int8" or fmt.suffix == ".tflite":
        assert len(slim) < len(raw[name]), (name, len(slim), len(raw[name]))
    else:
        assert len(slim) <= len(raw[name])


def _vector_offsets(buf: bytes):
    """(zero-point vector offsets by content, Buffer.data offsets) of a TFLite file, via the schema's reader."""
    from edgetl.core import flatbuffer

    m = flatbuffer.schema().Model.GetRootAs(buf, 0)
    sg = m.Subgraphs(0)
    zps: dict[bytes, set] = {}
    for i in range(sg.TensorsLength()):
        q = sg.Tensors(i).Quantization()
        if q is not None and q.ZeroPointLength():
            zps.setdefault(q.ZeroPointAsNumpy().tobytes(), set()).add(q._tab.Vector(q._tab.Offset(10)))
    datas = [m.Buffers(i)._tab.Vector(m.Buffers(i)._tab.Offset(4)) for i in range(m.BuffersLength())
             if m.Buffers(i).DataLength()]
    return zps, datas


def test_compacted_tflite_shares_vectors_and_aligns_buffers(ctx, tiny_exported):
    """Every distinct zero-point vector is written once (the TFLite converter's own output repeats the
    all-zero per-channel ones), constant data sits at 16-byte offsets (schema: force_align 16) in the
    written file too, and compacting twice changes nothing."""
    from edgetl.core.flatbuffer import compact_tflite
    from edgetl.export.convert import calibrated
    from edgetl.model.convert import quantize_calibrated

    converter = quantize_calibrated(calibrated(ctx), "int8")
    slim = compact_tflite(converter)
    zps_raw, _ = _vector_offsets(converter)
    zps, datas = _vector_offsets(slim)
    assert sum(len(v) for v in zps_raw.values()) > len(zps_raw)  # the converter writes duplicates
    assert set(zps) == set(zps_raw) and all(len(v) == 1 for v in zps.values())
    assert datas and all(off % 16 == 0 for off in datas)
    zps, datas = _vector_offsets((tiny_exported / FORMATS["tflite-int8"].filename).read_bytes())
    assert all(len(v) == 1 for v in zps.values()) and all(off % 16 == 0 for off in datas)
    assert compact_tflite(slim) == slim


def test_embed_twice_leaves_no_orphan_buffer(raw):
    from edgetl.core.artifact import embed_tflite, read_tflite_meta
    from edgetl.core.flatbuffer import compact_tflite

    once = embed_tflite(compact_tflite(raw["tflite-fp32"]), {"a": "x" * 500})
    twice = embed_tflite(once, {"a": "y" * 500})
    assert read_tflite_meta(twice) == {"a": "y" * 500}
    assert len(twice) == len(once)


def test_onnx_bias_scales_derived_only_when_exact(raw):
    """Bias scales equal to float32(input scale) * weight scales become a Mul of those initializers; one
    that differs by a single ulp stays stored."""
    import onnx
    from onnx import numpy_helper

    from edgetl.export.onnx_compact import compact_onnx

    proto = onnx.load_from_string(raw["onnx-int8"])
    compact_onnx(proto)
    muls = [n for n in proto.graph.node if n.op_type == "Mul"]
    assert muls and not {n.output[0] for n in muls} & {t.name for t in proto.graph.initializer}
    inits = {t.name: t for t in proto.graph.initializer}
    zero_zp = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and len(n.input) == 3
               and n.input[2] in inits and not np.any(numpy_helper.to_array(inits[n.input[2]]))]
    # all-zero zero points are dropped, except those of s8 weights (onnxruntime's exact session needs them)
    assert zero_zp and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) >= 2
                           for n in zero_zp)
    tampered = onnx.load_from_string(raw["onnx-int8"])
    target = muls[0].output[0]
    for t in tampered.graph.initializer:
        if t.name == target:
            a = numpy_helper.to_array(t).copy()
            a[0] = np.nextafter(a[0], np.float32(np.inf))
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    compact_onnx(tampered)
    assert target in {t.name for t in tampered.graph.initializer}
    assert target not in {n.output[0] for n in tampered.graph.node if n.op_type == "Mul"}
    assert len([n for n in tampered.graph.node if n.op_type == "Mul"]) == len(muls) - 1


def test_compaction_that_changes_outputs_is_refused(ctx, raw, monkeypatch):
    """The exporter's own guard: a 'compacted' file whose weights differ is an error, not a file."""
    from edgetl.core import flatbuffer
    from edgetl.export import artifacts

    real = artifacts.compact

    def corrupting(fmt, blob):
        m = flatbuffer.load_model(real(fmt, blob))
        big = max(m.buffers, key=lambda b: 0 if b.data is None else len(b.data))
        big.data = big.data.copy()
        big.data[: len(big.data) // 2] = 0
        return flatbuffer.pack_tflite(m)

    monkeypatch.setattr(artifacts, "compact", corrupting)
    with pytest.raises(ArtifactCheckError, match="compacted file does not behave exactly"):
        artifacts.compact_checked(ctx, FORMATS["tflite-fp32"], raw["tflite-fp32"])


# ---------------------------------------------------------------------------------------------- per-tensor rewrite
def _tflite_layers(buf: bytes):
    """(weight, bias, input) quantization of every conv/dense op, in order, from the file itself."""
    from edgetl.core import flatbuffer
    from edgetl.export.requantize import WEIGHT_OPS

    m, names = flatbuffer.load_model(buf), flatbuffer.op_names()
    sg, out = m.subgraphs[0], []
    for op in sg.operators:
        c = m.operatorCodes[op.opcodeIndex]
        if names[max(c.builtinCode, c.deprecatedBuiltinCode)] in WEIGHT_OPS:
            w, b, x = (sg.tensors[i] for i in (op.inputs[1], op.inputs[2], op.inputs[0]))
            out.append({"w": np.frombuffer(bytes(m.buffers[w.buffer].data), np.int8).reshape(w.shape),
                        "ws": np.asarray(w.quantization.scale, np.float32), "qd": w.quantization.quantizedDimension,
                        "b": np.frombuffer(bytes(m.buffers[b.buffer].data), np.int32),
                        "bs": np.asarray(b.quantization.scale, np.float32),
                        "xs": np.float32(x.quantization.scale[0])})
    return out


def _dequant(layer) -> np.ndarray:
    shape = [1] * layer["w"].ndim
    shape[layer["qd"]] = -1
    return layer["w"].astype(np.float64) * layer["ws"].reshape(shape).astype(np.float64)


def test_per_tensor_requantization_is_exact_to_half_a_step(raw):
    """requantize.per_tensor: the chosen layers get one weight scale (the largest channel's) and the bias
    scale the format demands (input scale x weight scale); every weight and bias moves by at most half a
    new step; the other layers are untouched; the file shrinks and still runs. rank() orders layers by
    their own measured output change per byte saved."""
    from edgetl.export import requantize as R

    model = raw["tflite-int8"]
    before = _tflite_layers(model)
    cands = R.candidates(model, max_error=10.0)
    assert len(cands) == sum(len(L["ws"]) > 1 for L in before) and all(c.saved == 8 * c.channels for c in cands)
    pick = sorted(cands, key=lambda c: -c.channels)[:3]
    out = R.per_tensor(model, [c.index for c in pick])
    after = _tflite_layers(out)
    per_channel = [i for i, L in enumerate(before) if len(L["ws"]) > 1]
    chosen = {per_channel[c.index] for c in pick}
    for i, (a, b) in enumerate(zip(before, after)):
        if i not in chosen:
            assert np.array_equal(a["w"], b["w"]) and np.array_equal(a["ws"], b["ws"])
            assert np.array_equal(a["b"], b["b"]) and np.array_equal(a["bs"], b["bs"])
            continue
        big = a["ws"].max()
        assert b["ws"].tolist() == [big] and b["bs"].tolist() == [np.float32(a["xs"] * big)]
        assert np.abs(_dequant(b) - _dequant(a)).max() <= big / 2 * (1 + 1e-6)
        old_bias = a["b"] * a["bs"].astype(np.float64)
        assert np.abs(b["b"] * float(b["bs"][0]) - old_bias).max() <= float(b["bs"][0]) / 2 * (1 + 1e-6)
    assert len(model) - len(out) >= sum(c.saved for c in pick) - 64
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    p0, p1 = run_file(model, "tflite-int8", x), run_file(out, "tflite-int8", x)
    assert p1.shape == p0.shape and np.allclose(p1.sum(1), 1, atol=0.02)
    with pytest.raises(ValueError, match="no such"):
        R.per_tensor(model, [len(cands) + 5])
    ranked = R.rank(model, pick, lambda mb, xx: run_file(mb, "tflite-int8", xx), x)
    assert sorted(c.index for c in ranked) == sorted(c.index for c in pick)
    for c in ranked:
        alone = run_file(R.per_tensor(model, [c.index]), "tflite-int8", x)
        assert np.isclose(c.sensitivity, np.abs(alone - p0).mean(), rtol=1e-5, atol=1e-9)
    keys = [c.sensitivity / c.saved for c in ranked]
    assert keys == sorted(keys)


# ---------------------------------------------------------------------------------------------- size budget
@pytest.fixture
def plain_int8(monkeypatch):
    """The accuracy control takes the plain int8 file whenever it passes --max-drop (budget tests look at
    the per-channel file the converter makes, not at the control's choice)."""
    from edgetl.export import control

    monkeypatch.setattr(control, "TARGET_AGREEMENT", 0.0)
    monkeypatch.setattr(control, "VAL_AGREEMENT", 0.0)
    monkeypatch.setattr(control, "NOISE_CUT", 0.0)


def test_size_budget_gives_the_fewest_layers_per_tensor_scales(ctx, monkeypatch, plain_int8):
    """A budget just below the per-channel file: the fewest layers get per-tensor scales; the file fits,
    passes the same parity check, and says so in its metadata and in the export's notes."""
    from edgetl.export import budget
    from edgetl.export.stage import _budget_note, make_artifact

    monkeypatch.setitem(budget.MAX_EXTRA_DROP, "ptq", 100.0)  # the tiny random model's top-1 is not the subject
    fmt = FORMATS["tflite-int8"]
    full = len(make_artifact(ctx, fmt, 100.0, 0, {})[0])
    fp32 = budget.fp32_bytes(ctx, fmt, {})
    pct = 100 * (full - 2000) / fp32
    blob, meta, par, b, _ = make_artifact(ctx, fmt, 100.0, pct, {})
    assert b["met"] and b["fp32_bytes"] == fp32 and b["per_channel_bytes"] == full
    assert len(blob) <= b["limit_bytes"] == int(fp32 * pct / 100) < full
    k = len(b["per_tensor_layers"])
    assert k >= 1 and par["n"] == b["per_channel_parity"]["n"] == len(ctx.val_y)
    assert meta["weights_quantization"]["per_tensor_layers"] == k
    before, after = _tflite_layers(make_artifact(ctx, fmt, 100.0, 0, {})[0]), _tflite_layers(blob)
    assert sum(len(L["ws"]) == 1 for L in after) - sum(len(L["ws"]) == 1 for L in before) == k
    assert f"{k} layer" in _budget_note(fmt.name, b)[0] and "per-tensor weight scales" in _budget_note(fmt.name, b)[0]
    # the smallest k: one layer fewer does not fit
    layers = budget.ranked_layers(ctx)
    fewer = budget.per_tensor(budget.tflite_int8_bytes(ctx, "int8"), [L.index for L in layers[:k - 1]])
    assert k == 1 or len(budget.embed(ctx, fmt, budget.compact(fmt, fewer))[0]) > b["limit_bytes"]


def test_size_budget_off_or_not_met_keeps_the_per_channel_file(ctx, monkeypatch, plain_int8):
    """--size-budget 0 keeps the converter's per-channel file untouched. A budget no layer choice
    reaches, a smaller file that loses accuracy, or a failing budget step: the per-channel file stays
    and the budget entry says why."""
    from edgetl.export import budget
    from edgetl.export.stage import make_artifact

    fmt = FORMATS["tflite-int8"]
    blob, meta, par, info, _ = make_artifact(ctx, fmt, 100.0, 0, {})
    assert info is None and "weights_quantization" not in meta
    fp32 = budget.fp32_bytes(ctx, fmt, {})  # made on the side: tflite-fp32 is not among the results
    assert fp32 > len(blob)

    def budget_info(percent):
        out = budget.fit_size_budget(ctx, fmt, blob, meta, par, percent, 100.0, {})
        assert out[0] == blob and out[1] == meta and out[2] == par
        return out[3]

    b = budget_info(1)
    assert b["met"] is False and "still above 1 %" in b["reason"] and b["fp32_bytes"] == fp32
    monkeypatch.setitem(budget.MAX_EXTRA_DROP, "ptq", -1000.0)  # any smaller file now loses too much
    b = budget_info(100 * (len(blob) - 2000) / fp32)
    assert b["met"] is False and "accuracy falls" in b["reason"] and "PTQ run" in b["reason"]

    def broken(model, layers):
        raise ValueError("simulated failure")

    monkeypatch.setattr(budget, "per_tensor", broken)  # a bug in the budget step: the checked file still ships
    blob2, _, _, b, _ = make_artifact(ctx, fmt, 100.0, 1.0, {})
    assert blob2 == blob and b["met"] is False
    assert "size-budget step failed (ValueError: simulated failure)" in b["reason"]


# ---------------------------------------------------------------------------------------------- int8 accuracy
def test_int8_drop_failure_names_the_numbers_and_the_registry_default(ctx, tiny_exported, monkeypatch):
    """An int8 file that loses more than --max-drop fails with both accuracies in the message; without
    --max-drop the registry row's tolerance is the limit. (A Keras reference that is always right, and a
    file that answers as told.)"""
    from edgetl.core.runtime import TFLiteRunner
    from edgetl.export.parity import parity

    fmt = FORMATS["tflite-int8"]
    blob = (tiny_exported / fmt.filename).read_bytes()
    y = ctx.val_y
    perfect = dataclasses.replace(ctx, keras_probs=np.eye(2, dtype=np.float32)[y])
    monkeypatch.setattr(TFLiteRunner, "outputs", lambda self, x: np.eye(2, dtype=np.float32)[y])
    res = parity(perfect, fmt, blob)
    assert res["ok"] and res["max_drop"] == fmt.tolerance and res["drop_points"] == 0.0
    monkeypatch.setattr(TFLiteRunner, "outputs", lambda self, x: np.eye(2, dtype=np.float32)[1 - y])
    with pytest.raises(ArtifactCheckError) as e:
        parity(perfect, fmt, blob, 0.0)
    assert str(e.value).startswith(f"tflite-int8: accuracy 0.0% vs Keras 100.0% on {len(y)} validation images")
    assert "drop 100.0 points > --max-drop 0;" in str(e.value)
    with pytest.raises(ArtifactCheckError, match=f"--max-drop {fmt.tolerance:g};"):
        parity(perfect, fmt, blob)


# ---------------------------------------------------------------------------------------------- accuracy control
def test_the_control_s_plain_rung_is_the_post_training_file(ctx):
    """One calibration, quantized with no op in float and its biases corrected, gives the file
    model.convert.int8_tflite makes in one call (the file `train --qat` scores as post-training int8): same
    size, bit-identical outputs, and the converter's own graph."""
    from edgetl.core import flatbuffer
    from edgetl.export.convert import calibrated, tflite_int8_bytes
    from edgetl.model.convert import int8_tflite, quantize_calibrated

    x, ctx.float_ops = ctx.val_x, ()
    for io, name in (("int8", "tflite-int8"), ("float32", "tflite-fp32")):
        a = int8_tflite(ctx.model, ctx.size, ctx.calibration_inputs(), io)
        b = tflite_int8_bytes(ctx, io)
        assert len(a) == len(b) and np.array_equal(run_file(a, name, x), run_file(b, name, x))
        assert flatbuffer.op_list(quantize_calibrated(calibrated(ctx), io)) == flatbuffer.op_list(b)


def test_bias_correction_takes_the_mean_shift_out_of_each_int8_conv(ctx):
    """Corrected one after another, each int8 conv's per-channel mean error against the float file (on the
    calibration images it was measured on) is down to the bias's rounding: the last linear conv's is a
    small part of the plain file's. Ops kept in float keep their float biases."""
    from edgetl.core import flatbuffer
    from edgetl.export.convert import bias_shifts, calibrated
    from edgetl.model import bias
    from edgetl.model.convert import quantize_calibrated

    cal, x = calibrated(ctx), ctx.calibration_inputs()
    plain = quantize_calibrated(cal, "float32")
    shifts = bias_shifts(ctx)
    fixed = bias.corrected(plain, shifts)
    convs = bias._convs(flatbuffer.load_model(plain))
    assert len(shifts) == len(convs) > 0

    def mean_error(tfl: bytes, name: str) -> float:
        m, f = flatbuffer.load_model(tfl), flatbuffer.load_model(cal)
        index = {t.name.decode(): j for t, j in ((m.subgraphs[0].tensors[op.outputs[0]], j)
                                                 for j, op in enumerate(m.subgraphs[0].operators))}
        f_index = {f.subgraphs[0].tensors[op.outputs[0]].name.decode(): j
                   for j, op in enumerate(f.subgraphs[0].operators)}
        got, _ = bias._output(bias._prefix(m, index[name]), x)
        ref, _ = bias._output(bias._prefix(f, f_index[name]), x)
        return float(np.abs((got - ref).mean(0)).mean())

    last = [n for k, n in flatbuffer.op_list(plain) if k == "CONV_2D" and "project" in n][-1]
    assert mean_error(fixed, last) < 0.25 * mean_error(plain, last)

    def biases(tfl: bytes) -> dict:
        m = flatbuffer.load_model(tfl)
        sg = m.subgraphs[0]
        def values(t) -> bytes:
            return bytes(bytearray(m.buffers[t.buffer].data))

        return {sg.tensors[op.outputs[0]].name.decode(): values(sg.tensors[op.inputs[2]])
                for op in sg.operators if len(op.inputs) > 2 and op.inputs[2] >= 0}

    with_float = quantize_calibrated(cal, "float32", [last])
    before, after = biases(with_float), biases(bias.corrected(with_float, shifts))
    assert after[last] == before[last]
    assert sum(after[n] != before[n] for n in before) >= len(before) // 2


def test_ops_kept_in_float_are_float_in_the_file(ctx):
    """The ranked ops kept in float run in float (float32 weights, a DEQUANTIZE before them); every other
    conv keeps int8 weights."""
    from edgetl.core import flatbuffer
    from edgetl.export import control
    from edgetl.export.convert import calibrated
    from edgetl.model.convert import quantize_calibrated

    body = [n for k, n in flatbuffer.op_list(calibrated(ctx)) if k in ("CONV_2D", "DEPTHWISE_CONV_2D")][:2]
    tfl = quantize_calibrated(calibrated(ctx), "int8", body)
    m = flatbuffer.load_model(tfl)
    sg, kinds = m.subgraphs[0], flatbuffer.op_names()
    types = flatbuffer.schema().TensorType
    weight_types = {}
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        if kinds[max(code.builtinCode, code.deprecatedBuiltinCode)] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight_types[sg.tensors[op.outputs[0]].name.decode()] = sg.tensors[op.inputs[1]].type
    assert [weight_types[n] for n in body] == [types.FLOAT32] * 2
    assert sum(t == types.INT8 for t in weight_types.values()) == len(weight_types) - 2
    assert "DEQUANTIZE" in [k for k, _ in flatbuffer.op_list(tfl)]
    assert control.short_name(body[0]) == body[0].split(";")[0].split("/")[1]


def _rung(ops, ok=True, agreement=1.0, estimate=1.0, cut=0.0):
    from edgetl.export.control import Rung

    return Rung(tuple(ops), list(ops), parity={"ok": ok, "agreement": agreement, "accuracy": 0.9,
                                                "drop_points": 0.0}, estimate=estimate, cut=cut)


def test_the_control_ships_the_first_rung_that_meets_the_target_else_the_least_noise():
    """The first rung that passes --max-drop, agrees on val and is estimated to agree on unseen images (or
    removes enough of the head's int8 noise) ships; without one, the passing rung that removes the most
    noise (ops in float only for a real cut) and is fast enough; none when no rung passes --max-drop."""
    from edgetl.export.control import MAX_LATENCY, MIN_CUT, NOISE_CUT, TARGET_AGREEMENT, candidates, choose, min_cut

    low = TARGET_AGREEMENT - 0.01
    tried = [_rung([], estimate=low), _rung(["a"], estimate=low, cut=NOISE_CUT / 2),
             _rung(["a", "b"], estimate=TARGET_AGREEMENT)]
    assert choose(tried) == (tried[2], "target met")
    tried[2] = _rung(["a", "b"], estimate=low, cut=NOISE_CUT)
    assert choose(tried) == (tried[2], "target met")
    tried[2] = _rung(["a", "b"], agreement=0.5, estimate=low, cut=NOISE_CUT)  # val disagrees
    assert choose(tried) == (tried[1], "target missed")
    tried = [_rung([], estimate=low), _rung(["a"], estimate=low, cut=MIN_CUT / 2)]  # too small a cut
    assert choose(tried) == (tried[0], "target missed")
    tried = [_rung([], estimate=low), _rung(["a"], agreement=0.96, estimate=low, cut=NOISE_CUT / 2)]
    assert choose(tried) == (tried[0], "target missed")  # less val agreement than the plain file: not shipped
    four = ["a", "b", "c", "d"]  # a cut spread thin over many ops does not pay for them
    tried = [_rung([], estimate=low), _rung(four[:2], estimate=low, cut=min_cut(2)), _rung(four, estimate=low,
                                                                                        cut=min_cut(4) - 0.01)]
    assert min_cut(4) > min_cut(2) >= MIN_CUT and choose(tried) == (tried[1], "target missed")
    tried = [_rung([], ok=False, estimate=low), _rung(["a"], estimate=low, cut=0.01), _rung(["a", "b"], ok=False)]
    assert choose(tried) == (tried[1], "target missed")
    assert choose([_rung([], ok=False), _rung(["a"], ok=False)]) == (None, "no rung passes --max-drop")
    # a rung slower than MAX_LATENCY x the plain file is passed over for the next choice
    tried = [_rung([], estimate=low), _rung(["a"], estimate=low, cut=NOISE_CUT / 2),
             _rung(["a", "b"], estimate=TARGET_AGREEMENT)]
    slow = {("a", "b"): MAX_LATENCY + 0.2, ("a",): MAX_LATENCY - 0.05}
    assert choose(tried, lambda r: slow[r.float_ops]) == (tried[1], "target missed")
    assert tried[2].latency == MAX_LATENCY + 0.2
    slow[("a",)] = MAX_LATENCY + 0.1
    tried = [_rung([], estimate=low), _rung(["a"], estimate=low, cut=NOISE_CUT / 2),
             _rung(["a", "b"], estimate=TARGET_AGREEMENT)]
    assert choose(tried, lambda r: slow[r.float_ops]) == (tried[0], "target missed")
    tried = [_rung([], ok=False), _rung(["a"], estimate=low, cut=NOISE_CUT / 2),
             _rung(["a", "b"], estimate=TARGET_AGREEMENT)]  # every passing rung slow: still a file
    assert choose(tried, lambda r: slow[r.float_ops]) == (tried[1], "target missed")
    assert candidates([("a", 0.5), ("b", 0.2), ("c", 0.0)]) == ["a", "b"]


def test_the_ladder_keeps_an_op_only_if_it_lowered_the_noise():
    """climb: an op whose rung has more head noise than the rung it was added to is dropped again, so
    ops measured one at a time cannot pile up into a noisier file; a failed file keeps the base too."""
    from edgetl.export.control import Rung, climb

    noise = {(): 1.0, ("a",): 0.6, ("a", "b"): 0.7, ("a", "c"): 0.5, ("a", "c", "d"): None}
    rung = {ops: Rung(ops, list(ops), noise=n, error=None if n is not None else "conversion failed")
            for ops, n in noise.items()}
    assert climb(rung[()], rung[("a",)]).float_ops == ("a",)
    assert climb(rung[("a",)], rung[("a", "b")]).float_ops == ("a",)
    assert climb(rung[("a",)], rung[("a", "c")]).float_ops == ("a", "c")
    assert climb(rung[("a", "c")], rung[("a", "c", "d")]).float_ops == ("a", "c")


def test_export_climbs_the_ladder_and_records_it(ctx, tmp_path, monkeypatch):
    """A target the plain file cannot meet: export ranks the ops, keeps the most sensitive in float, writes
    the file with exit 0 and records every rung, the ranking and the float ops (manifest and file)."""
    from edgetl.core.artifact import read_meta
    from edgetl.core.rundir import Run
    from edgetl.export import control
    from edgetl.export.stage import export_run

    monkeypatch.setattr(control, "TARGET_AGREEMENT", 1.01)  # unreachable: every rung is tried
    monkeypatch.setattr(control, "NOISE_CUT", 1.01)
    monkeypatch.setattr(control, "MAX_FLOAT_OPS", 3)
    shutil.copytree(ctx.run.path, tmp_path / "run", ignore=shutil.ignore_patterns("*.tflite", "*.onnx",
                                                                                   "manifest.json"))
    export_run(tmp_path / "run", formats="tflite-int8", calib=16, max_drop=100.0, size_budget=0)
    entry = Run(tmp_path / "run").manifest["artifacts"]["tflite-int8"]
    c = entry["int8_control"]
    assert entry["status"] == "ok" and c["result"] == "target missed"
    assert 1 <= len(c["rungs"]) <= 4 and c["rungs"][0]["float_ops"] == []
    assert len(c["ranking"]) == 3 and c["ranking"][0]["share"] >= c["ranking"][-1]["share"]
    chosen = next(r for r in c["rungs"] if r["float_ops"] == c["float_ops"])
    assert chosen["ok"] and 0.0 <= chosen["estimated_agreement"] <= 1.0
    assert c["bias_correction"]["convs"] > 0 and c["bias_correction"]["images"] == 16
    meta = read_meta(tmp_path / "run" / "model-int8.tflite")
    assert meta.get("float_ops", []) == c["float_ops"]


def test_export_fails_only_when_no_rung_passes_and_names_what_would_help(ctx, tmp_path, monkeypatch):
    """Every rung loses more than --max-drop: exit 3 with one line naming --qat, more data and --max-drop;
    no int8 file is written."""
    from edgetl.export import control, parity
    from edgetl.export.stage import export_run

    monkeypatch.setattr(control, "MAX_FLOAT_OPS", 2)
    real = parity.parity

    def losing(c, fmt, model, max_drop=None, check=True):
        res = real(c, fmt, model, 100.0, check)
        res.update(ok=False, drop_points=50.0, max_drop=max_drop)
        return res

    monkeypatch.setattr("edgetl.export.stage.parity", losing)
    shutil.copytree(ctx.run.path, tmp_path / "run", ignore=shutil.ignore_patterns("*.tflite", "*.onnx",
                                                                                   "manifest.json"))
    with pytest.raises(ArtifactCheckError) as e:
        export_run(tmp_path / "run", formats="tflite-int8", calib=16, max_drop=1.0, size_budget=0)
    msg = str(e.value)
    assert "\n" not in msg and "--qat" in msg and "more training images" in msg and "--max-drop" in msg
    assert not (tmp_path / "run" / "model-int8.tflite").exists()


# ---------------------------------------------------------------------------------------------- failures
def test_first_failure_stops_the_export_and_is_recorded(ctx, tmp_path, monkeypatch):
    """Without --keep-going the first failed format ends the export: its reason is in the manifest, its
    stale file is gone, and the formats after it are not attempted."""
    from edgetl.core.console import progress
    from edgetl.core.rundir import Run
    from edgetl.export.stage import _export_all

    shutil.copytree(ctx.run.path, tmp_path / "run", ignore=shutil.ignore_patterns("*.tflite", "*.onnx",
                                                                                   "manifest.json"))
    run = Run(tmp_path / "run")
    (run.path / "model-fp32.tflite").write_bytes(b"stale")
    bad = dataclasses.replace(FORMATS["tflite-fp32"], tolerance=-1.0)
    monkeypatch.setitem(FORMATS, bad.name, bad)
    with pytest.raises(ArtifactCheckError, match=r"tflite-fp32: differs .*\(file not written\)"):
        _export_all(dataclasses.replace(ctx, run=run), [bad, FORMATS["tflite-fp16"]], progress(None), None, 0,
                    keep_going=False)
    assert not list(run.path.glob("*.tflite"))
    m = run.manifest["artifacts"]
    assert list(m) == ["tflite-fp32"] and m["tflite-fp32"]["status"] == "failed"


def test_onnx_keeps_the_fast_encoding_unless_exact_weights_clearly_agree_better(monkeypatch):
    """ONNX int8 tries s8 bounded-pair weights first; when their ladder misses the target, exact u8 weights
    ship only with an estimated agreement ENCODING_MARGIN higher (u8 runs without VNNI kernels), or when
    they meet the target; a val split's one image does not decide it."""
    from types import SimpleNamespace

    from edgetl.core.formats import FORMATS
    from edgetl.export import stage

    est: dict = {}

    def ladder(ctx, fmt, max_drop):
        e = est[ctx.onnx_weights]
        record = {"result": "target met" if e >= 0.99 else "target missed", "float_ops": [],
                  "estimated_agreement": e, "rungs": [{"float_ops": [], "estimated_agreement": e}]}
        return b"", {}, {"agreement": 1.0 if ctx.onnx_weights == "u8" else 0.9}, record

    monkeypatch.setattr(stage, "_ladder", ladder)
    ctx = SimpleNamespace(onnx_weights=None, float_ops=())
    onnx = FORMATS["onnx-int8"]
    est.update({"s8-pairs": 0.980, "u8": 0.980 + stage.ENCODING_MARGIN / 2})
    assert stage._controlled(ctx, onnx, None)[3]["onnx_weights"] == "s8-pairs" == ctx.onnx_weights
    est["u8"] = 0.980 + 2 * stage.ENCODING_MARGIN
    assert stage._controlled(ctx, onnx, None)[3]["onnx_weights"] == "u8" == ctx.onnx_weights
    est["s8-pairs"] = 0.995  # met with the fast encoding: u8 is not tried
    out = stage._controlled(ctx, onnx, None)[3]
    assert out["onnx_weights"] == "s8-pairs" and "onnx_weights_tried" not in out


def test_export_says_why_an_onnx_file_ships_with_u8_weights():
    """A file with exact u8 weights (no VNNI kernels in onnxruntime: slower on VNNI CPUs) is named as such in
    export's note, with the estimate of the s8 file it beat; a file with the fast encoding is not."""
    from edgetl.export.stage import _control_note

    base = {"estimated_agreement": 0.984, "target": {"estimated_agreement": 0.99, "max_latency_ratio": 1.1},
            "rungs": [], "result": "target missed"}
    u8 = {**base, "float_ops": ["a", "b"], "onnx_weights": "u8",
          "onnx_weights_estimates": {"s8-pairs": 0.971, "u8": 0.984}}
    (line,) = _control_note("onnx-int8", u8)
    assert "2 ops kept in float" in line and "u8 weights" in line and "(97.1% with s8" in line
    assert "no VNNI kernel" in line
    (line,) = _control_note("onnx-int8", {**u8, "float_ops": [], "result": "target met"})
    assert line.startswith("onnx-int8: u8 weights, for their higher estimated agreement (97.1%")
    assert "u8" not in _control_note("onnx-int8", {**base, "float_ops": ["a"], "onnx_weights": "s8-pairs"})[0]
    assert _control_note("onnx-int8", {**base, "float_ops": [], "result": "target met"}) == []

"""`edgetl export`: every registry format round-trips on a tiny run, metadata reads back, parity failures
leave no file, bad input gets one line before any work, and the hymenoptera int8 files stay accurate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_image_folder
from edgetl.cli import app
from edgetl.formats import EXPORT_FORMATS, FORMATS, INT8_EXPORTS

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny trained run dir (MobileNetV2 alpha 0.35, 32 px, random base + trained head). Read-only."""
    from helpers.tinyrun import make_tiny_run

    root = tmp_path_factory.mktemp("export_tiny")
    data = make_image_folder(root / "data", per_class=8, size=40)
    return make_tiny_run(root / "run", data, size=32)


# format name -> (converter output, compacted bytes) recorded while `tiny_exported` runs
RAW_AND_COMPACT: dict[str, tuple[bytes, bytes]] = {}


@pytest.fixture(scope="session")
def tiny_exported(tiny_run, tmp_path_factory) -> tuple[Path, object]:
    """The tiny run exported once to every registry format (max-drop relaxed: the tiny model is not the
    subject of the int8 accuracy check; the hymenoptera test is). The converters' raw outputs and their
    compacted versions are recorded in RAW_AND_COMPACT on the way (fixture `compacted`)."""
    import edgetl.export as ex

    run = tmp_path_factory.mktemp("export_all") / "run"
    shutil.copytree(tiny_run, run)
    real = ex.compact

    def recording(fmt, raw):
        slim = real(fmt, raw)
        RAW_AND_COMPACT[fmt.name] = (raw, slim)
        return slim

    ex.compact = recording
    try:
        res = runner.invoke(app, ["export", str(run), "--int8", "--calib", "16", "--max-drop", "100"])
    finally:
        ex.compact = real
    return run, res


@pytest.fixture(scope="session")
def compacted(tiny_exported) -> dict[str, tuple[bytes, bytes]]:
    assert tiny_exported[1].exit_code == 0, tiny_exported[1].output
    assert set(RAW_AND_COMPACT) == set(EXPORT_FORMATS)
    return RAW_AND_COMPACT


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("*.tflite", "*.onnx", "manifest.json"))
    return dst


def _one_line_error(res, *needles):
    assert res.exit_code != 0
    out = res.output
    assert "Traceback" not in out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), out  # the error comes first: before any work
    assert sum("error:" in ln for ln in lines) == 1, out
    for n in needles:
        assert n in out.replace("\n", " "), out


# ---------------------------------------------------------------------------------------------- round trip
def test_export_all_succeeds(tiny_exported):
    run, res = tiny_exported
    assert res.exit_code == 0, res.output
    assert f"edgetl bench {run}" in res.output.replace("\n", "")
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == set(EXPORT_FORMATS)


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_round_trip_format(tiny_exported, name):
    """Each registry format: file exists, manifest size/sha256 match, metadata reads back through the
    deployment runtime, the file runs and agrees with the Keras model."""
    from edgetl.artifact import read_meta
    from edgetl.rundir import Run, sha256_file

    run, res = tiny_exported
    assert res.exit_code == 0, res.output
    fmt = FORMATS[name]
    path = run / fmt.filename
    assert path.is_file()
    entry = json.loads((run / "manifest.json").read_text())["artifacts"][name]
    assert entry["status"] == "ok"
    assert entry["bytes"] == path.stat().st_size and entry["sha256"] == sha256_file(path)
    meta = read_meta(path)
    r = Run(run)
    assert meta["format"] == name
    assert meta["classes"] == r.classes
    assert meta["preprocessing"] == r.preprocessing
    assert meta["input"]["shape"][1:] == [32, 32, 3] and meta["input"]["layout"] == "NHWC"
    assert meta["output"]["shape"] == [1, len(r.classes)] and meta["output"]["kind"] == "probabilities"
    assert isinstance(meta["macs"], int) and meta["macs"] > 100_000
    assert meta["source"]["image_size"] == 32 and meta["source"]["qat"] is False
    par = entry["parity"]
    assert par["n"] == len(r.split_items("val"))
    if fmt.precision == "int8":
        if fmt.suffix == ".tflite":  # full integer I/O with its quantization parameters recorded
            assert meta["input"]["dtype"] in ("int8", "uint8")
            q = meta["quantization"]
            assert q["input"]["scale"] > 0 and q["output"]["dtype"] == meta["output"]["dtype"]
        # the tiny random-base model sits near its decision boundary: check the probabilities, not top-1
        assert par["mean_abs_diff"] <= 0.2, par
        assert par["accuracy"] >= 0.0 and par["drop_points"] <= par["max_drop"]
    else:
        assert meta["quantization"] is None and meta["input"]["dtype"] == "float32"
        assert par["max_abs_diff"] <= par["tolerance"] and par["agreement"] == 1.0


def test_int8_files_are_small(tiny_exported):
    run, _ = tiny_exported
    m = json.loads((run / "manifest.json").read_text())["artifacts"]
    assert m["tflite-int8"]["bytes"] < 0.5 * m["tflite-fp32"]["bytes"]
    assert m["onnx-int8"]["bytes"] < 0.5 * m["onnx-fp32"]["bytes"]


def test_artifacts_load_without_tensorflow(tiny_exported):
    """A subprocess loads every file with ai_edge_litert / onnxruntime and reads its metadata; TensorFlow
    must never be imported there."""
    run, res = tiny_exported
    assert res.exit_code == 0
    code = r"""
import sys, json
import numpy as np
from ai_edge_litert.interpreter import Interpreter
import onnxruntime as ort
from edgetl.artifact import read_meta
out = {}
for p in sys.argv[1:]:
    meta = read_meta(p)
    shape = [1] + meta["input"]["shape"][1:]
    x = np.zeros(shape, dtype=meta["input"]["dtype"])
    if p.endswith(".tflite"):
        it = Interpreter(model_path=p); it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x); it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
    else:
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        y = s.run(None, {s.get_inputs()[0].name: x})[0]
    out[p] = [meta["format"], list(y.shape)]
assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules), "tensorflow imported"
assert "tf_keras" not in sys.modules
print(json.dumps(out))
"""
    files = [str(run / FORMATS[n].filename) for n in EXPORT_FORMATS]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    python = os.environ.get("EDGETL_LIGHT_PYTHON") or sys.executable  # `make test`: the install without TF
    r = subprocess.run([python, "-c", code, *files], capture_output=True, text=True, timeout=120,
                       env=env, cwd=str(REPO))
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(v[0] for v in got.values()) == sorted(EXPORT_FORMATS)
    assert all(v[1] == [1, 2] for v in got.values())


def test_format_subset_keeps_other_entries(tiny_exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_exported[0], run)
    before = json.loads((run / "manifest.json").read_text())["artifacts"]
    res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32"])
    assert res.exit_code == 0, res.output
    after = json.loads((run / "manifest.json").read_text())["artifacts"]
    assert set(after) == set(before)
    assert after["onnx-int8"] == before["onnx-int8"]


# ---------------------------------------------------------------------------------------------- compaction
def _outputs(blob: bytes, suffix: str, x: np.ndarray, onnx_level=None) -> tuple[np.ndarray, tuple]:
    """Raw output tensors (no dequantization) and the I/O signature, through the deployment runtime."""
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
def test_compaction_is_lossless(tiny_exported, compacted, name):
    """The written file (compacted + metadata) against the converter's own output: same I/O names, types,
    shapes and quantization, bit-identical outputs (ONNX also without graph optimizations), metadata
    readable; int8 and TFLite files get smaller."""
    import onnxruntime as ort

    from edgetl.artifact import read_meta

    run, _ = tiny_exported
    fmt = FORMATS[name]
    raw, slim = compacted[name]
    final = (run / fmt.filename).read_bytes()
    x = np.random.default_rng(3).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    levels = [None] if fmt.suffix == ".tflite" else [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, None]
    for level in levels:
        y_raw, io_raw = _outputs(raw, fmt.suffix, x, level)
        y_fin, io_fin = _outputs(final, fmt.suffix, x, level)
        assert io_fin == io_raw
        assert y_fin.dtype == y_raw.dtype and np.array_equal(y_fin, y_raw), (name, level)
    assert io_fin[0] == "input" and (fmt.suffix == ".tflite" or io_fin[1] == "probabilities")
    meta = read_meta(run / fmt.filename)
    assert meta["format"] == name and meta["input"]["name"] == io_fin[0] and meta["output"]["name"] == io_fin[1]
    if fmt.precision == "int8" or fmt.suffix == ".tflite":
        assert len(slim) < len(raw), (name, len(slim), len(raw))
    else:
        assert len(slim) <= len(raw)


def _vector_offsets(buf: bytes):
    """(zero-point vector offsets by content, Buffer.data offsets) of a TFLite file, via the schema's reader."""
    from ai_edge_litert import schema_py_generated as S

    m = S.Model.GetRootAs(buf, 0)
    sg = m.Subgraphs(0)
    zps: dict[int, set] = {}
    for i in range(sg.TensorsLength()):
        q = sg.Tensors(i).Quantization()
        if q is not None and q.ZeroPointLength():
            zps.setdefault(q.ZeroPointAsNumpy().tobytes(), set()).add(q._tab.Vector(q._tab.Offset(10)))
    datas = [m.Buffers(i)._tab.Vector(m.Buffers(i)._tab.Offset(4)) for i in range(m.BuffersLength())
             if m.Buffers(i).DataLength()]
    return zps, datas


def test_compacted_tflite_shares_vectors_and_aligns_buffers(tiny_exported, compacted):
    """Every distinct zero-point vector is written once (the raw converter output repeats the all-zero
    per-channel ones),
    constant data sits at 16-byte offsets (schema: force_align 16), and compacting twice changes nothing."""
    from edgetl.compact import compact_tflite

    raw, slim = compacted["tflite-int8"]
    zps_raw, _ = _vector_offsets(raw)
    zps, datas = _vector_offsets((tiny_exported[0] / FORMATS["tflite-int8"].filename).read_bytes())
    assert sum(len(v) for v in zps_raw.values()) > len(zps_raw)  # the converter writes duplicates
    assert set(zps) == set(zps_raw) and all(len(v) == 1 for v in zps.values())
    assert datas and all(off % 16 == 0 for off in datas)
    assert compact_tflite(slim) == slim


def test_embed_twice_leaves_no_orphan_buffer(compacted):
    from edgetl.artifact import embed_tflite, read_tflite_meta

    _, slim = compacted["tflite-fp32"]
    once = embed_tflite(slim, {"a": "x" * 500})
    twice = embed_tflite(once, {"a": "y" * 500})
    assert read_tflite_meta(twice) == {"a": "y" * 500}
    assert len(twice) == len(once)


def test_onnx_bias_scales_derived_only_when_exact(compacted):
    """Bias scales equal to float32(input scale) * weight scales become a Mul of those initializers; one
    that differs by a single ulp stays stored."""
    import onnx
    from onnx import numpy_helper

    from edgetl.compact import compact_onnx

    raw, _ = compacted["onnx-int8"]
    proto = onnx.load_from_string(raw)
    compact_onnx(proto)
    muls = [n for n in proto.graph.node if n.op_type == "Mul"]
    assert muls and not {n.output[0] for n in muls} & {t.name for t in proto.graph.initializer}
    assert not any(n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[2] in
                   {t.name for t in proto.graph.initializer if not np.any(numpy_helper.to_array(t))}
                   for n in proto.graph.node)
    tampered = onnx.load_from_string(raw)
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


def test_compaction_that_changes_outputs_is_refused(tiny_run, tmp_path, monkeypatch):
    """The exporter's own guard: a 'compacted' file whose weights differ fails the export, no file."""
    import edgetl.export as ex
    from ai_edge_litert import schema_py_generated as S

    from edgetl.compact import pack_tflite

    run = _copy(tiny_run, tmp_path)
    real = ex.compact

    def corrupting(fmt, raw):
        m = S.ModelT.InitFromPackedBuf(bytearray(real(fmt, raw)), 0)
        big = max(m.buffers, key=lambda b: 0 if b.data is None else len(b.data))
        big.data = big.data.copy()
        big.data[: len(big.data) // 2] = 0
        return pack_tflite(m)

    monkeypatch.setattr(ex, "compact", corrupting)
    res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32"])
    assert res.exit_code == 3, res.output
    assert "compacted" in res.output.replace("\n", " ") and "Traceback" not in res.output
    assert not (run / "model-fp32.tflite").exists()


# ---------------------------------------------------------------------------------------------- size budget
def _tflite_layers(buf: bytes):
    """(weight, bias, input) quantization of every conv/dense op, in order, from the file itself."""
    from ai_edge_litert import schema_py_generated as S

    import edgetl.budget as B

    m = S.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    sg, out = m.subgraphs[0], []
    for op in sg.operators:
        c = m.operatorCodes[op.opcodeIndex]
        if names[max(c.builtinCode, c.deprecatedBuiltinCode)] in B.WEIGHT_OPS:
            w, b, x = (sg.tensors[i] for i in (op.inputs[1], op.inputs[2], op.inputs[0]))
            wq = np.frombuffer(bytes(m.buffers[w.buffer].data), np.int8).reshape(w.shape)
            bq = np.frombuffer(bytes(m.buffers[b.buffer].data), np.int32)
            out.append({"w": wq, "ws": np.asarray(w.quantization.scale, np.float32), "qd": w.quantization.quantizedDimension,
                        "b": bq, "bs": np.asarray(b.quantization.scale, np.float32),
                        "xs": np.float32(x.quantization.scale[0])})
    return out


def _dequant(layer) -> np.ndarray:
    shape = [1] * layer["w"].ndim
    shape[layer["qd"]] = -1
    return layer["w"].astype(np.float64) * layer["ws"].reshape(shape).astype(np.float64)


def test_per_tensor_requantization_is_exact_to_half_a_step(compacted):
    """budget.per_tensor: the chosen layers get one weight scale (the largest channel's) and the bias
    scale the format demands (input scale x weight scale); every weight and bias moves by at most half a
    new step; the other layers are untouched; the file shrinks and still runs."""
    import edgetl.budget as B
    from edgetl.export import run_tflite

    raw = compacted["tflite-int8"][0]
    before = _tflite_layers(raw)
    cands = B.candidates(raw, max_error=10.0)
    assert len(cands) == sum(len(L["ws"]) > 1 for L in before) and all(c.saved == 8 * c.channels for c in cands)
    pick = sorted(cands, key=lambda c: -c.channels)[:3]
    out = B.per_tensor(raw, [c.index for c in pick])
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
    assert len(raw) - len(out) >= sum(c.saved for c in pick) - 64
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    p0, p1 = run_tflite(raw, x)[0], run_tflite(out, x)[0]
    assert p1.shape == p0.shape and np.allclose(p1.sum(1), 1, atol=0.02)
    with pytest.raises(ValueError, match="no such"):
        B.per_tensor(raw, [len(cands) + 5])
    # rank(): each layer's own measured output change, per byte saved, cheapest first
    ranked = B.rank(raw, pick, lambda mb, xx: run_tflite(mb, xx)[0], x)
    assert sorted(c.index for c in ranked) == sorted(c.index for c in pick)
    for c in ranked:
        alone = run_tflite(B.per_tensor(raw, [c.index]), x)[0]
        assert np.isclose(c.sensitivity, np.abs(alone - p0).mean(), rtol=1e-5, atol=1e-9)
    keys = [c.sensitivity / c.saved for c in ranked]
    assert keys == sorted(keys)


def test_smallest_fit_bisects():
    """The smallest k whose build fits, found with few builds; a hint that fits or not; nothing fits."""
    from edgetl.budget import smallest_fit

    sizes = [0, 100, 90, 80, 70, 60, 50, 40, 30, 20, 10]  # size of build(k), falling with k
    built = []

    def build(k):
        built.append(k)
        return b"x" * sizes[k]

    for limit, want in ((65, 5), (100, 1), (10, 10), (5, None)):
        for hint in (None, want, 2, 9):
            built.clear()
            k, res = smallest_fit(10, build, len, limit, hint=hint)
            assert k == want, (limit, hint)
            assert res == (None if want is None else b"x" * sizes[want])
            assert len(set(built)) <= 6, (limit, hint, built)
    built.clear()
    assert smallest_fit(10, build, len, 65, hint=5)[0] == 5 and sorted(set(built)) == [4, 5]
    assert smallest_fit(0, build, len, 65) == (None, None)


def _budget_export(run: Path, *args, formats: str = "tflite-fp32,tflite-int8") -> tuple[object, dict]:
    res = runner.invoke(app, ["export", str(run), "--format", formats, "--calib", "16", "--max-drop", "100", *args])
    return res, json.loads((run / "manifest.json").read_text())["artifacts"]


def test_size_budget(tiny_run, tmp_path, monkeypatch):
    """--size-budget 0 keeps the converter's per-channel file; a budget just below it makes the exporter
    switch the fewest layers to per-tensor scales: the file fits, says so in its metadata and the manifest,
    and passes the same parity check."""
    import edgetl.budget as B
    from edgetl.artifact import read_meta

    run = _copy(tiny_run, tmp_path)
    res, m = _budget_export(run, "--size-budget", "0")
    assert res.exit_code == 0, res.output
    full, fp32 = m["tflite-int8"]["bytes"], m["tflite-fp32"]["bytes"]
    assert "size_budget" not in m["tflite-int8"] and "weights_quantization" not in read_meta(run / "model-int8.tflite")
    monkeypatch.setitem(B.MAX_EXTRA_DROP, "ptq", 100.0)  # the tiny random model's top-1 is not the subject here
    pct = 100 * (full - 2000) / fp32
    res, m = _budget_export(run, "--size-budget", f"{pct:.4f}")
    assert res.exit_code == 0, res.output
    e = m["tflite-int8"]
    b = e["size_budget"]
    assert b["met"] and b["fp32_bytes"] == fp32 and b["per_channel_bytes"] == full
    assert e["bytes"] <= b["limit_bytes"] == int(fp32 * pct / 100) and e["bytes"] < full
    k = len(b["per_tensor_layers"])
    assert k >= 1 and e["parity"]["n"] > 0 and "per_channel_parity" in b
    assert read_meta(run / "model-int8.tflite")["weights_quantization"]["per_tensor_layers"] == k
    ws = [L["ws"] for L in _tflite_layers((run / "model-int8.tflite").read_bytes())]
    assert sum(len(s) == 1 for s in ws) >= k  # (the dense head may be per-tensor already)
    assert "per-tensor weight scales" in res.output.replace("\n", " ")


def test_size_budget_not_met_keeps_per_channel_file(tiny_run, tmp_path, monkeypatch):
    """A budget no layer choice reaches, or a smaller file that loses accuracy: the per-channel file is
    written as with --size-budget 0, and the manifest and output say why."""
    import edgetl.budget as B

    run = _copy(tiny_run, tmp_path)
    res, m = _budget_export(run, "--size-budget", "0")
    full, fp32 = m["tflite-int8"]["bytes"], m["tflite-fp32"]["bytes"]
    res, m = _budget_export(run, "--size-budget", "1", formats="tflite-int8")  # fp32 size made on the side
    assert res.exit_code == 0, res.output
    b = m["tflite-int8"]["size_budget"]
    assert b["met"] is False and "still above 1 %" in b["reason"] and m["tflite-int8"]["bytes"] == full
    assert b["fp32_bytes"] == fp32
    assert "not met" in res.output.replace("\n", " ")
    monkeypatch.setitem(B.MAX_EXTRA_DROP, "ptq", -1.0)  # any smaller file now counts as losing accuracy
    res, m = _budget_export(run, "--size-budget", f"{100 * (full - 2000) / m['tflite-fp32']['bytes']:.4f}")
    assert res.exit_code == 0, res.output
    b = m["tflite-int8"]["size_budget"]
    assert b["met"] is False and "accuracy falls" in b["reason"] and "PTQ run" in b["reason"]
    assert m["tflite-int8"]["bytes"] == full

    def broken(model, layers):
        raise ValueError("simulated failure")

    monkeypatch.setattr(B, "per_tensor", broken)  # a bug in the budget step: the checked file still ships
    res, m = _budget_export(run, "--size-budget", "29", formats="tflite-int8")
    assert res.exit_code == 0, res.output
    b = m["tflite-int8"]["size_budget"]
    assert b["met"] is False and "size-budget step failed (ValueError: simulated failure)" in b["reason"]
    assert m["tflite-int8"]["bytes"] == full and "Traceback" not in res.output


# ---------------------------------------------------------------------------------------------- failures
def test_float_parity_failure_leaves_no_file(tiny_run, tmp_path, monkeypatch):
    """A tampered (impossible) tolerance: the check fails, exit 3, no file, a reason in the manifest."""
    run = _copy(tiny_run, tmp_path)
    monkeypatch.setitem(FORMATS["tflite-fp32"].options, "max_prob_diff", -1.0)
    (run / "model-fp32.tflite").write_bytes(b"stale file from an earlier export")
    res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32,tflite-fp16", "--keep-going"])
    assert res.exit_code == 3, res.output
    assert not (run / "model-fp32.tflite").exists()
    assert (run / "model-fp16.tflite").is_file()  # --keep-going: the others finish
    m = json.loads((run / "manifest.json").read_text())["artifacts"]
    assert m["tflite-fp32"]["status"] == "failed" and "tolerance" in m["tflite-fp32"]["reason"]
    assert m["tflite-fp16"]["status"] == "ok"
    assert not list(run.glob(".*.tmp"))


def test_int8_drop_failure_message_has_numbers(tiny_run, tmp_path, monkeypatch):
    """int8 losing more than --max-drop fails with the accuracies in the message and leaves no file."""
    import edgetl.export as ex

    run = _copy(tiny_run, tmp_path)
    real = ex.run_tflite

    def broken(model, x):  # an int8 model that always answers class 1 - its float answer
        probs, io = real(model, x)
        return probs[:, ::-1].copy(), io

    monkeypatch.setattr(ex, "run_tflite", broken)
    res = runner.invoke(app, ["export", str(run), "--format", "tflite-int8", "--calib", "8", "--max-drop", "0"])
    assert res.exit_code == 3, res.output
    out = res.output.replace("\n", " ")
    assert "tflite-int8" in out and "drop" in out and "--max-drop 0" in out and "%" in out
    assert not (run / "model-int8.tflite").exists()


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_path_not_a_run(tmp_path):
    (tmp_path / "x").mkdir()
    _one_line_error(runner.invoke(app, ["export", str(tmp_path / "x")]), "not an edgetl run")
    _one_line_error(runner.invoke(app, ["export", str(tmp_path / "nope")]), "no such folder")


def test_run_without_model(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    (run / "model.keras").unlink()
    _one_line_error(runner.invoke(app, ["export", str(run)]), "no trained model", "model.keras")


def test_corrupted_model(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 3])
    res = runner.invoke(app, ["export", str(run)])
    _one_line_error(res, "model.keras", "corrupt")
    assert not list(run.glob("*.tflite")) and not list(run.glob("*.onnx"))


def test_unknown_format_lists_valid(tiny_run):
    res = runner.invoke(app, ["export", str(tiny_run), "--format", "tflite-fp32,tflite-int4"])
    _one_line_error(res, "tflite-int4", *EXPORT_FORMATS)
    res = runner.invoke(app, ["export", str(tiny_run), "--format", "keras"])
    _one_line_error(res, "cannot be exported")


def test_int8_without_calibration_images(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    meta = json.loads((run / "edgetl.json").read_text())
    for p, _ in meta["split"]["train"]:
        Path(p).rename(Path(p).with_suffix(".gone"))
    try:
        res = runner.invoke(app, ["export", str(run), "--int8"])
        _one_line_error(res, "calibration", "--int8")
        # float formats need no calibration images: fine
        res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32"])
        assert res.exit_code == 0, res.output
    finally:
        for p, _ in meta["split"]["train"]:
            Path(p).with_suffix(".gone").rename(p)


def test_bad_option_values(tiny_run):
    _one_line_error(runner.invoke(app, ["export", str(tiny_run), "--int8", "--calib", "0"]), "--calib")
    _one_line_error(runner.invoke(app, ["export", str(tiny_run), "--max-drop", "-1"]), "--max-drop")
    for bad in ("120", "-5"):
        _one_line_error(runner.invoke(app, ["export", str(tiny_run), "--int8", "--size-budget", bad]),
                        "--size-budget", "0 (off) to 100")


# ---------------------------------------------------------------------------------------------- portable int8
def _signed_copy(proto):
    """The u8-weight int8 ONNX file turned back into the usual s8 form (u8 - 128, zero point 0)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    changed = 0
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[2] in inits:
            zp = numpy_helper.to_array(inits[node.input[2]])
            if zp.dtype == np.uint8 and np.all(zp == 128):
                w = numpy_helper.to_array(inits[node.input[0]])
                name = node.input[0] + "_s8"
                proto.graph.initializer.append(numpy_helper.from_array((w.astype(np.int16) - 128).astype(np.int8), name))
                node.input[:] = [name, node.input[1]]
                changed += 1
    return changed


def test_onnx_int8_cannot_saturate_checked_from_the_file(tiny_exported):
    """The property holds in the file itself, so a VNNI or Arm machine catches a regression as well as
    an AVX2 one: no GEMM-lowered layer holds s8 weights outside [-64, 63]. The check is not vacuous:
    the same file in the usual s8 form is flagged, and turning it back to u8 gives bit-identical outputs."""
    import onnx
    import onnxruntime as ort

    from edgetl.onnx_int8 import saturation_risks, unsigned_weights

    run, res = tiny_exported
    assert res.exit_code == 0, res.output
    proto = onnx.load(run / "model-int8.onnx")
    assert saturation_risks(proto) == []
    signed = onnx.load(run / "model-int8.onnx")
    n = _signed_copy(signed)
    assert n >= 50  # every conv of MobileNetV2
    assert len(saturation_risks(signed)) >= 30
    assert unsigned_weights(signed) == n and saturation_risks(signed) == []
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)

    def probs(p):
        s = ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])

    assert np.array_equal(probs(proto), probs(signed))
    m = json.loads((run / "manifest.json").read_text())
    sessions = m["artifacts"]["onnx-int8"]["parity"]["sessions"]
    assert sessions["x64quantprecision_max_abs_diff"] <= sessions["tolerance"]
    assert m["checked_on"]["class"] and "avx2" in m["checked_on"] or "neon" in m["checked_on"]


def test_foreign_s8_onnx_file_still_runs_and_says_how(tiny_exported, tmp_path):
    """An int8 ONNX file with s8 weights (another tool's, or an older export): on a non-VNNI x86 the
    runtime asks onnxruntime for exact u8 x u8 sums; where onnxruntime cannot apply that to the file it
    falls back to the default session and says that the sums may saturate."""
    import onnx

    from edgetl import cpu, runtime
    from edgetl.artifact import embed_onnx, read_meta

    run, _ = tiny_exported
    proto = onnx.load(run / "model-int8.onnx")
    meta = read_meta(run / "model-int8.onnx")
    meta.pop("int8_weights")
    assert _signed_copy(proto) >= 50
    embed_onnx(proto, meta)
    path = tmp_path / "foreign-int8.onnx"
    path.write_bytes(proto.SerializeToString())
    m = runtime.load(path)
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    p = m.predict_pixels(x)
    assert p.shape == (2, 2) and np.allclose(p.sum(1), 1, atol=0.02)
    if cpu.u8s8_saturates():
        assert "x64quantprecision" in m.session, m.session
    else:
        assert m.session.startswith("default (this CPU"), m.session


def test_onnx_int8_with_saturating_weights_is_refused(tiny_run, tmp_path, monkeypatch):
    """An int8 ONNX file whose s8 weights could saturate is never written, whatever this CPU is."""
    import edgetl.export as ex

    run = _copy(tiny_run, tmp_path)
    monkeypatch.setattr(ex, "unsigned_weights", lambda proto: 0)
    res = runner.invoke(app, ["export", str(run), "--format", "onnx-int8", "--calib", "8", "--max-drop", "100"])
    assert res.exit_code == 3, res.output
    assert "saturate" in res.output and not (run / "model-int8.onnx").exists()


def test_onnx_session_mode_follows_the_file_and_the_cpu(monkeypatch):
    """predict/bench give exact int8 answers on a non-VNNI x86: edgetl's files need nothing; other int8
    files get session.x64quantprecision=1 there, and only there."""
    from edgetl import cpu
    from edgetl.runtime import ONNXModel

    avx2 = cpu.features({"flags": "fpu avx2 fma"}, "x86_64")
    vnni = cpu.features({"flags": "avx2 fma avx512f avx512_vnni"}, "x86_64")
    arm = cpu.features({"Features": "fp asimd asimddp"}, "aarch64")
    assert (avx2["class"], vnni["class"], arm["class"]) == ("x86-avx2", "x86-vnni", "arm64-dotprod")
    for feat, saturates in ((avx2, True), (vnni, False), (arm, False)):
        monkeypatch.setattr(cpu, "features", lambda feat=feat: feat)
        assert ONNXModel._session_mode({"format": "onnx-int8", "int8_weights": "u8"}).startswith("default")
        mode = ONNXModel._session_mode({"format": "onnx-int8"})
        assert mode.startswith("x64quantprecision") == saturates, mode
        assert ONNXModel._session_mode({"format": "onnx-fp32"}) == "default"


# ---------------------------------------------------------------------------------------------- integration
@pytest.mark.integration
def test_hymenoptera_int8_close_to_float(exported_run):
    """Real run (alpha 0.35, 224 px, ImageNet weights): int8 artifacts keep the float accuracy."""
    m = json.loads((exported_run / "manifest.json").read_text())["artifacts"]
    for name in INT8_EXPORTS + ["tflite-fp32", "onnx-fp32"]:
        assert m[name]["status"] == "ok", m[name]
    keras_acc = m["tflite-fp32"]["parity"]["keras_accuracy"]
    assert keras_acc > 0.8
    for name in INT8_EXPORTS:
        p = m[name]["parity"]
        assert p["n"] > 100
        assert p["accuracy"] >= keras_acc - 0.02, (name, p)
        assert p["agreement"] >= 0.93, (name, p)
    # Sizes (benchmarks/bench_export.py): the default --size-budget 30 holds for both int8 files. The
    # per-channel TFLite file is 32.0 % (lossless floor 30.9 %), so some layers take per-tensor scales;
    # that file may lose at most budget.MAX_EXTRA_DROP points against the per-channel one.
    from edgetl.budget import MAX_EXTRA_DROP

    for name, fp32 in (("tflite-int8", "tflite-fp32"), ("onnx-int8", "onnx-fp32")):
        b = m[name]["size_budget"]
        assert b["met"] and m[name]["bytes"] <= 0.30 * m[fp32]["bytes"], (name, b)
        if b["per_tensor_layers"]:
            assert 0 < len(b["per_tensor_layers"]) < 20
            lost = 100 * (b["per_channel_parity"]["accuracy"] - m[name]["parity"]["accuracy"])
            assert lost <= MAX_EXTRA_DROP["ptq"], (name, b)
    assert m["tflite-int8"]["size_budget"]["per_channel_bytes"] > 0.30 * m["tflite-fp32"]["bytes"]
    assert np.isclose(m["tflite-fp32"]["parity"]["accuracy"], keras_acc, atol=1 / 150)
    # the ONNX int8 file gives the same answers with and without onnxruntime's saturation-free session
    assert m["onnx-int8"]["parity"]["sessions"]["x64quantprecision_agreement"] == 1.0

"""Runtime layer (issue 4): every exported format loads from its file alone; bad files get one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgetl import runtime
from edgetl.data import load_image, preprocess
from edgetl.errors import EdgetlError
from edgetl.formats import FORMATS

ARTIFACT_FORMATS = ["tflite-fp32", "tflite-int8", "onnx-fp32"]


def _pixels(run, n=4):
    items = run_val_items(run)[:n]
    size = runtime.load(run / FORMATS["tflite-fp32"].filename).image_size
    return np.stack([load_image(p, size) for p, _ in items])


def run_val_items(run):
    from edgetl.rundir import Run

    return Run(run).split_items("val")


def test_importing_bench_predict_cli_does_not_import_tensorflow():
    code = ("import sys; import edgetl.runtime, edgetl.bench, edgetl.bench_worker, edgetl.predict, edgetl.cli, "
            "edgetl.artifact, edgetl.data, edgetl.formats, edgetl.rundir; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"TensorFlow/Keras imported: {r.stdout} {r.stderr[-500:]}"


@pytest.mark.parametrize("fmt", ARTIFACT_FORMATS)
def test_artifact_alone_gives_labels_size_and_probabilities(c_run, tmp_path, fmt):
    src = c_run / FORMATS[fmt].filename
    lone = tmp_path / "copy" / src.name  # one file, nothing next to it
    lone.parent.mkdir()
    shutil.copy(src, lone)
    m = runtime.load(lone, threads=1)
    assert m.format.name == fmt
    assert m.classes == ["cats", "dogs"]
    assert m.spec["size"] == [m.image_size, m.image_size]
    probs = m.predict_pixels(_pixels(c_run))
    assert probs.shape == (4, 2)
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.02)


def test_float_formats_agree_and_match_manual_preprocessing(c_run):
    px = _pixels(c_run)
    tfl = runtime.load(c_run / "model-fp32.tflite")
    onx = runtime.load(c_run / "model-fp32.onnx")
    p1, p2 = tfl.predict_pixels(px), onx.predict_pixels(px)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    # the one preprocessing function, with the spec stored in the file: x / 127.5 - 1
    manual = px.astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(preprocess(px, tfl.spec), manual, atol=1e-6)
    raw = np.concatenate([tfl.run(manual[i:i + 1]) for i in range(len(px))])
    np.testing.assert_allclose(raw, p1, atol=1e-4)


def test_int8_uses_the_interpreters_quantization_params(c_run):
    m = runtime.load(c_run / "model-int8.tflite")
    assert m.in_dtype in (np.int8, np.uint8)
    d = m.interp.get_input_details()[0]
    scale, zp = d["quantization"]
    assert m.in_q[:2] == (pytest.approx(scale), zp)
    x = np.linspace(-0.95, 0.95, 2 * 32 * 3 * 32, dtype=np.float32).reshape(1, 32, 32 * 2, 3)[:, :, :32]
    q = m.to_input(x)
    assert q.dtype == m.in_dtype
    np.testing.assert_allclose((q.astype(np.float32) - zp) * scale, x, atol=scale / 2 + 1e-6)
    out = m.interp.get_output_details()[0]
    oscale, ozp = out["quantization"]
    deq = m.from_output(np.array([[ozp, ozp + 10]], dtype=out["dtype"]))
    np.testing.assert_allclose(deq, [[0.0, 10 * oscale]], atol=1e-7)
    # end to end = quantize with the input params, invoke, dequantize with the output params (by hand here)
    from ai_edge_litert.interpreter import Interpreter

    px = _pixels(c_run, 3)
    it = Interpreter(model_path=str(c_run / "model-int8.tflite"))
    it.allocate_tensors()
    want = []
    for img in px:
        xf = img[None].astype(np.float32) / 127.5 - 1.0
        v = xf / np.float32(scale)  # TFLite's QUANTIZE kernel: round half away from zero, then + zero point
        xq = np.clip(np.trunc(v + np.copysign(np.float32(0.5), v)) + zp, -128, 127).astype(d["dtype"])
        it.set_tensor(d["index"], xq)
        it.invoke()
        want.append((it.get_tensor(out["index"]).astype(np.float32) - ozp) * oscale)
    np.testing.assert_allclose(m.predict_pixels(px), np.concatenate(want), atol=1e-6)


def test_keras_row_needs_tensorflow_only_when_asked(c_run):
    with pytest.raises(EdgetlError, match="give an exported .tflite or .onnx"):
        runtime.load(c_run / "model.keras", allow_keras=False)


@pytest.mark.parametrize("kind", ["text", "empty", "truncated-tflite", "truncated-onnx", "missing"])
def test_bad_model_files_give_one_line_errors(c_run, tmp_path, kind):
    p = tmp_path / "bad.tflite"
    if kind == "text":
        p.write_text("this is not a model, just some text in a file\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated-tflite":
        data = (c_run / "model-fp32.tflite").read_bytes()
        p.write_bytes(data[: len(data) // 3])
    elif kind == "truncated-onnx":
        p = tmp_path / "bad.onnx"
        data = (c_run / "model-fp32.onnx").read_bytes()
        p.write_bytes(data[: len(data) // 3])
    else:
        p = tmp_path / "nope.tflite"
    with pytest.raises(EdgetlError) as e:
        runtime.load(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg


@pytest.mark.parametrize("bad", [0, -1, "x"])
def test_threads_must_be_positive(bad):
    with pytest.raises(EdgetlError, match="--threads"):
        runtime.check_threads(bad)

"""The one runtime on real exported files (the `tiny_exported` run): every format loads from its file
alone, from a path or from bytes; int8 (de)quantization uses the file's own parameters; which onnxruntime
session an int8 file gets, with its fallback; damaged files are one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from factory import without_weight_zero_points

from edgetl.core import artifact, cpu, runtime
from edgetl.core.errors import EdgetlError
from edgetl.core.formats import EXPORT_FORMATS, FORMATS
from edgetl.core.images import decoding_of, load_image, preprocess
from edgetl.core.rundir import Run


@pytest.fixture(scope="module")
def pixels(tiny_exported) -> np.ndarray:
    """uint8 pixels of four of the run's validation images, at the model's size."""
    size = Run(tiny_exported).image_size
    decoding = decoding_of(Run(tiny_exported).preprocessing)
    return np.stack([load_image(p, size, decoding) for p, _ in Run(tiny_exported).split_items("val")[:4]])


def test_light_modules_import_no_tensorflow():
    """Every module of core and bench, predict and the CLI, imported in a fresh full-install process."""
    code = ("import importlib, pkgutil, sys, edgetl.core, edgetl.bench, edgetl.predict, edgetl.cli\n"
            "for pkg in (edgetl.core, edgetl.bench):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tf_keras', 'keras', 'onnx', 'tf2onnx', 'matplotlib'))\n"
            "print(bad)\nsys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"imported: {r.stdout} {r.stderr[-500:]}"


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_a_file_alone_gives_labels_size_and_probabilities(tiny_exported, tmp_path, pixels, name):
    lone = tmp_path / FORMATS[name].filename  # one file, nothing next to it
    shutil.copy(tiny_exported / lone.name, lone)
    m = runtime.load(lone, threads=1)
    assert m.format.name == name and m.classes == ["cats", "dogs"]
    assert m.image_size == 32 and m.spec["size"] == [32, 32] and m.load_seconds > 0
    probs = m.predict_pixels(pixels)
    assert probs.shape == (4, 2) and probs.dtype == np.float32
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.02)
    assert m.predict_pixels(pixels[:0]).shape == (0, 2)


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_bytes_and_path_give_the_same_outputs(tiny_exported, pixels, name):
    fmt = FORMATS[name]
    path = tiny_exported / fmt.filename
    from_path = runtime.load(path)
    from_bytes = fmt.runner_class()(path.read_bytes(), fmt, from_path.meta)
    assert from_bytes.name == name and from_bytes.session == from_path.session
    np.testing.assert_array_equal(from_bytes.predict_pixels(pixels), from_path.predict_pixels(pixels))
    x = preprocess(pixels, from_path.spec)
    np.testing.assert_array_equal(fmt.runner_class()(path.read_bytes()).outputs(x), from_path.outputs(x))
    assert from_bytes.io() == from_path.io()


def test_float_files_agree_and_match_manual_preprocessing(tiny_exported, pixels):
    tfl = runtime.load(tiny_exported / "model-fp32.tflite")
    onx = runtime.load(tiny_exported / "model-fp32.onnx")
    p1, p2 = tfl.predict_pixels(pixels), onx.predict_pixels(pixels)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    manual = pixels.astype(np.float32) / 127.5 - 1.0  # the spec stored in the file: x / 127.5 - 1
    np.testing.assert_allclose(preprocess(pixels, tfl.spec), manual, atol=1e-6)
    raw = np.concatenate([tfl.run(manual[i:i + 1]) for i in range(len(pixels))])
    np.testing.assert_allclose(raw, p1, atol=1e-4)


def test_int8_tflite_uses_the_interpreters_quantization(tiny_exported, pixels):
    from ai_edge_litert.interpreter import Interpreter

    path = tiny_exported / "model-int8.tflite"
    m = runtime.load(path)
    d, out = m.interp.get_input_details()[0], m.interp.get_output_details()[0]
    (scale, zp), (oscale, ozp) = d["quantization"], out["quantization"]
    assert m.in_dtype == d["dtype"] and m.in_q[:2] == (pytest.approx(scale), zp)
    x = np.linspace(-0.95, 0.95, 32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3)
    q = m.to_input(x)
    assert q.dtype == m.in_dtype
    np.testing.assert_allclose((q.astype(np.float32) - zp) * scale, x, atol=scale / 2 + 1e-6)
    deq = m.from_output(np.array([[ozp, ozp + 10]], dtype=out["dtype"]))
    np.testing.assert_allclose(deq, [[0.0, 10 * oscale]], atol=1e-7)
    # end to end = TFLite's QUANTIZE rule by hand (half away from zero, then + zero point), invoke, dequantize
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    want = []
    for img in pixels:
        v = (img[None].astype(np.float32) / 127.5 - 1.0) / np.float32(scale)
        xq = np.clip(np.trunc(v + np.copysign(np.float32(0.5), v)) + zp, -128, 127).astype(d["dtype"])
        it.set_tensor(d["index"], xq)
        it.invoke()
        want.append((it.get_tensor(out["index"]).astype(np.float32) - ozp) * oscale)
    np.testing.assert_allclose(m.predict_pixels(pixels), np.concatenate(want), atol=1e-6)


def test_the_format_comes_from_the_bytes_and_metadata_not_the_name(tiny_exported, tmp_path):
    onnx_as_tflite = tmp_path / "model.tflite"
    shutil.copy(tiny_exported / "model-int8.onnx", onnx_as_tflite)
    assert runtime.identify(onnx_as_tflite)[0].name == "onnx-int8"
    plain = tmp_path / "ants.tflite"
    shutil.copy(tiny_exported / "model-int8.tflite", plain)
    fmt, meta = runtime.identify(plain)
    assert fmt.name == "tflite-int8" and meta == artifact.read_meta(tiny_exported / "model-int8.tflite")


def test_keras_file_only_where_asked(tiny_exported):
    with pytest.raises(EdgetlError, match="give an exported .tflite or .onnx"):
        runtime.load(tiny_exported / "model.keras", allow_keras=False)


@pytest.mark.parametrize("name", ["model-fp32.tflite", "model-int8.onnx"])
def test_truncated_files_are_one_line_errors(tiny_exported, tmp_path, name):
    p = tmp_path / name
    data = (tiny_exported / name).read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(EdgetlError) as e:
        runtime.load(p, verify=False)  # the runtime's own check
    assert str(e.value).startswith(f"{p}: corrupt or truncated") and "\n" not in str(e.value)
    with pytest.raises(EdgetlError) as e:  # checked first: the sealed sha256, or the same parse error
        runtime.load(p)
    assert str(e.value).startswith((f"{p}: corrupt or truncated", f"{p}: its content differs from the sha256"))


# ---- which onnxruntime session an int8 file gets ----------------------------------------------------------
@pytest.fixture(scope="module")
def foreign_int8(tiny_exported, tmp_path_factory):
    """edgetl's int8 ONNX file as other tools write it: s8 weights without zero points, and without the
    metadata's "int8_weights"."""
    import onnx

    proto = onnx.load(tiny_exported / "model-int8.onnx")
    n = without_weight_zero_points(proto)
    assert n >= 50  # every conv of MobileNetV2
    meta = artifact.read_meta(tiny_exported / "model-int8.onnx")
    assert meta.pop("int8_weights") == runtime.INT8_WEIGHTS
    meta.pop(artifact.SEAL_KEY)  # other tools seal nothing (edgetl's seal would no longer match)
    artifact.embed_onnx(proto, meta)
    path = tmp_path_factory.mktemp("foreign") / "foreign-int8.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_edgetl_int8_onnx_gets_the_default_session(tiny_exported, pixels):
    m = runtime.load(tiny_exported / "model-int8.onnx")
    assert m.session == "default (s8 weights, bounded pairs: exact on every CPU)"
    exact = runtime.ONNXRunner(tiny_exported / "model-int8.onnx", m.format, m.meta, precise=True)
    np.testing.assert_allclose(m.predict_pixels(pixels), exact.predict_pixels(pixels),
                               atol=FORMATS["onnx-int8"].options["session_tolerance"])


def test_foreign_s8_file_runs_and_says_how(foreign_int8, pixels):
    m = runtime.load(foreign_int8)
    p = m.predict_pixels(pixels)
    assert p.shape == (4, 2) and np.allclose(p.sum(1), 1, atol=0.02)
    if cpu.u8s8_saturates():  # exact sums asked for; a file onnxruntime cannot do that for falls back
        assert m.session.startswith(("x64quantprecision=1", "default (session.x64quantprecision=1 fails")), m.session
    else:
        assert m.session == "default (this CPU does not saturate int8 sums)"


def test_foreign_file_falls_back_where_exact_sums_cannot_load(foreign_int8, pixels, monkeypatch):
    """onnxruntime refusing session.x64quantprecision=1 for a file: the default session, said so; asked
    for explicitly (export's check), it is a one-line error instead."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def refuses_x64(src, sess_options=None, **kw):
        if sess_options is not None and sess_options.get_session_config_entry("session.x64quantprecision") == "1":
            raise RuntimeError("x64quantprecision: zero points must be per channel\nsecond line")
        return real(src, sess_options=sess_options, **kw)

    default = runtime.ONNXRunner(foreign_int8, FORMATS["onnx-int8"], runtime.load(foreign_int8).meta,
                                 precise=False)
    monkeypatch.setattr(cpu, "u8s8_saturates", lambda feat=None: True)
    monkeypatch.setattr(ort, "InferenceSession", refuses_x64)
    m = runtime.load(foreign_int8)
    assert m.session.startswith("default (session.x64quantprecision=1 fails on this file"), m.session
    np.testing.assert_array_equal(m.predict_pixels(pixels), default.predict_pixels(pixels))
    with pytest.raises(EdgetlError) as e:
        runtime.ONNXRunner(foreign_int8, m.format, m.meta, precise=True)
    assert str(e.value) == (f"{foreign_int8}: onnxruntime cannot run it with session.x64quantprecision=1 "
                            "(x64quantprecision: zero points must be per channel)")

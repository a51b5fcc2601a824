"""The runtime without a model file: which onnxruntime session an int8 file gets on which CPU, thread
counts, and one-line errors for files that are not models. Running real artifacts: tests/tf/test_runtime.py."""

from __future__ import annotations

import json

import pytest

from edgetl.core import cpu, runtime
from edgetl.core.errors import EdgetlError

AVX2 = cpu.features({"flags": "fpu avx2 fma"}, "x86_64")
VNNI = cpu.features({"flags": "avx2 fma avx512f avx512_vnni"}, "x86_64")
ARM = cpu.features({"Features": "fp asimd asimddp"}, "aarch64")


@pytest.mark.parametrize("feat,saturates", [(AVX2, True), (VNNI, False), (ARM, False)])
def test_onnx_session_follows_the_file_and_the_cpu(monkeypatch, feat, saturates):
    """edgetl's int8 files (s8 weights with bounded pairs, or u8 weights) need nothing anywhere; other int8 files get
    session.x64quantprecision=1 on an x86 CPU without VNNI, and only there; float files never."""
    monkeypatch.setattr(cpu, "features", lambda: feat)
    assert runtime.session_mode({"format": "onnx-int8", "int8_weights": runtime.INT8_WEIGHTS}) == \
        "default (s8 weights, bounded pairs: exact on every CPU)"
    assert runtime.session_mode({"format": "onnx-int8", "int8_weights": "u8"}) == \
        "default (u8 weights: exact on every CPU)"
    mode = runtime.session_mode({"format": "onnx-int8"})
    if saturates:
        assert mode == "x64quantprecision=1 (s8 weights on an x86 CPU without VNNI)"
    else:
        assert mode == "default (this CPU does not saturate int8 sums)"
    assert runtime.session_mode({"format": "onnx-fp32"}) == "default"
    assert runtime.session_mode({}) == "default"  # no format recorded: a float file


@pytest.mark.parametrize("bad,needle", [(0, "must be from 1 to 256"), (-1, "must be from 1"),
                                        (999, "must be from 1 to 256"), ("x", "whole number"), (None, "whole number")])
def test_threads_must_be_positive(bad, needle):
    with pytest.raises(EdgetlError, match=f"^--threads .*{needle}"):
        runtime.check_threads(bad)
    assert runtime.check_threads("3") == 3
    with pytest.raises(EdgetlError, match="^--bench-threads"):
        runtime.check_threads(bad, flag="--bench-threads")


@pytest.mark.parametrize("name,content,needle", [
    ("notes.tflite", b"this is not a model, just some text in a file\n", "neither a TFLite flatbuffer nor an ONNX"),
    ("empty.onnx", b"", "file is empty or truncated (0 bytes)"),
    ("short.tflite", b"\x08\x07", "file is empty or truncated (2 bytes)"),
    ("bare.tflite", b"\x00\x00\x00\x00TFL3" + b"\x00" * 24, "has no edgetl metadata"),
    ("fake.onnx", b"\x08\x07" + b"\xff" * 30, "corrupt or truncated ONNX file"),
    ("missing.tflite", None, "no such model file"),
    ("model.keras", None, "no such model file"),
], ids=lambda v: v if isinstance(v, str) and "." in v and len(v) < 20 else "")
def test_files_that_are_not_models_are_one_line_errors(tmp_path, name, content, needle):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(EdgetlError) as e:
        runtime.load(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and needle in msg and "\n" not in msg, msg


def test_a_runs_keras_model_is_identified_from_the_run(tmp_path):
    spec = {"scale": 1 / 127.5, "offset": -1.0, "size": [32, 32]}
    (tmp_path / "edgetl.json").write_text(json.dumps({"classes": ["a", "b"], "image_size": 32,
                                                      "preprocessing": spec, "alpha": 0.35}))
    (tmp_path / "model.keras").write_bytes(b"")
    fmt, meta = runtime.identify(tmp_path / "model.keras")
    assert fmt.name == "keras" and meta["classes"] == ["a", "b"] and meta["preprocessing"] == spec
    assert meta["source"] == {"run": str(tmp_path), "alpha": 0.35, "image_size": 32}
    with pytest.raises(EdgetlError, match="a Keras model; give an exported .tflite or .onnx file"):
        runtime.load(tmp_path / "model.keras", allow_keras=False)
    if not runtime.tensorflow_installed():
        with pytest.raises(runtime.RuntimeSkipped, match="TensorFlow not installed"):
            runtime.load(tmp_path / "model.keras")


def test_runtime_versions_never_import_tensorflow():
    import sys

    had = "tensorflow" in sys.modules
    v = runtime.runtime_versions()
    assert {"python", "edgetl", "numpy", "onnxruntime", "ai-edge-litert"} <= set(v)
    assert ("tensorflow" in v) == runtime.tensorflow_installed()
    assert had or "tensorflow" not in sys.modules

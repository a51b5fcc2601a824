"""The format registry: every row names a converter and a runner that exist, file names and suffixes are
consistent, and the --format parser names the accepted values."""

from __future__ import annotations

import inspect
import sys

import pytest

from edgetl.core import formats
from edgetl.core.errors import EdgetlError
from edgetl.core.formats import EXPORT_FORMATS, FORMATS
from edgetl.core.runtime import Runner

TENSORFLOW = ("tensorflow", "tf_keras", "keras", "onnx", "tf2onnx")


@pytest.mark.parametrize("name", list(FORMATS))
def test_row_resolves_its_runner_and_converter_without_tensorflow(name):
    """Paths are resolved lazily and the modules they name import TensorFlow/onnx only when they run."""
    fmt = FORMATS[name]
    cls = fmt.runner_class()
    assert inspect.isclass(cls) and issubclass(cls, Runner)
    assert name in FORMATS and fmt.filename.endswith(fmt.suffix)
    if fmt.exportable:
        conv = inspect.signature(formats.resolve_name(fmt.converter))
        assert list(conv.parameters)[:2] == ["ctx", "fmt"]
        assert fmt.tolerance > 0
        assert fmt.needs_calibration == (fmt.precision == "int8")
    assert not [m for m in sys.modules if m.split(".")[0] in TENSORFLOW]


def test_rows_partition_the_exports():
    assert "keras" not in EXPORT_FORMATS and not FORMATS["keras"].exportable
    assert sorted(formats.FLOAT_EXPORTS + formats.INT8_EXPORTS) == sorted(EXPORT_FORMATS)
    assert len({FORMATS[n].filename for n in FORMATS}) == len(FORMATS)
    for suffix, name in formats.FP32_OF.items():
        assert FORMATS[name].suffix == suffix and FORMATS[name].precision == "fp32"
    assert {FORMATS[n].runtime for n in EXPORT_FORMATS} == {"litert", "onnxruntime"}
    assert FORMATS["onnx-int8"].options["session_tolerance"] > 0


@pytest.mark.parametrize("spec,int8,want", [
    (None, False, ["tflite-fp32", "tflite-fp16", "onnx-fp32"]),
    ("", True, ["tflite-fp32", "tflite-fp16", "onnx-fp32", "tflite-int8", "onnx-int8"]),
    ("onnx-int8, tflite-fp32,onnx-int8", False, ["onnx-int8", "tflite-fp32"]),
])
def test_parse_formats(spec, int8, want):
    assert [f.name for f in formats.parse_formats(spec, int8)] == want


@pytest.mark.parametrize("spec,needle", [("tflite-int4", "unknown format"), ("keras", "cannot be exported")])
def test_parse_formats_errors_list_the_accepted_values(spec, needle):
    with pytest.raises(EdgetlError) as e:
        formats.parse_formats(f"tflite-fp32,{spec}", int8=False)
    msg = str(e.value)
    assert msg.startswith(f"--format {spec!r}") and needle in msg
    assert msg.endswith("valid formats: " + ", ".join(EXPORT_FORMATS))


def test_get_format_names_the_flag():
    assert formats.get_format("onnx-fp32") is FORMATS["onnx-fp32"]
    with pytest.raises(EdgetlError, match="^--compare-format 'x': unknown format"):
        formats.get_format("x", flag="--compare-format")


@pytest.mark.parametrize("path,want", [
    *[(f"runs/a/{f.filename}", f.name) for f in FORMATS.values()],
    ("deploy/ants-int8.tflite", "tflite-int8"),
    ("deploy/ants-fp16-v2.tflite", "tflite-fp16"),
    ("deploy/ants.tflite", "tflite-fp32"),
    ("deploy/ants-int8.onnx", "onnx-int8"),
    ("deploy/ants.onnx", "onnx-fp32"),
    ("deploy/best.keras", "keras"),
])
def test_format_of_file(path, want):
    assert formats.format_of_file(path).name == want


def test_format_of_file_unknown_suffix():
    with pytest.raises(EdgetlError) as e:
        formats.format_of_file("model.pt")
    assert str(e.value) == "model.pt: not a model file edgetl knows (expected one of: .keras, .onnx, .tflite)"

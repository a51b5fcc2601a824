"""The one format registry: CLI choices, exporter, bench loop and parametrized tests all read it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EdgetlError


@dataclass(frozen=True)
class Format:
    name: str  # CLI name, e.g. "tflite-int8"
    filename: str  # file name inside a run directory
    suffix: str  # file suffix, used to recognise a bare artifact
    runtime: str  # "tensorflow" | "litert" | "onnxruntime"
    precision: str  # "fp32" | "fp16" | "int8"
    needs_calibration: bool = False
    exportable: bool = True  # False for the trained Keras model itself
    options: dict = field(default_factory=dict)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("keras", "model.keras", ".keras", "tensorflow", "fp32", exportable=False),
        Format("tflite-fp32", "model-fp32.tflite", ".tflite", "litert", "fp32"),
        Format("tflite-fp16", "model-fp16.tflite", ".tflite", "litert", "fp16",
               options={"weights": "float16", "activations": "float32"}),
        Format("tflite-int8", "model-int8.tflite", ".tflite", "litert", "int8", needs_calibration=True,
               options={"weights": "int8", "activations": "int8", "io": "int8"}),
        Format("onnx-fp32", "model-fp32.onnx", ".onnx", "onnxruntime", "fp32", options={"opset": 17}),
        Format("onnx-int8", "model-int8.onnx", ".onnx", "onnxruntime", "int8", needs_calibration=True,
               options={"opset": 17, "quant_format": "QDQ", "per_channel": True}),
    ]
}

EXPORT_FORMATS = [f.name for f in FORMATS.values() if f.exportable]
FLOAT_EXPORTS = [n for n in EXPORT_FORMATS if FORMATS[n].precision != "int8"]
INT8_EXPORTS = [n for n in EXPORT_FORMATS if FORMATS[n].precision == "int8"]


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise EdgetlError(
            f"unknown format {name!r}; valid formats: {', '.join(EXPORT_FORMATS)}"
        ) from None


def parse_formats(spec: str | None, int8: bool) -> list[Format]:
    """`--format a,b` (any subset) or the default: float formats, plus int8 ones with `--int8`."""
    if spec:
        names = [s.strip() for s in spec.split(",") if s.strip()]
        fmts = [get_format(n) for n in names]
        bad = [f.name for f in fmts if not f.exportable]
        if bad:
            raise EdgetlError(f"--format {bad[0]!r} cannot be exported; valid formats: {', '.join(EXPORT_FORMATS)}")
        return [FORMATS[n] for n in dict.fromkeys(f.name for f in fmts)]  # dedupe (Format holds a dict: unhashable)
    names = FLOAT_EXPORTS + (INT8_EXPORTS if int8 else [])
    return [FORMATS[n] for n in names]


def format_of_file(path) -> Format:
    """Guess the registry entry of a bare artifact file from its name (precision refined from its metadata)."""
    from pathlib import Path

    p = Path(path)
    for f in FORMATS.values():
        if p.name == f.filename:
            return f
    for f in FORMATS.values():
        if p.name.endswith(f.suffix) and f.precision in p.name:
            return f
    for f in FORMATS.values():
        if p.name.endswith(f.suffix):
            return f
    raise EdgetlError(f"{p}: not a model file edgetl knows (expected one of: "
                      f"{', '.join(sorted({f.suffix for f in FORMATS.values()}))})")

"""The format registry: one row per kind of model file. The CLI's choices, the exporter, bench, predict
and the parametrized tests all read these rows.

A row names its converter and its runner as "module:attribute" paths, resolved when first used (as
entry points are), so this module imports neither TensorFlow nor the stages that hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from pkgutil import resolve_name

from .errors import EdgetlError

LITERT = "edgetl.core.runtime:TFLiteRunner"
ONNXRUNTIME = "edgetl.core.runtime:ONNXRunner"
CONVERT = "edgetl.export.convert:"


@dataclass(frozen=True)
class Format:
    name: str  # CLI name, e.g. "tflite-int8"
    filename: str  # file name inside a run directory
    suffix: str  # file suffix, used to recognise a bare artifact
    runtime: str  # "tensorflow" | "litert" | "onnxruntime"
    precision: str  # "fp32" | "fp16" | "int8"
    runner: str  # the class that loads and runs such a file
    converter: str | None = None  # the export function that makes it; None for the trained model itself
    # parity: for float files the largest |p_file - p_keras| allowed; for int8 files the accuracy points
    # they may lose against Keras (export's --max-drop overrides it)
    tolerance: float = 0.0
    needs_calibration: bool = False
    options: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def exportable(self) -> bool:
        return self.converter is not None

    def convert(self, ctx) -> bytes:
        return resolve_name(self.converter)(ctx, self)

    def runner_class(self):
        return resolve_name(self.runner)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("keras", "model.keras", ".keras", "tensorflow", "fp32", "edgetl.model.runner:KerasRunner"),
        Format("tflite-fp32", "model-fp32.tflite", ".tflite", "litert", "fp32", LITERT, CONVERT + "tflite_fp32",
               tolerance=1e-3),
        # fp16 weights: probabilities measured up to 0.019 away from Keras at 128 px
        Format("tflite-fp16", "model-fp16.tflite", ".tflite", "litert", "fp16", LITERT, CONVERT + "tflite_fp16",
               tolerance=5e-2, options={"weights": "float16", "activations": "float32"}),
        Format("tflite-int8", "model-int8.tflite", ".tflite", "litert", "int8", LITERT, CONVERT + "tflite_int8",
               tolerance=2.0, needs_calibration=True, options={"weights": "int8", "activations": "int8", "io": "int8"}),
        Format("onnx-fp32", "model-fp32.onnx", ".onnx", "onnxruntime", "fp32", ONNXRUNTIME, CONVERT + "onnx_fp32",
               tolerance=1e-3, options={"opset": 17}),
        # session_tolerance: the default session against session.x64quantprecision=1 (exact integer sums)
        Format("onnx-int8", "model-int8.onnx", ".onnx", "onnxruntime", "int8", ONNXRUNTIME, CONVERT + "onnx_int8",
               tolerance=2.0, needs_calibration=True,
               options={"opset": 17, "quant_format": "QDQ", "per_channel": True, "session_tolerance": 1e-6}),
    ]
}

EXPORT_FORMATS = [f.name for f in FORMATS.values() if f.exportable]
FLOAT_EXPORTS = [n for n in EXPORT_FORMATS if FORMATS[n].precision != "int8"]
INT8_EXPORTS = [n for n in EXPORT_FORMATS if FORMATS[n].precision == "int8"]
FP32_OF = {".tflite": "tflite-fp32", ".onnx": "onnx-fp32"}  # the family's fp32 file (size ratios)


def get_format(name: str, flag: str = "--format") -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise EdgetlError(f"{flag} {name!r}: unknown format; valid formats: {', '.join(EXPORT_FORMATS)}") from None


def parse_formats(spec: str | None, int8: bool) -> list[Format]:
    """`--format a,b` (any subset) or the default: float formats, plus int8 ones with `--int8`."""
    if spec:
        names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
        fmts = [get_format(n) for n in names]
        bad = [f.name for f in fmts if not f.exportable]
        if bad:
            raise EdgetlError(f"--format {bad[0]!r} cannot be exported; valid formats: {', '.join(EXPORT_FORMATS)}")
        return fmts
    return [FORMATS[n] for n in FLOAT_EXPORTS + (INT8_EXPORTS if int8 else [])]


def format_of_file(path) -> Format:
    """Guess the registry row of a bare artifact file from its name (its metadata says for sure)."""
    p = Path(path)
    for match in (lambda f: p.name == f.filename,
                  lambda f: p.name.endswith(f.suffix) and f.precision in p.name,
                  lambda f: p.name.endswith(f.suffix)):
        found = next((f for f in FORMATS.values() if match(f)), None)
        if found is not None:
            return found
    raise EdgetlError(f"{p}: not a model file edgetl knows (expected one of: "
                      f"{', '.join(sorted({f.suffix for f in FORMATS.values()}))})")

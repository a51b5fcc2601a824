"""`edgetl export`'s options and their checks, made before TensorFlow is imported."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.config import REQUIRED, check_finite, opt
from ..core.data import CALIBRATION_IMAGES
from ..core.errors import EdgetlError
from ..core.formats import EXPORT_FORMATS, FORMATS, INT8_EXPORTS, parse_formats
from ..core.rundir import Run

# --max-drop's default is each int8 row's registry tolerance; the help text shows it
_INT8_TOLERANCES = ", ".join(sorted({f"{FORMATS[n].tolerance:g}" for n in INT8_EXPORTS}))


@dataclass
class ExportConfig:
    run: str = opt(REQUIRED, "Run directory from `edgetl train`", argument=True)
    int8: bool = opt(False, "Also export the int8 formats (calibrated; from the QAT model when `train --qat` "
                            "chose it)", "--int8")
    format: str | None = opt(None, "Comma-separated formats (any subset): " + ", ".join(EXPORT_FORMATS),
                             "--format", "-f")
    calib: int = opt(CALIBRATION_IMAGES, "int8 calibration: number of training images (seeded sample)")
    max_drop: float | None = opt(None, "int8 fails if it loses more accuracy points than this "
                                       f"[default: {_INT8_TOLERANCES}, each int8 format's own]")
    keep_going: bool = opt(False, "A failed format gets a reason; the others finish", "--keep-going")
    size_budget: float = opt(30.0, "int8 files above this % of their fp32 file give per-tensor weight scales to "
                                   "the layers that lose least by it, if accuracy holds (0 = off: converter's "
                                   "per-channel file)")
    verbose: bool = opt(False, "Show TensorFlow's native log lines on stderr", "--verbose")
    seed: int | None = opt(None, "Calibration sample seed (default: the run's)", cli=False)


def check_run(run_path: str | Path) -> Run:
    run = Run(run_path)
    model_path = run.require_model()
    if model_path.stat().st_size == 0 or not zipfile.is_zipfile(model_path):
        raise EdgetlError(f"RUN {run.path}: {model_path.name} is corrupt (not a Keras archive); re-run `edgetl train`")
    if not os.access(run.path, os.W_OK | os.X_OK):
        raise EdgetlError(f"RUN {run.path}: cannot write in it (permission denied); export a copy of the run")
    run.check_labels()
    return run


def _existing(items):
    return [(p, y) for p, y in items if Path(p).is_file()]


def check_inputs(run_path, fmt_spec: str | None, int8: bool, calib: int, max_drop: float | None,
                 size_budget: float = ExportConfig.size_budget):
    """Everything the user can get wrong, checked before TensorFlow is imported: the options first, then
    the run. Returns (run, formats, calibration items, validation items)."""
    fmts = parse_formats(fmt_spec, int8)
    for flag, v in (("--size-budget", size_budget), ("--max-drop", max_drop)):
        check_finite(flag, v)
    if not 0 <= size_budget <= 100:
        raise EdgetlError(f"--size-budget {size_budget:g}: must be a percentage of the fp32 file size, "
                          "from 0 (off) to 100")
    if calib < 1:
        raise EdgetlError(f"--calib {calib}: must be a positive number of images")
    if max_drop is not None and max_drop < 0:
        raise EdgetlError(f"--max-drop {max_drop}: must be >= 0 accuracy points")
    run = check_run(run_path)
    calib_items = _existing(run.split_items("train"))
    if any(f.needs_calibration for f in fmts) and not run.qat_graph and not calib_items:
        n = len(run.split_items("train"))
        raise EdgetlError(
            f"RUN {run.path}: int8 export needs training images for calibration, but "
            + (f"none of the {n} recorded training files exist any more" if n else "the run records no training split")
            + "; export float formats only (drop --int8) or re-run `edgetl train`")
    val_items = _existing(run.split_items("val"))
    if not val_items:
        raise EdgetlError(f"RUN {run.path}: no validation images found for the parity check "
                          "(edgetl.json split.val is empty or its files are gone)")
    return run, fmts, calib_items, val_items

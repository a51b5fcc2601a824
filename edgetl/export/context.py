"""What an export works from: the run's checked inputs, its Keras model(s), the validation images and the
Keras reference predictions, and a cache of converter outputs shared by the formats of one export."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.console import progress as progress_bar
from ..core.data import seeded_subset
from ..core.errors import EdgetlError
from ..core.images import decode_all, preprocess
from ..core.rundir import META_FILE, Run
from ..model.graph import count_macs
from ..model.load import load_run_model, strip_quantization
from ..model.predict import predict


@dataclass
class ExportContext:
    run: Run
    model: object  # the run's model (a QAT model for QAT runs: int8 formats use its learned ranges)
    float_model: object  # float graph (for QAT runs: the QAT weights with fake-quant stripped)
    float_probs: np.ndarray
    size: int
    spec: dict
    classes: list
    val_x: np.ndarray  # preprocessed float32
    val_y: np.ndarray
    keras_probs: np.ndarray
    macs: int
    qat: bool
    calib_items: list
    calib_n: int
    seed: int
    skipped_val: list = field(default_factory=list)  # validation files that could not be decoded
    _calib_x: np.ndarray | None = None
    cache: dict = field(default_factory=dict)

    def calibration_inputs(self) -> np.ndarray:
        """Preprocessed calibration images: a seeded sample of the run's training split (decoded once)."""
        if self._calib_x is None:
            items = seeded_subset(self.calib_items, self.calib_n, self.seed)
            pix, _, _, _ = decode_all(items, self.size)
            if len(pix) == 0:
                raise EdgetlError(f"RUN {self.run.path}: none of the {len(items)} training images could be decoded "
                                  "for int8 calibration")
            self._calib_x = preprocess(pix, self.spec)
        return self._calib_x


def load_model(run: Run):
    """The run's Keras model (QAT models open inside quantize_scope); any failure is one line."""
    try:
        return load_run_model(run)
    except EdgetlError:
        raise
    except Exception as e:
        raise EdgetlError(f"RUN {run.path}: cannot load {run.model_path.name} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                          "re-run `edgetl train`") from None


def check_model(run: Run, model) -> None:
    """edgetl.json must describe the model it sits beside: its class count is the output width, its
    image size the input's (an edited or mismatched file is one line, before any conversion)."""
    ins, outs = tuple(model.input_shape), tuple(model.output_shape)
    where = f"RUN {run.path}: {META_FILE}"
    if outs[-1] != len(run.classes):
        raise EdgetlError(f"{where} lists {len(run.classes)} classes but {run.model_path.name} outputs {outs[-1]} "
                          "probabilities; restore the run's edgetl.json or re-run `edgetl train`")
    size = run.image_size
    spec_size = list(run.preprocessing.get("size") or [size, size])
    if tuple(ins[1:3]) != (size, size) or spec_size != [size, size]:
        raise EdgetlError(f"{where} gives image_size {size} (preprocessing size {spec_size}) but "
                          f"{run.model_path.name} takes {ins[1]}x{ins[2]} images; restore the run's edgetl.json "
                          "or re-run `edgetl train`")


def build_context(run: Run, calib_items: list, val_items: list, calib_n: int, seed: int | None = None,
                  progress=None) -> ExportContext:
    """Load the run's model, decode its validation images and take the Keras reference predictions (of the
    float graph too, for a QAT run). `progress`: a core.console progress bar that gets one task per step."""
    bar = progress if progress is not None else progress_bar(None)
    size, spec = run.image_size, run.preprocessing
    t = bar.add_task("load model", total=1)
    model = load_model(run)
    check_model(run, model)
    bar.advance(t)
    t = bar.add_task("validation images", total=len(val_items))
    pix, y, _, skipped = decode_all(val_items, size, progress=lambda: bar.advance(t))
    if len(pix) == 0:
        raise EdgetlError(f"RUN {run.path}: none of the {len(val_items)} validation images could be decoded")
    val_x = preprocess(pix, spec)
    t = bar.add_task("keras reference", total=1)
    kp = predict(model, val_x)
    qat = bool(run.meta.get("qat"))
    float_model = strip_quantization(model) if qat else model
    fp = predict(float_model, val_x) if qat else kp
    bar.advance(t)
    return ExportContext(run=run, model=model, float_model=float_model, float_probs=fp, size=size, spec=spec,
                         classes=run.classes, val_x=val_x, val_y=y, keras_probs=kp, macs=count_macs(float_model),
                         qat=qat, calib_items=calib_items, calib_n=calib_n,
                         seed=int(seed if seed is not None else run.meta.get("seed", 0) or 0), skipped_val=skipped)

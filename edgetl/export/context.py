"""What an export works from: the run's checked inputs, its Keras models (the float model, and the model
int8 files come from), the validation images and the Keras reference predictions, and a cache of
converter outputs shared by the formats of one export."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.console import progress as progress_bar
from ..core.data import seeded_subset
from ..core.errors import EdgetlError
from ..core.images import decode_all, decoding_of, preprocess
from ..core.runtime import INT8_WEIGHTS
from ..core.rundir import META_FILE, MODEL_FILE, Run, sha256_file
from ..model.graph import count_macs
from ..model.load import load_int8_model, load_run_model, strip_quantization
from ..model.predict import predict


@dataclass
class ExportContext:
    run: Run
    model: object  # the model int8 formats are converted from (Run.int8_source)
    float_model: object  # the float model float formats are converted from
    float_probs: np.ndarray  # the float model's val probabilities: float files are checked against them
    size: int
    spec: dict
    classes: list
    val_x: np.ndarray  # preprocessed float32
    val_y: np.ndarray
    keras_probs: np.ndarray  # the val probabilities int8 files are checked against
    macs: int
    qat: bool  # the int8 files come from quantization-aware training
    calib_items: list
    calib_n: int
    seed: int
    skipped_val: list = field(default_factory=list)  # validation files that could not be decoded
    qat_graph: bool = False  # model.keras is a fake-quant graph (Run.qat_graph): int8 from its ranges
    int8_file: str = MODEL_FILE  # the Keras file `model` was loaded from
    float_ops: tuple = ()  # ops int8 files keep in float (export.control sets it per rung)
    onnx_weights: str = INT8_WEIGHTS  # ONNX int8 weight encoding (export.convert.onnx_from_tflite)
    correct_biases: bool = True  # int8 conv biases corrected (model.bias); off where only cost is measured
    model_sha256: str = ""  # sha256 of the run's model.keras as loaded: every file and the manifest name it
    _calib_x: np.ndarray | None = None
    cache: dict = field(default_factory=dict)

    def calibration_inputs(self) -> np.ndarray:
        """Preprocessed calibration images: a seeded sample of the run's training split (decoded once)."""
        if self._calib_x is None:
            items = seeded_subset(self.calib_items, self.calib_n, self.seed)
            pix, _, _, _ = decode_all(items, self.size, decoding=decoding_of(self.spec))
            if len(pix) == 0:
                raise EdgetlError(f"RUN {self.run.path}: none of the {len(items)} training images could be decoded "
                                  "for int8 calibration")
            self._calib_x = preprocess(pix, self.spec)
        return self._calib_x

    @property
    def calib_used(self) -> int:
        """Calibration images actually used: those decoded, or (before decoding) those on offer."""
        if self._calib_x is not None:
            return int(len(self._calib_x))
        return min(self.calib_n, len(self.calib_items))

    def from_qat(self, precision: str) -> bool:
        """Whether a file of this precision comes from quantization-aware training."""
        return self.qat_graph or (self.qat and precision == "int8")


def _loaded(run: Run, load, name: str = MODEL_FILE):
    """load(run), any failure as one line naming the file."""
    try:
        return load(run)
    except EdgetlError:
        raise
    except Exception as e:
        raise EdgetlError(f"RUN {run.path}: cannot load {name} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''}); re-run `edgetl train`") from None


def load_model(run: Run):
    """The run's Keras model (a fake-quant graph opens inside quantize_scope); any failure is one line."""
    return _loaded(run, load_run_model)


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
                  progress=None, int8: bool = True) -> ExportContext:
    """Load the run's model(s), decode its validation images and take the Keras reference predictions.
    Float formats come from model.keras; int8 formats (int8=True) from the model Run.int8_source names,
    checked against the float model. A run whose model.keras is a fake-quant graph exports its float files
    from the graph's float twin. `progress`: a core.console progress bar that gets one task per step."""
    bar = progress if progress is not None else progress_bar(None)
    size, spec = run.image_size, run.preprocessing
    source, int8_path = run.int8_source()
    t = bar.add_task("load model", total=1)
    model_sha256 = sha256_file(run.model_path)
    model = load_model(run)
    check_model(run, model)
    float_model = strip_quantization(model) if run.qat_graph else model
    int8_model = model
    if int8 and int8_path != run.model_path:
        int8_model = _loaded(run, load_int8_model, int8_path.name)
    bar.advance(t)
    t = bar.add_task("validation images", total=len(val_items))
    pix, y, _, skipped = decode_all(val_items, size, progress=lambda: bar.advance(t), decoding=decoding_of(spec))
    if len(pix) == 0:
        raise EdgetlError(f"RUN {run.path}: none of the {len(val_items)} validation images could be decoded")
    val_x = preprocess(pix, spec)
    t = bar.add_task("keras reference", total=1)
    fp = predict(float_model, val_x)
    kp = predict(model, val_x) if run.qat_graph else fp
    bar.advance(t)
    return ExportContext(run=run, model=int8_model, float_model=float_model, float_probs=fp, size=size, spec=spec,
                         classes=run.classes, val_x=val_x, val_y=y, keras_probs=kp, macs=count_macs(float_model),
                         qat=source == "qat", calib_items=calib_items, calib_n=calib_n,
                         seed=int(seed if seed is not None else run.meta.get("seed", 0) or 0), skipped_val=skipped,
                         qat_graph=run.qat_graph, int8_file=int8_path.name, model_sha256=model_sha256)

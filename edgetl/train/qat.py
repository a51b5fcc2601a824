"""Quantization-aware training for `edgetl train --qat`, after the float phases.

`qat_phase(model, train_xy, val_xy, spec, cfg, ...)` returns (QAT model, info); train_xy / val_xy are
(uint8 pixels (N,H,W,3), int labels (N,)), and cfg is the TrainConfig (qat_epochs, qat_lr, qat_loss,
batch_size, seed).

What a --qat run is:
- The float model is never changed: the run's model.keras is the model a run without --qat writes, and
  every float file is exported from it.
- The QAT model (model-qat.keras) is a plain Keras model of the same architecture whose top, the layers
  after the cut (by default the head on the base's pooled features), was fine-tuned under fake
  quantization. Its int8 files are converted exactly as post-training (PTQ) files are
  (model.convert.int8_tflite on export's calibration images), so the bottom quantizes to the very same
  int8 tensors in both files, and export needs no tfmot.
- The fine-tune runs on cached activations: the bottom's int8 output at the cut is read once per image
  from the run's own PTQ file (the converter's numerics), so no epoch passes full-size images through the
  base. The top is a QAT graph quantized as the converter quantizes (model.quantize), its activation
  ranges calibrated on the converter's calibration images, its input range the PTQ file's at the cut.
  It distils towards the float model's probabilities by default (--qat-loss distill): QAT is there to
  make the int8 model give the float model's answers.
- QAT never makes the run worse: both int8 TFLite files are scored on val, and the QAT model's is chosen
  (info["int8_source"] "qat", else "ptq") only if it scores higher, or as high and closer to the float
  model's probabilities (mean KL divergence on val, the quantity the fine-tune minimises).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.data import CALIBRATION_IMAGES, seeded_subset
from ..core.errors import EdgetlError, describe
from ..core.images import preprocess
from ..core.runtime import TFLiteRunner
from ..model.convert import int8_tflite
from ..model.graph import cut_layer, top_model, with_weights_of
from ..model.load import strip_quantization
from ..model.predict import predict, scores
from ..model.quantize import calibrate_ranges, frozen_bn, quantize_matched, set_input_range
from ..model.tfenv import tfmot


def calibration_indices(train_paths, train_labels, n: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """Indices of the training images `edgetl export` calibrates on, in the order it feeds them: its seeded
    sample of the run's recorded training split ((resolved path, label) pairs in split order)."""
    if train_paths is None:
        items = [(f"{i:09d}", 0) for i in range(len(train_labels))]
    else:
        items = [(str(Path(p).resolve()), int(y)) for p, y in zip(train_paths, train_labels)]
    pos = {item: i for i, item in enumerate(items)}
    return np.array([pos[item] for item in seeded_subset(items, n, seed)], int)


def beats(acc_qat: float, kl_qat: float, acc_ptq: float, kl_ptq: float) -> bool:
    """Whether the QAT int8 file is the better one: higher val accuracy, or the same and a lower mean KL
    divergence from the float model's probabilities. A failed candidate (nan) never is."""
    if not np.isfinite(acc_qat):
        return False
    if acc_qat != acc_ptq:
        return acc_qat > acc_ptq
    return bool(np.isfinite(kl_qat) and kl_qat < kl_ptq)


def divergence(p_float: np.ndarray, p_int8: np.ndarray) -> float:
    """Mean KL(float || int8) over images (int8 probabilities are multiples of 1/256: floored at 1e-4)."""
    if not len(p_float):
        return float("nan")
    p = np.clip(p_float, 1e-7, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(np.clip(p_int8, 1e-4, 1.0))), axis=1)))


@dataclass
class _Phase:
    """What the steps of one QAT phase share."""

    model: object
    cfg: object
    x_tr: np.ndarray  # preprocessed training images
    y_tr: np.ndarray
    x_va: np.ndarray
    y_va: np.ndarray
    cal: np.ndarray  # indices of export's calibration images in x_tr
    times: dict = field(default_factory=dict)
    mark: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self.mark, 2)
        self.mark = now

    def int8_file(self, model) -> bytes:
        """`model`'s int8 TFLite file, converted as export converts it."""
        return int8_tflite(model, int(self.x_tr.shape[1]), self.x_tr[self.cal])


def qat_phase(model, train_xy, val_xy, spec, cfg, console=None, teacher_probs=None, train_paths=None,
              float_val_probs=None, cut: str | None = None):
    """The QAT model of a trained float model, and what happened (module docstring). teacher_probs /
    float_val_probs: the float model's probabilities on the training / val images when the caller has
    them (else computed here); train_paths: the training files, to calibrate on export's images; cut: the
    layer whose output the fine-tuned top reads (default: the head's input)."""
    from rich.console import Console

    console = console or Console(quiet=True)
    t0 = time.perf_counter()
    if len(train_xy[0]) == 0:
        raise EdgetlError("--qat: no training images to calibrate and fine-tune on")
    y_tr = np.asarray(train_xy[1])
    p = _Phase(model, cfg, preprocess(train_xy[0], spec), y_tr, preprocess(val_xy[0], spec), np.asarray(val_xy[1]),
               calibration_indices(train_paths, y_tr, CALIBRATION_IMAGES, cfg.seed))
    cut = cut_layer(model, cut)
    ptq, (a_tr, a_va, in_range) = _ptq_file(p, cut)
    p_ptq = TFLiteRunner(ptq).outputs(p.x_va)  # as export's parity check and bench run it
    float_va = predict(model, p.x_va) if float_val_probs is None else np.asarray(float_val_probs)
    p.lap("ptq_eval")
    top = top_model(model, cut)
    qtop, acc_cal, history = _fit_top(p, top, a_tr, a_va, in_range, teacher_probs)
    g_va = predict(qtop, a_va)
    p.lap("fine_tune")
    qat_model, p_qat, error = _qat_file(p, qtop)
    acc = {"ptq": scores(p_ptq, p.y_va)[0], "qat": scores(p_qat, p.y_va)[0] if error is None else float("nan")}
    kl = {"ptq": divergence(float_va, p_ptq), "qat": divergence(float_va, p_qat) if error is None else float("nan")}
    source = "qat" if beats(acc["qat"], kl["qat"], acc["ptq"], kl["ptq"]) else "ptq"
    console.print(_verdict(source, acc, kl, error), highlight=False)
    info = {
        "int8_source": source,
        "val_acc_ptq_int8": acc["ptq"],
        "val_acc_qat_int8": acc["qat"],
        "val_kl_ptq_int8": kl["ptq"],
        "val_kl_qat_int8": kl["qat"],
        "val_acc_qat_graph_calibrated": acc_cal,
        "val_acc_qat_graph": scores(g_va, p.y_va)[0],
        "qat_graph_int8_agreement": (float((p_qat.argmax(1) == g_va.argmax(1)).mean())
                                     if error is None and len(g_va) else float("nan")),
        **({"qat_error": error} if error else {}),
        "cut": cut,
        "trained_layers": [layer.name for layer in top.layers if layer.weights],
        "epochs": cfg.qat_epochs,
        "lr": cfg.qat_lr,
        "loss": cfg.qat_loss,
        "calibration_images": int(len(p.cal)),
        "history": history,
        "timings": p.times,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return qat_model, info


def _ptq_file(p: _Phase, cut: str):
    """The run's post-training int8 file, and from it the int8 activations at the cut of every training
    and val image and their (scale, zero point)."""
    ptq = p.int8_file(p.model)
    p.lap("ptq_convert")
    runner = TFLiteRunner(ptq, keep_tensors=True)
    tensor = runner.tensor(f"{p.model.name}/{cut}/")
    a_tr, a_va = runner.tensor_values(p.x_tr, tensor), runner.tensor_values(p.x_va, tensor)
    scale, zp = tensor["quantization"]
    p.lap("int8_activations")
    return ptq, (a_tr, a_va, (float(scale), int(zp)))


def _fit_top(p: _Phase, top, a_tr, a_va, in_range, teacher_probs):
    """The top as a converter-matched QAT graph on the int8 activations: ranges calibrated on the
    calibration images, then fine-tuned. Returns (QAT graph, its val accuracy after calibration, history)."""
    cfg = p.cfg
    _, keras, _ = tfmot()
    qtop = quantize_matched(top)
    set_input_range(qtop, *in_range)
    calibrate_ranges(qtop, a_tr[p.cal], cfg.batch_size)
    set_input_range(qtop, *in_range)  # calibration moves it a hair: its inputs are already on the file's grid
    acc_cal = scores(predict(qtop, a_va), p.y_va)[0]
    p.lap("qat_graph")
    if cfg.qat_loss == "distill":
        targets = predict(p.model, p.x_tr) if teacher_probs is None else np.asarray(teacher_probs)
        loss = "categorical_crossentropy"
    else:
        targets, loss = p.y_tr, "sparse_categorical_crossentropy"
    with frozen_bn(qtop):  # the float model's BatchNorm statistics, in inference mode
        qtop.compile(optimizer=keras.optimizers.Adam(cfg.qat_lr), loss=loss)
        keras.utils.set_random_seed(cfg.seed)
        h = qtop.fit(a_tr, targets, batch_size=cfg.batch_size, epochs=cfg.qat_epochs, shuffle=True, verbose=0)
    return qtop, acc_cal, {k: [float(v) for v in vs] for k, vs in h.history.items()}


def _qat_file(p: _Phase, qtop):
    """The QAT model (the float model with the fine-tuned top's weights) and its int8 file's val
    probabilities, or the reason it is no candidate (it cannot be converted or run: PTQ stays)."""
    qat_model = with_weights_of(p.model, strip_quantization(qtop))
    try:
        if not all(np.isfinite(w).all() for w in qat_model.get_weights()):
            raise EdgetlError("the fine-tune diverged (non-finite weights)")
        blob = p.int8_file(qat_model)
        p.lap("qat_convert")
        probs, error = TFLiteRunner(blob).outputs(p.x_va), None
    except Exception as e:  # noqa: BLE001 - any failure of the candidate leaves the PTQ file in place
        probs, error = None, describe(e)
    p.lap("qat_eval")
    return qat_model, probs, error


def _verdict(source: str, acc: dict, kl: dict, error: str | None) -> str:
    """The line that says which int8 file the run ships, and why."""
    if error:
        return (f"QAT: the QAT model's int8 file failed ({error}): int8 files will come from the float model "
                "(post-training quantization)")
    scored = f"int8 val accuracy {acc['qat']:.3f} (QAT) vs {acc['ptq']:.3f} (post-training)"
    if source == "qat":
        why = "" if acc["qat"] > acc["ptq"] else f", closer to the float model (KL {kl['qat']:.4f} vs {kl['ptq']:.4f})"
        return f"QAT: {scored}{why}: int8 files will come from the QAT model (model-qat.keras)"
    tie = " and not closer to the float model" if acc["qat"] == acc["ptq"] else ""
    return (f"QAT: {scored}: QAT does not beat post-training int8{tie}; int8 files will come from the float "
            "model (post-training quantization)")

"""Quantization-aware training (tensorflow-model-optimization): `edgetl train --qat`, after the float phases.

`qat_phase(model, train_xy, val_xy, spec, cfg, console)` returns (QAT model, info); train_xy / val_xy are
(uint8 pixels (N,H,W,3), int labels (N,)), and cfg is the TrainConfig (qat_epochs, qat_lr, qat_loss,
batch_size, seed).

Why a calibration pass: after quantize_model every activation range starts at +-6 and moves by an EMA with
decay 0.999, and the weight ranges also start at +-6 until a training step sets them, so the fresh QAT model
scores chance and a few hundred images cannot pull the ranges in. Before fine-tuning, training-mode forward
passes (BatchNorm layers frozen, so their statistics are untouched; dropout off) let tfmot's moving-average
quantizers record the real min/max (decay 0 instead of 0.999; the range kept is the min/max over all
calibration batches). Then a short QAT fine-tune, then the phase checks its own validation accuracy and
raises EdgetlError rather than return a model that lost the float model's accuracy.

The fine-tune distils by default (--qat-loss distill): its targets are the float model's probabilities on
the training images, not the labels. QAT is there to make the int8 model give the float model's answers,
and a few hundred labelled images pull the whole unfrozen network towards the labels instead. Measured on
hymenoptera, alpha 0.35, seeds 0-4 (README): the TFLite int8 file of a QAT run is within 0.5 point of float
on 4 seeds (mean drop -0.39 points) with TrainConfig's defaults (5 epochs of distillation at 1e-4), on 3
(mean 0.13) with 2 epochs on the labels at 1e-5.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.errors import EdgetlError
from ..core.images import preprocess
from ..model.bn import bn_layers
from ..model.graph import layers_of_type
from ..model.load import load_qat_model
from ..model.predict import predict, scores
from ..model.tfenv import tfmot

CALIB_BATCHES = 8  # calibration forward passes (x batch_size images, cycling the training set)
# The QAT model may lose at most this much val accuracy against the float model (or 2 images, if more).
MAX_QAT_DROP = 0.05


@contextlib.contextmanager
def _moving_average_decay(holder: dict):
    """Make tfmot's MovingAverageQuantizer use holder['decay'] instead of its hard-coded 0.999.

    tfmot 0.8 has no option for this (the decay is a literal in MovingAverageQuantizer.__call__), so the
    calibration pass swaps the method for the duration of the block; the model must run eagerly so each
    call reads the current value.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers

    cls = quantizers.MovingAverageQuantizer
    original = cls.__call__

    def call(self, inputs, training, weights, **kwargs):
        holder.setdefault("vars", {})[id(weights["min_var"])] = (weights["min_var"], weights["max_var"])
        return quant_ops.MovingAvgQuantize(
            inputs, weights["min_var"], weights["max_var"], ema_decay=holder["decay"], is_training=training,
            num_bits=self.num_bits, per_channel=self.per_axis, symmetric=self.symmetric,
            narrow_range=self.narrow_range)

    cls.__call__ = call
    try:
        yield
    finally:
        cls.__call__ = original


@contextlib.contextmanager
def _frozen_bn(model, dropout_off: bool = False):
    """BatchNormalization layers frozen for the block (a frozen tf_keras BN layer runs in inference mode, so
    its statistics stay the float model's), and optionally dropout off; restored afterwards (a QAT wrapper
    left frozen saves a .keras that cannot reload)."""
    _, keras, _ = tfmot()
    bns = bn_layers(model)
    drops = layers_of_type(model, keras.layers.Dropout) if dropout_off else []
    saved = [b.trainable for b in bns], [d.rate for d in drops]
    for b in bns:
        b.trainable = False
    for d in drops:
        d.rate = 0.0
    try:
        yield
    finally:
        for b, t in zip(bns, saved[0]):
            b.trainable = t
        for d, r in zip(drops, saved[1]):
            d.rate = r


def calibrate_ranges(qmodel, x: np.ndarray, batch_size: int = 32, batches: int = CALIB_BATCHES) -> int:
    """Set the QAT model's activation and weight ranges from real data (BatchNorm statistics untouched).
    Returns the number of images used."""
    tf, _, _ = tfmot()
    holder = {"decay": 0.0}  # each pass sets every range to that batch's min/max ...
    lo: dict = {}
    hi: dict = {}
    n = 0
    with _frozen_bn(qmodel, dropout_off=True), _moving_average_decay(holder):
        idx = np.arange(len(x))
        for k in range(min(batches, max(1, int(np.ceil(len(x) / batch_size))))):
            sel = idx[(k * batch_size) % len(x):][:batch_size]
            qmodel(tf.constant(x[sel]), training=True)
            n += len(sel)
            for key, (vmin, vmax) in holder.get("vars", {}).items():
                lo[key] = np.minimum(lo.get(key, np.inf), vmin.numpy())
                hi[key] = np.maximum(hi.get(key, -np.inf), vmax.numpy())
    # ... and the ranges kept are the min/max over all batches, as the TFLite converter's post-training
    # calibration does (the mean of per-batch ranges measured 2 points worse at 224 px)
    for key, (vmin, vmax) in holder.get("vars", {}).items():
        vmin.assign(lo[key])
        vmax.assign(hi[key])
    return n


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of preprocessed inputs in inference mode (nan without images)."""
    return scores(predict(model, x), y)[0]


def quantize(model):
    """tfmot's default 8-bit QAT wrapper on the flat functional graph (clear error for a nested model)."""
    _, _, mot = tfmot()
    if any(type(layer).__name__ in ("Functional", "Model", "Sequential") for layer in model.layers):
        raise EdgetlError("--qat: the model has a nested sub-model; QAT needs one flat functional graph")
    try:
        return mot.quantization.keras.quantize_model(model)
    except (ValueError, RuntimeError) as e:
        raise EdgetlError(f"--qat: tensorflow-model-optimization cannot quantize this model "
                          f"({str(e).splitlines()[0][:160]})") from None


def qat_phase(model, train_xy, val_xy, spec, cfg, console=None):
    """The QAT model of a trained float model, and what happened (see the module docstring)."""
    from rich.console import Console

    console = console or Console(quiet=True)
    t0 = time.perf_counter()
    tr_px, tr_y = train_xy
    if len(tr_px) == 0:
        raise EdgetlError("--qat: no training images to calibrate and fine-tune on")
    x_tr, x_va = preprocess(tr_px, spec), preprocess(val_xy[0], spec)
    y_va = np.asarray(val_xy[1])

    acc_float = _accuracy(model, x_va, y_va)
    qmodel = quantize(model)
    acc_raw = _accuracy(qmodel, x_va, y_va)
    order = np.random.default_rng(cfg.seed).permutation(len(x_tr))
    n_cal = calibrate_ranges(qmodel, x_tr[order], cfg.batch_size)
    acc_cal = _accuracy(qmodel, x_va, y_va)
    console.print(f"QAT: val accuracy float {acc_float:.3f}, quantized {acc_raw:.3f}, "
                  f"after range calibration on {n_cal} images {acc_cal:.3f}")
    history, acc_ft = {}, acc_cal
    if cfg.qat_epochs:
        history, acc_ft = _fine_tune(model, qmodel, x_tr, np.asarray(tr_y), x_va, y_va, acc_cal, cfg, console)
    acc_after = max(acc_ft, acc_cal)
    _check_accuracy(acc_after, acc_float, len(y_va))
    check_reload(qmodel, x_va[:8] if len(x_va) else x_tr[:8])
    info = {
        "val_acc_before": acc_float,
        "val_acc_quantized_uncalibrated": acc_raw,
        "val_acc_calibrated": acc_cal,
        "val_acc_after": acc_after,
        "val_acc_fine_tuned": acc_ft,
        "epochs": cfg.qat_epochs,
        "lr": cfg.qat_lr,
        "loss": cfg.qat_loss,
        "calibration_images": n_cal,
        "kept": "calibrated" if acc_ft < acc_cal else "fine-tuned",
        "history": history,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return qmodel, info


def _fine_tune(model, qmodel, x_tr, y_tr, x_va, y_va, acc_cal: float, cfg, console) -> tuple[dict, float]:
    """QAT fine-tuning of the calibrated model (BatchNorm frozen), towards the float model's probabilities
    (distill) or the labels; the calibrated weights are kept if val accuracy got worse.
    Returns (history, val accuracy after fine-tuning)."""
    _, keras, _ = tfmot()
    with _frozen_bn(qmodel):
        calibrated = qmodel.get_weights()
        if cfg.qat_loss == "distill":  # the float model's function, traced once already for its accuracy
            targets, loss = predict(model, x_tr), "categorical_crossentropy"
        else:
            targets, loss = y_tr, "sparse_categorical_crossentropy"
        qmodel.compile(optimizer=keras.optimizers.Adam(cfg.qat_lr), loss=loss, metrics=["accuracy"])
        keras.utils.set_random_seed(cfg.seed)
        h = qmodel.fit(x_tr, targets, batch_size=cfg.batch_size, epochs=cfg.qat_epochs, shuffle=True, verbose=0)
        history = {k: [float(v) for v in vs] for k, vs in h.history.items()}
        acc_ft = _accuracy(qmodel, x_va, y_va)
        if acc_ft < acc_cal:  # fine-tuning made it worse on val: keep the calibrated ranges/weights
            qmodel.set_weights(calibrated)
    console.print(f"QAT: fine-tuned {cfg.qat_epochs} epoch(s) at lr {cfg.qat_lr:g} ({cfg.qat_loss}): val accuracy "
                  f"{acc_cal:.3f} -> {acc_ft:.3f}" + (" (kept the calibrated model)" if acc_ft < acc_cal else ""))
    return history, acc_ft


def _check_accuracy(acc_after: float, acc_float: float, n_val: int) -> None:
    allowed = max(MAX_QAT_DROP, 2.0 / max(1, n_val))
    if not np.isfinite(acc_after) or acc_after < acc_float - allowed:
        raise EdgetlError(
            f"--qat: the quantization-aware model reaches val accuracy {acc_after:.3f} against the float model's "
            f"{acc_float:.3f} (more than {allowed * 100:.0f} points lost); not saving it. Try more --qat-epochs "
            "or export the float run with post-training int8 (`edgetl export RUN --int8`)")


def check_reload(qmodel, x: np.ndarray) -> None:
    """Save the QAT model as .keras and load it back (as `export` will); fail loudly if it does not
    come back identical, instead of leaving a run that cannot be exported."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "qat.keras"
        qmodel.save(p)
        try:
            back = load_qat_model(p)
        except Exception as e:
            raise EdgetlError(f"--qat: the QAT model does not reload from .keras ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})") from None
    diff = float(np.abs(predict(back, x) - predict(qmodel, x)).max())
    if diff > 1e-5:
        raise EdgetlError(f"--qat: the reloaded QAT model differs from the trained one (max prob diff {diff:.2g})")

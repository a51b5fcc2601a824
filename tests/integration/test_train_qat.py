"""The QAT phase on real data (the session's hymenoptera run: ImageNet MobileNetV2 alpha 0.35, 224 px): the
QAT graph predicts what the QAT model's int8 file predicts on the val images, the float model is left
alone, and the int8 file the run picks is the better of the two on val."""

from __future__ import annotations

import numpy as np

from edgetl.core.images import decode_all, decoding_of
from edgetl.core.rundir import Run
from edgetl.model.load import load_run_model
from edgetl.train import qat
from edgetl.train.config import TrainConfig


def test_qat_graph_agrees_with_its_int8_file_on_val(hymenoptera_run):
    run = Run(hymenoptera_run)
    train, val = run.split_items("train"), run.split_items("val")
    decoding = decoding_of(run.preprocessing)
    tr_px, tr_y, tr_paths, _ = decode_all(train, run.image_size, decoding=decoding)
    va_px, va_y, _, _ = decode_all(val, run.image_size, decoding=decoding)
    model = load_run_model(run)
    before = [w.copy() for w in model.get_weights()]
    qm, info = qat.qat_phase(model, (tr_px, tr_y), (va_px, va_y), run.preprocessing,
                             TrainConfig(seed=run.meta["seed"]), None, train_paths=tr_paths)
    assert info["qat_graph_int8_agreement"] >= 0.99, info
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert info["calibration_images"] == min(200, len(train))
    best = max(info["val_acc_ptq_int8"], info["val_acc_qat_int8"])
    assert info[f"val_acc_{info['int8_source']}_int8"] == best
    assert info["int8_source"] == ("qat" if qat.beats(info["val_acc_qat_int8"], info["val_kl_qat_int8"],
                                                      info["val_acc_ptq_int8"], info["val_kl_ptq_int8"]) else "ptq")

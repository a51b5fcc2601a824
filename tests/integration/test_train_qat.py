"""QAT's range calibration on a well-conditioned model (ImageNet MobileNetV2 alpha 0.35 at 96 px from the
shared weights, head trained by `edgetl train` on tiny generated images): after range calibration and the
QAT fine-tune the quantization-aware model keeps the float model's accuracy, and it reloads from .keras
unchanged. Measured on the training images, which the float model fits."""

from __future__ import annotations

import numpy as np

import factory
from edgetl.core.images import decode_all, preprocess
from edgetl.core.rundir import Run
from edgetl.model.load import load_qat_model, load_run_model
from edgetl.model.predict import predict
from edgetl.train import qat
from edgetl.train.config import TrainConfig


def test_qat_phase_calibrates_and_reloads(shared_weights, tmp_path):
    data = factory.image_folder(tmp_path / "data", per_class=8, size=120)
    res = factory.train_run(data, tmp_path / "run", weights="imagenet", image_size=96)
    run = Run(res.path)
    xy = decode_all(run.split_items("train"), 96)[:2]
    model = load_run_model(run)
    q, info = qat.qat_phase(model, xy, xy, run.preprocessing, TrainConfig(qat_epochs=1, batch_size=8), None)
    assert info["val_acc_before"] >= 0.9  # the float model fits these images
    assert info["val_acc_calibrated"] >= info["val_acc_before"] - 0.1
    assert info["val_acc_after"] >= info["val_acc_before"] - 0.1
    assert info["epochs"] == 1 and info["lr"] == 1e-4 and info["loss"] == "distill"
    assert info["seconds"] > 0 and info["calibration_images"] == 16 and len(info["history"]["loss"]) == 1
    assert any("Quantize" in type(layer).__name__ for layer in q.layers)
    # saved as train saves it, loaded as export loads it: same outputs
    q.save(tmp_path / "qat.keras")
    x = preprocess(xy[0][:8], run.preprocessing)
    assert np.abs(predict(load_qat_model(tmp_path / "qat.keras"), x) - predict(q, x)).max() < 1e-6

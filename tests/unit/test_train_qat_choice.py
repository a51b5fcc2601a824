"""How `train --qat` picks its int8 file and its calibration images, without TensorFlow: the QAT file is
chosen only when it beats the post-training one on val, and the QAT phase converts with the very images
`edgetl export` calibrates on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.core.data import CALIBRATION_IMAGES, seeded_subset
from edgetl.export.config import ExportConfig
from edgetl.train.qat import beats, calibration_indices, divergence


def test_qat_wins_on_accuracy_then_on_closeness_to_float():
    assert beats(0.9, 0.5, 0.8, 0.1) and not beats(0.8, 0.01, 0.9, 0.5)
    assert beats(0.9, 0.01, 0.9, 0.03)  # same accuracy, closer to the float model
    assert not beats(0.9, 0.03, 0.9, 0.03) and not beats(0.9, 0.05, 0.9, 0.03)
    assert not beats(float("nan"), float("nan"), 0.5, 0.1)  # a candidate that failed


def test_divergence_from_the_float_probabilities():
    p = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    assert divergence(p, p) < 1e-6
    assert divergence(p, p[:, ::-1]) > divergence(p, np.array([[0.8, 0.2], [0.3, 0.7]]))
    assert divergence(p, np.array([[1.0, 0.0], [0.0, 1.0]])) < np.inf  # int8 zeros are floored
    assert np.isnan(divergence(p[:0], p[:0]))


def test_qat_calibrates_on_the_images_export_calibrates_on(tmp_path):
    assert ExportConfig.calib == CALIBRATION_IMAGES
    paths = [str(tmp_path / f"c{i % 3}" / f"img{i:03d}.jpg") for i in range(50)]
    labels = [i % 3 for i in range(50)]
    idx = calibration_indices(paths, labels, 20, seed=3)
    items = [(str(Path(p).resolve()), y) for p, y in zip(paths, labels)]
    assert [items[i] for i in idx] == seeded_subset(items, 20, 3)
    assert sorted(calibration_indices(paths, labels, 200, seed=3)) == list(range(50))

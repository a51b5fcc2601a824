"""What an export works from: the run's checked inputs, its Keras model(s), the validation images and the
Keras reference predictions, and a cache of converter outputs shared by the formats of one export."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.data import seeded_subset
from ..core.errors import EdgetlError
from ..core.images import decode_all, preprocess
from ..core.rundir import Run


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
    console: object
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

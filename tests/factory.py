"""The one factory for test inputs: generated image folders (no TensorFlow), and tiny models and runs made
by edgetl's own code (TensorFlow). Tiny means MobileNetV2 alpha 0.35 at 32 px with random weights:
seconds to train and export, yet a real run directory and real artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("cats", "dogs")
COLOURS = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
TINY = {"weights": "random", "alpha": 0.35, "image_size": 32, "epochs": 8}


def image_folder(root: Path, classes=CLASSES, per_class: int = 6, size: int = 48, split: bool = True,
                 seed: int = 0) -> Path:
    """A small, learnable image folder: each class has its own dominant colour plus noise.
    split=True: root/{train,val}/<class>/ (val gets half as many, at least 2); else root/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    parts = [("train", per_class), ("val", max(2, per_class // 2))] if split else [("", per_class)]
    for part, n in parts:
        for ci, c in enumerate(classes):
            d = root / part / c if part else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(COLOURS[ci % len(COLOURS)], dtype=np.float64)
                arr = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"img_{i}.jpg", quality=90)
    return root


def quiet_console():
    from rich.console import Console

    return Console(stderr=True, quiet=True)


def train_run(data: Path, out: Path, **options):
    """`edgetl train` on `data` with the tiny defaults (TINY) and any other options; returns TrainResult."""
    from edgetl.train.config import TrainConfig
    from edgetl.train.stage import train

    return train(TrainConfig(data=str(data), out=str(out), **{**TINY, **options}), console=quiet_console())


def export_run(run: Path, **options) -> dict:
    """`edgetl export` of a run (int8 included; the tiny model's int8 accuracy is not the subject: max_drop 100)."""
    from edgetl.export.stage import export_run as export

    return export(run, **{"int8": True, "calib": 16, "max_drop": 100.0, "console": quiet_console(), **options})


def tiny_parts(n_classes: int = 2, size: int = 32, seed: int = 0, images: np.ndarray | None = None):
    """(base, head, pixels used for BN): a random MobileNetV2 alpha 0.35 base (BatchNorm statistics from
    `images`, or from noise) and a new head, as `edgetl train --weights random` builds them."""
    from edgetl.core.images import preprocessing_spec
    from edgetl.model.backbone import build_base
    from edgetl.model.bn import calibrate_random_bn
    from edgetl.model.graph import build_head
    from edgetl.model.tfenv import set_seed

    set_seed(seed)
    px = images if images is not None else np.random.default_rng(seed).integers(0, 256, (24, size, size, 3),
                                                                                dtype=np.uint8)
    base = build_base(0.35, size, None)
    calibrate_random_bn(base, px, preprocessing_spec(size), seed=seed)
    base.trainable = False
    return base, build_head(int(base.output_shape[-1]), n_classes, seed=seed), px


def tiny_model(n_classes: int = 2, size: int = 32, seed: int = 0, images: np.ndarray | None = None):
    """A flat base + head Keras model (tiny_parts assembled). Returns (model, pixels used for BN)."""
    from edgetl.model.graph import assemble

    base, head, px = tiny_parts(n_classes, size, seed, images)
    return assemble(base, head), px

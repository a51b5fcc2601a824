"""Shared fixtures: tiny generated image folders (unit) and the ../shared assets (integration)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", REPO.parent / "shared"))
HYMENOPTERA = SHARED / "data" / "hymenoptera"
WEIGHTS_DIR = SHARED / "weights"


def shared_or_skip():
    if not HYMENOPTERA.is_dir() or not WEIGHTS_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared assets at {SHARED}")
        pytest.skip(f"shared assets not found at {SHARED}")


@pytest.fixture
def shared_data() -> Path:
    shared_or_skip()
    return HYMENOPTERA


@pytest.fixture
def shared_weights(monkeypatch) -> Path:
    shared_or_skip()
    monkeypatch.setenv("EDGETL_WEIGHTS_DIR", str(WEIGHTS_DIR))
    return WEIGHTS_DIR


def make_image_folder(root: Path, classes=("cats", "dogs"), per_class=6, size=48, split=True, seed=0) -> Path:
    """A small, learnable image folder: each class has its own dominant colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
    parts = [("train", per_class), ("val", max(2, per_class // 2))] if split else [("", per_class)]
    for part, n in parts:
        for ci, c in enumerate(classes):
            d = root / part / c if part else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(colours[ci % len(colours)], dtype=np.float64)
                arr = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"img_{i}.jpg", quality=90)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")

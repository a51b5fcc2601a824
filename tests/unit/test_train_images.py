"""Train's image work without TensorFlow: seeded augmented views, the synthetic domain shifts that check
--adapt-bn, and the source run's training images read back as the reference for relative AdaBN."""

from __future__ import annotations

import numpy as np
import pytest

import factory
from edgetl.core.errors import EdgetlError
from edgetl.core.images import augment_views, feature_views
from edgetl.core.rundir import Run, write_json
from edgetl.train.adapt import SHIFTS, shift_pixels, source_pixels


def test_augment_views_are_seeded_and_vary():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    a, b = augment_views(px, 1, seed=3), augment_views(px, 1, seed=3)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == px.shape
    assert not np.array_equal(a, augment_views(px, 2, seed=3))
    assert not np.array_equal(a, px)
    # view of image i depends only on (seed, i, view): chunked generation gives the same views
    assert np.array_equal(augment_views(px[2:], 1, seed=3, start=2), a[2:])
    # features are stacked train originals, val, test, then each augmented train view
    assert feature_views(2) == [("train", 0), ("val", 0), ("test", 0), ("train", 1), ("train", 2)]


def test_shift_pixels_kinds():
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for kind in SHIFTS:
        y = shift_pixels(px, kind)
        assert y.dtype == np.uint8 and y.shape == px.shape and not np.array_equal(y, px)
    assert np.abs(shift_pixels(px, "low-light").astype(int) - np.rint(px * 0.3)).max() <= 1
    g = shift_pixels(px, "grayscale")
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
    flat = np.full((1, 8, 8, 3), 77, np.uint8)
    assert np.array_equal(shift_pixels(flat, "blur"), flat)  # a blur keeps a constant image constant
    assert shift_pixels(px[0], "low-contrast").std() < px[0].std() * 0.4
    with pytest.raises(EdgetlError, match="accepted values"):
        shift_pixels(px, "sepia")


def test_blur_is_a_5x5_box_mean_inside_the_image():
    px = np.random.default_rng(1).integers(0, 256, (1, 12, 12, 3), dtype=np.uint8)
    y = shift_pixels(px, "blur")
    want = px[0, 3:8, 4:9].astype(np.float64).mean(axis=(0, 1))  # the 5x5 window centred on (5, 6)
    assert np.abs(y[0, 5, 6] - np.rint(want)).max() <= 1


def test_source_pixels_reads_the_runs_training_images(tmp_path):
    data = factory.image_folder(tmp_path / "data", per_class=3, size=40)
    files = sorted((data / "train").rglob("*.jpg"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # source_pixels reads only the run's metadata (its recorded training split), never its model
    meta = {"classes": ["cats", "dogs"], "image_size": 32, "preprocessing": factory.RUN_META["preprocessing"], "seed": 0,
            "split": {"train": [[str(p), int(p.parent.name == "dogs")] for p in files], "val": []}}
    write_json(run_dir / "edgetl.json", meta)
    px = source_pixels(Run(run_dir))
    assert px.shape == (6, 32, 32, 3) and px.dtype == np.uint8
    assert source_pixels(Run(run_dir), limit=4).shape[0] == 4
    for p in files[1:]:
        p.unlink()
    assert source_pixels(Run(run_dir)) is None  # one readable image left: no reference, plain AdaBN

"""Domain adaptation: adapt_bn re-estimates BatchNorm statistics without labels and touches nothing else;
on a shifted copy of the shared hymenoptera data (made here) it measurably recovers accuracy, directly and
through `edgetl train NEW --from RUN --adapt-bn`; bad --from values are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import make_image_folder
from edgetl.adapt import SHIFTS, adapt_bn, adapt_info, bn_layers, bn_state, estimate_bn_stats, shift_pixels
from edgetl.cli import app
from edgetl.errors import EdgetlError

QUIET = Console(stderr=True, quiet=True)


# ---- shifts (numpy only) -------------------------------------------------------------------------------
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


# ---- adapt_bn on a tiny random model (fast) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    from edgetl import backbone, data as D, train as T
    from edgetl.tfenv import set_seed

    set_seed(0)
    size = 32
    spec = D.preprocessing_spec(size)
    rng = np.random.default_rng(1)
    px = rng.integers(0, 256, (24, size, size, 3), dtype=np.uint8)
    base = backbone.build_base(0.35, size, None)
    T.calibrate_random_bn(base, px, spec)
    base.trainable = False
    model = T.assemble(base, T.build_head(int(base.output_shape[-1]), 2))
    return model, px, spec


def _snapshot(model):
    return {w.name: w.numpy().copy() for w in model.weights}


def test_adapt_bn_changes_only_bn_statistics(tiny_model):
    model, px, spec = tiny_model
    before = _snapshot(model)
    flags = [(b.trainable, b.momentum) for b in bn_layers(model)]
    shifted = shift_pixels(px, "low-light")
    out = adapt_bn(model, shifted, spec, QUIET, reference_pixels=px, batch_size=8)
    assert out is model
    after = _snapshot(model)
    stats = [n for n in before if "moving_mean" in n or "moving_variance" in n]
    assert len(stats) == 2 * len(bn_layers(model)) > 0
    changed = [n for n in stats if not np.allclose(before[n], after[n], rtol=1e-3, atol=1e-6)]
    assert len(changed) > len(stats) // 2, "BN statistics were not re-estimated"
    for n in before:  # kernels, BN gamma/beta, the head: untouched
        if n not in stats:
            assert np.array_equal(before[n], after[n]), n
    assert [(b.trainable, b.momentum) for b in bn_layers(model)] == flags
    info = adapt_info(model)
    assert info["method"] == "adabn-relative" and info["images"] == 24 and info["reference_images"] == 24
    assert info["bn_layers"] == len(bn_layers(model))
    for v in model.weights:  # restore for the other tests
        v.assign(before[v.name])


def test_adapt_bn_relative_to_the_same_domain_is_identity(tiny_model):
    model, px, spec = tiny_model
    before = bn_state(model)
    adapt_bn(model, px, spec, None, reference_pixels=px, batch_size=8)
    for (m0, v0), (m1, v1) in zip(before, bn_state(model)):
        np.testing.assert_allclose(m1, m0, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v1, v0, rtol=1e-4, atol=1e-6)


def test_estimate_bn_stats_is_exact_population_statistics(tiny_model):
    """Batches of 8 combined by the law of total variance == one batch of all 24 images (first BN layer,
    whose input does not depend on other BN layers)."""
    model, px, spec = tiny_model
    before = _snapshot(model)
    s8 = estimate_bn_stats(model, px, spec, batch_size=8)
    s24 = estimate_bn_stats(model, px, spec, batch_size=24)
    np.testing.assert_allclose(s8[0][0], s24[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s8[0][1], s24[0][1], rtol=2e-3, atol=1e-5)
    after = _snapshot(model)
    assert all(np.array_equal(before[n], after[n]) for n in before), "estimate_bn_stats changed the model"
    # and it is the plain statistic of the first BN layer's input
    from edgetl.tfenv import tf_and_keras

    _, keras = tf_and_keras()
    bn0 = bn_layers(model)[0]
    x = keras.Model(model.input, bn0.input)(spec["scale"] * px.astype(np.float32) + spec["offset"]).numpy()
    np.testing.assert_allclose(s8[0][0], x.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(s8[0][1], x.var(axis=(0, 1, 2)), rtol=1e-2, atol=1e-4)


def test_adapt_bn_bad_input(tiny_model):
    model, px, spec = tiny_model
    with pytest.raises(EdgetlError, match="at least 2"):
        adapt_bn(model, px[:1], spec)
    with pytest.raises(EdgetlError, match="expects 32x32"):
        adapt_bn(model, np.zeros((4, 40, 40, 3), np.uint8), spec)
    with pytest.raises(EdgetlError, match="reference"):
        adapt_bn(model, px, spec, reference_pixels=np.zeros((4, 40, 40, 3), np.uint8))
    from edgetl.tfenv import tf_and_keras

    _, keras = tf_and_keras()
    inp = keras.Input((32, 32, 3))
    no_bn = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inp)))
    with pytest.raises(EdgetlError, match="no BatchNormalization"):
        adapt_bn(no_bn, px, spec)


@pytest.mark.parametrize("bad", ["missing", "file", "empty-dir"])
def test_from_not_a_run_is_a_one_line_error(tmp_path, bad):
    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    target = {"missing": tmp_path / "nope", "file": tmp_path / "f.txt", "empty-dir": tmp_path / "empty"}[bad]
    if bad == "file":
        target.write_text("x")
    if bad == "empty-dir":
        target.mkdir()
    r = CliRunner().invoke(app, ["train", str(data), "--from", str(target), "--adapt-bn",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"--from {target}" in lines[0] and "error" in lines[0], r.output
    assert ("no such folder" if bad == "missing" else "not an edgetl run") in lines[0]
    assert "decode" not in r.output and not (tmp_path / "out").exists()


# ---- integration: a shifted copy of hymenoptera, starting from the session's trained run ------------------
SHIFT = "low-contrast"  # hazy / washed out: the run loses ~0.14 accuracy on it (alpha 0.35, 224 px)


@pytest.fixture(scope="module")
def shifted_hymenoptera(hymenoptera_run, tmp_path_factory):
    """A low-contrast copy of the run's own train/val images (PNG, at the run's size), same file layout."""
    from PIL import Image

    from edgetl import data as D
    from edgetl.rundir import Run

    run = Run(hymenoptera_run)
    root = tmp_path_factory.mktemp("shifted") / "hymenoptera-low-contrast"
    data_root = run.meta["split"]["data_root"]
    for part in ("train", "val"):
        for path, y in run.split_items(part):
            try:
                pixels = D.load_image(path, run.image_size)
            except D.ImageDecodeError:  # files the run skipped stay out of the copy too
                continue
            out = (root / path[len(data_root):].lstrip("/")).with_suffix(".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(shift_pixels(pixels, SHIFT)).save(out)
    return root


@pytest.mark.integration
def test_adapt_bn_recovers_accuracy_on_shifted_domain(hymenoptera_run, shifted_hymenoptera, tmp_path, shared_weights):
    out = tmp_path / "adapted"
    r = CliRunner().invoke(app, ["train", str(shifted_hymenoptera), "--from", str(hymenoptera_run), "--adapt-bn",
                                 "--out", str(out), "--epochs", "5"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "edgetl.json").read_text())
    src = json.loads((hymenoptera_run / "edgetl.json").read_text())
    source_acc = src["metrics"]["val_accuracy"]
    before = meta["from_run"]["val_accuracy_before"]
    ad = meta["adapt"]
    after = ad["val_accuracy_after"]
    assert ad["method"] == "adabn-relative" and ad["reference_images"] == src["metrics"]["n_train"]
    assert ad["val_accuracy_before"] == before and ad["images"] == meta["metrics"]["n_train"]
    # the shift hurts, and re-estimating BN statistics alone (no labels) recovers most of it
    assert before <= source_acc - 0.08, (before, source_acc)
    assert after >= before + 0.08, (before, after)
    assert after >= source_acc - 0.04, (after, source_acc)
    assert "val accuracy after --adapt-bn (no labels)" in r.output
    # the source run is never modified, and the model's weights are the source's (only BN stats moved)
    assert json.loads((hymenoptera_run / "edgetl.json").read_text()) == src


def test_source_pixels_reads_the_runs_training_images(tmp_path):
    from edgetl.adapt import source_pixels
    from edgetl.rundir import Run, write_json

    data = make_image_folder(tmp_path / "data", per_class=3, size=40)
    files = sorted((data / "train").rglob("*.jpg"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    meta = {"classes": ["cats", "dogs"], "image_size": 32, "preprocessing": {}, "seed": 0,
            "split": {"train": [[str(p), int(p.parent.name == "dogs")] for p in files], "val": []}}
    write_json(run_dir / "edgetl.json", meta)
    px = source_pixels(Run(run_dir))
    assert px.shape == (6, 32, 32, 3) and px.dtype == np.uint8
    assert source_pixels(Run(run_dir), limit=4).shape[0] == 4
    for p in files[1:]:
        p.unlink()
    assert source_pixels(Run(run_dir)) is None  # one readable image left: no reference, plain AdaBN

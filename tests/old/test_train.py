"""edgetl train: run directory contents, reproducibility, atomicity, layouts, --from, fine-tuning, hooks."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import make_image_folder
from edgetl import rundir
from edgetl.cli import app
from edgetl.errors import EdgetlError

TINY = {"weights": "random", "alpha": 0.35, "image_size": 32, "epochs": 8}
QUIET = Console(stderr=True, quiet=True)
META_KEYS = {"edgetl_version", "created", "classes", "image_size", "alpha", "preprocessing", "weights", "seed",
             "config", "split", "skipped", "history", "metrics", "timings", "versions", "qat", "qat_info",
             "from_run", "adapt", "features"}


def _train(data, out, **kw):
    from edgetl.train import TrainConfig, train

    return train(TrainConfig(data=str(data), out=str(out), **{**TINY, **kw}), console=QUIET)


def _tree_digest(d: Path) -> dict:
    return {p.name: rundir.sha256_file(p) for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "data", per_class=8, size=40)


@pytest.fixture(scope="module")
def tiny_run(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    _train(tiny_folder, out)
    return out


def test_run_directory_contents_and_metadata(tiny_run, tiny_folder):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"model.keras", "labels.txt", "edgetl.json", "training-curves.png", "confusion-matrix.png"} <= names
    assert not [n for n in names if n.startswith(".")]
    for png in ("training-curves.png", "confusion-matrix.png"):
        assert (tiny_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tiny_run / "labels.txt").read_text().split() == ["cats", "dogs"]
    meta = json.loads((tiny_run / "edgetl.json").read_text())
    assert META_KEYS <= set(meta)
    assert meta["preprocessing"]["range"] == [-1.0, 1.0] and meta["preprocessing"]["size"] == [32, 32]
    assert meta["image_size"] == 32 and meta["alpha"] == 0.35 and meta["seed"] == 0 and meta["qat"] is False
    assert meta["weights"]["source"] == "random" and meta["weights"]["bn_statistics_from_images"] == 16
    assert meta["config"]["epochs"] == 8 and meta["config"]["head"] == "linear"
    sp = meta["split"]
    assert sp["layout"] == "split" and sp["data_root"] == str(tiny_folder.resolve())
    assert len(sp["train"]) == 16 and len(sp["val"]) == 8
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _ in sp["train"] + sp["val"])
    h = meta["history"]["head"]
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(h)
    assert 1 <= len(h["loss"]) <= 8 and len(h["val_loss"]) == len(h["loss"])
    # early stopping restored the best epoch: reported accuracy is that epoch's
    best = int(np.argmin(h["val_loss"]))
    assert h["best_epoch"] == best + 1
    assert meta["metrics"]["val_accuracy"] == pytest.approx(h["val_accuracy"][best], abs=1e-6)
    cm = np.array(meta["metrics"]["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == 8
    assert np.trace(cm) / 8 == pytest.approx(meta["metrics"]["val_accuracy"])
    for phase in ("decode", "import_tensorflow", "build_model", "features", "head", "save", "total"):
        assert meta["timings"][phase] >= 0
    assert {"tensorflow", "tf-keras", "numpy", "python"} <= set(meta["versions"])


def test_saved_model_is_flat_preprocessed_input_and_reproduces_metrics(tiny_run):
    from edgetl import data as D, train as T

    model = T.load_run_model(tiny_run)
    assert not [layer for layer in model.layers if hasattr(layer, "layers")], "nested model inside the graph"
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 2)
    assert model.layers[-1].name == "head_softmax"
    run = rundir.Run(tiny_run)
    px, y, _, _ = D.load_batch(run.split_items("val"), 32)
    probs = T.predict_probs(model, px, run.preprocessing)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    acc, cm = T.evaluate(model, px, y, run.preprocessing)
    assert acc == pytest.approx(run.meta["metrics"]["val_accuracy"])
    assert cm == run.meta["metrics"]["confusion_matrix"]
    base, head = T.split_model(model)
    assert base.output_shape == (None, 1280) and head.input_shape == (None, 1280)


def test_same_seed_same_result(tiny_run, tiny_folder, tmp_path):
    from edgetl import train as T

    again = _train(tiny_folder, tmp_path / "again")
    m1 = json.loads((tiny_run / "edgetl.json").read_text())
    m2 = again.meta
    assert round(m1["metrics"]["val_accuracy"], 3) == round(m2["metrics"]["val_accuracy"], 3)
    assert np.allclose(m1["history"]["head"]["val_loss"], m2["history"]["head"]["val_loss"], atol=1e-5)
    w1 = T.load_run_model(tiny_run).layers[-1].get_weights()
    w2 = T.load_run_model(tmp_path / "again").layers[-1].get_weights()
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(w1, w2))
    other = _train(tiny_folder, tmp_path / "other", seed=1, epochs=2)
    assert other.meta["seed"] == 1
    w3 = T.load_run_model(tmp_path / "other").layers[-1].get_weights()
    assert not np.allclose(w1[0], w3[0])


def test_failure_while_writing_leaves_no_partial_run_and_keeps_the_old_one(tiny_run, tiny_folder, tmp_path,
                                                                           monkeypatch):
    import shutil

    from edgetl import report

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    before = _tree_digest(old)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report.PlotProcess, "wait", boom)  # after the model file is written
    with pytest.raises(RuntimeError, match="disk full"):
        _train(tiny_folder, tmp_path / "fresh", epochs=1)
    with pytest.raises(RuntimeError, match="disk full"):
        _train(tiny_folder, old, epochs=1, overwrite=True)
    assert not (tmp_path / "fresh").exists()
    assert _tree_digest(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no hidden partial dirs


def test_ctrl_c_through_the_cli_keeps_the_old_run(tiny_run, tiny_folder, tmp_path, monkeypatch):
    import shutil

    from edgetl import report

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    before = _tree_digest(old)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report.PlotProcess, "wait", interrupt)  # Ctrl-C while the run is being written
    r = CliRunner().invoke(app, ["train", str(tiny_folder), "--out", str(old), "--overwrite", "--weights", "random",
                                 "--alpha", "0.35", "--image-size", "32", "--epochs", "1"])
    assert r.exit_code == 130 and "interrupted" in r.output
    assert _tree_digest(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_overwrite_replaces_the_run(tiny_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(EdgetlError, match="--overwrite"):
        _train(tiny_folder, out, epochs=1)
    _train(tiny_folder, out, epochs=1, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.keras").is_file()


def test_flat_folder_is_split_by_edgetl(tmp_path):
    flat = make_image_folder(tmp_path / "flat", classes=("a", "b", "c"), per_class=8, size=32, split=False)
    res = _train(flat, tmp_path / "run", epochs=2, val_split=0.25, head="dense128")
    sp = res.meta["split"]
    assert sp["layout"] == "flat" and sp["val_split"] == 0.25
    assert len(sp["val"]) == 6 and len(sp["train"]) == 18
    assert sorted(y for _, y in sp["val"]) == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in sp["val"]} & {p for p, _ in sp["train"]}
    assert res.meta["classes"] == ["a", "b", "c"] and res.meta["model"]["head"] == "dense128"
    assert np.array(res.meta["metrics"]["confusion_matrix"]).shape == (3, 3)


def test_from_run_class_mismatch_is_a_one_line_error(tiny_run, tmp_path):
    other = make_image_folder(tmp_path / "other", classes=("apples", "pears"), per_class=4, size=32)
    r = CliRunner().invoke(app, ["train", str(other), "--out", str(tmp_path / "r"), "--from", str(tiny_run)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--from" in lines[0], r.output
    assert "'apples', 'pears'" in lines[0] and "'cats', 'dogs'" in lines[0]
    r = CliRunner().invoke(app, ["train", str(other), "--out", str(tmp_path / "r"), "--from", str(tiny_run),
                                 "--image-size", "64"])
    assert r.exit_code == 2 and "--image-size" in r.output


def test_from_run_reports_accuracy_before_then_continues(tiny_run, tiny_folder, tmp_path):
    src_meta = json.loads((tiny_run / "edgetl.json").read_text())
    res = _train(tiny_folder, tmp_path / "cont", epochs=2, weights="imagenet", alpha=None, image_size=None,
                 from_run=str(tiny_run))
    fr = res.meta["from_run"]
    assert fr["run"] == str(tiny_run.resolve()) and fr["classes"] == ["cats", "dogs"]
    # same data, same model: accuracy before any update equals the source run's val accuracy
    assert fr["val_accuracy_before"] == pytest.approx(src_meta["metrics"]["val_accuracy"])
    assert res.meta["image_size"] == 32 and res.meta["alpha"] == 0.35
    assert res.meta["weights"]["sha256"] == src_meta["weights"]["sha256"]
    assert _tree_digest(tiny_run)  # source run untouched and still readable
    assert json.loads((tiny_run / "edgetl.json").read_text()) == src_meta


def test_augment_views_are_seeded_and_vary():
    from edgetl.train import augment_views

    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    a, b = augment_views(px, 1, seed=3), augment_views(px, 1, seed=3)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == px.shape
    assert not np.array_equal(a, augment_views(px, 2, seed=3))
    assert not np.array_equal(a, px)
    # view of image i depends only on (seed, i, view): chunked generation gives the same views
    assert np.array_equal(augment_views(px[2:], 1, seed=3, start=2), a[2:])


def test_fine_tune_keeps_batchnorm_frozen_and_updates_top_layers(tiny_folder):
    from edgetl import backbone, data as D, train as T

    sp = D.scan(tiny_folder)
    spec = D.preprocessing_spec(32)
    px, y, _, _ = D.load_batch(sp.train, 32)
    vx, vy, _, _ = D.load_batch(sp.val, 32)
    base = backbone.build_base(0.35, 32, None)
    T.calibrate_random_bn(base, px, spec)
    head = T.build_head(1280, 2)
    model = T.assemble(base, head)
    bns = [layer for layer in model.layers if layer.__class__.__name__.startswith("BatchNormalization")]
    convs = [layer for layer in model.layers if layer.__class__.__name__.endswith("Conv2D")]
    bn_before = [w.copy() for layer in bns for w in layer.get_weights()]
    top_before, low_before = convs[-1].get_weights()[0].copy(), convs[0].get_weights()[0].copy()
    # validating on the training images makes "fine-tuning improved the val loss" certain, so the
    # fine-tuned weights are kept (not the pre-fine-tuning ones)
    hist = T.fine_tune(model, 6, px, y, px, y, spec, epochs=1, lr=1e-3, augment=1, seed=0, console=QUIET)
    assert hist["unfrozen_layers"] >= 1 and len(hist["loss"]) == 1 and not hist["kept_weights_before"]
    bn_after = [w for layer in bns for w in layer.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(bn_before, bn_after)), "BatchNorm changed during fine-tuning"
    assert not np.array_equal(convs[-1].get_weights()[0], top_before), "top layer not trained"
    assert np.array_equal(convs[0].get_weights()[0], low_before), "bottom layer should stay frozen"
    # head shares its layers with the assembled model: the head model sees the fine-tuned head weights
    assert np.array_equal(head.layers[-1].get_weights()[0], model.layers[-1].get_weights()[0])


def test_fine_tune_and_augment_through_train(tiny_folder, tmp_path):
    res = _train(tiny_folder, tmp_path / "ft", epochs=2, augment=1, fine_tune=4, fine_tune_epochs=1)
    m = res.meta["metrics"]
    assert m["n_train_views"] == 2 * m["n_train"]
    ft = m["fine_tune"]
    assert ft["val_accuracy_before"] == m["head"]["val_accuracy"]
    assert ft["val_accuracy_after"] == m["val_accuracy"]
    assert ft["lr"] == pytest.approx(1e-3 * 0.05)
    assert "fine_tune" in res.meta["history"] and res.meta["timings"]["fine_tune"] > 0


def test_adapt_and_qat_hooks_are_called(tiny_folder, tmp_path, monkeypatch):
    calls = {}

    def adapt_bn(model, pixels, spec, console, **kw):
        calls["adapt"] = (pixels.dtype, pixels.shape, spec["size"])
        return model

    def qat_phase(model, train_xy, val_xy, spec, cfg, console):
        calls["qat"] = (train_xy[0].dtype, len(train_xy[1]), len(val_xy[1]), cfg.qat_epochs)
        return model, {"val_acc_before": 0.5, "val_acc_after": 0.5, "epochs": cfg.qat_epochs, "seconds": 0.0}

    monkeypatch.setitem(sys.modules, "edgetl.adapt", types.SimpleNamespace(adapt_bn=adapt_bn))
    monkeypatch.setitem(sys.modules, "edgetl.qat", types.SimpleNamespace(qat_phase=qat_phase))
    res = _train(tiny_folder, tmp_path / "hooks", epochs=1, adapt_bn=True, qat=True, qat_epochs=1)
    assert calls["adapt"] == (np.uint8, (16, 32, 32, 3), [32, 32])
    assert calls["qat"] == (np.uint8, 16, 8, 1)
    assert res.meta["qat"] is True and res.meta["qat_info"]["epochs"] == 1
    assert res.meta["adapt"]["bn"] is True and "qat" in res.meta["metrics"]


# ---- the backbone's cached TFLite base (features while TensorFlow imports) ------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights file of a random alpha-0.35 MobileNetV2: stands in for ImageNet weights (it has a sha256,
    so its base is cached like theirs)."""
    from edgetl.backbone import build_base

    base = build_base(0.35, 96, None)
    path = tmp_path_factory.mktemp("weights") / "random-a0.35.h5"
    base.save_weights(str(path))
    return path


def _val_accuracy_of_saved_model(run_dir: Path) -> float:
    from edgetl import data as D, train as T

    run = rundir.Run(run_dir)
    px, y, _, _ = D.load_batch(run.split_items("val"), run.image_size)
    return T.evaluate(T.load_run_model(run_dir), px, y, run.preprocessing)[0]


def test_base_cache_is_made_once_then_used_with_the_same_result(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    from edgetl import artifact, backbone

    monkeypatch.setenv("EDGETL_CACHE_DIR", str(tmp_path / "cache"))
    kw = {"weights": str(tiny_weights), "image_size": 96}
    first = _train(tiny_folder, tmp_path / "first", **kw).meta
    feats = first["features"]
    assert feats["engine"] == "tflite" and feats["base_cache_status"] == "created"
    cached = Path(feats["base_cache"])
    assert cached.parent == tmp_path / "cache" / "bases" and cached.is_file()
    key = artifact.read_tflite_meta(cached.read_bytes())
    assert key == backbone.base_cache_key(first["weights"], 0.35, 96)  # the file says what it is
    second = _train(tiny_folder, tmp_path / "second", **kw).meta
    assert second["features"]["base_cache_status"] == "hit"
    assert second["metrics"]["val_accuracy"] == first["metrics"]["val_accuracy"]
    assert np.allclose(second["history"]["head"]["val_loss"], first["history"]["head"]["val_loss"], atol=1e-6)
    # the TensorFlow path gives the same model (features agree to ~1e-5)
    tf_path = _train(tiny_folder, tmp_path / "tf", base_cache=False, **kw).meta
    assert tf_path["features"] == {"engine": "tensorflow", "base_cache": None}
    assert tf_path["metrics"]["val_accuracy"] == first["metrics"]["val_accuracy"]
    assert np.allclose(tf_path["history"]["head"]["val_loss"], first["history"]["head"]["val_loss"], atol=1e-3)
    # the saved Keras model (TensorFlow end to end) reproduces what the run recorded from TFLite features
    assert _val_accuracy_of_saved_model(tmp_path / "second") == pytest.approx(second["metrics"]["val_accuracy"])


def test_damaged_or_foreign_cache_file_is_rebuilt(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    from edgetl import artifact, backbone

    monkeypatch.setenv("EDGETL_CACHE_DIR", str(tmp_path / "cache"))
    kw = {"weights": str(tiny_weights), "image_size": 96, "epochs": 2}
    good = _train(tiny_folder, tmp_path / "good", **kw).meta
    cached = Path(good["features"]["base_cache"])
    valid = cached.read_bytes()
    other_key = {**artifact.read_tflite_meta(valid), "weights_sha256": "0" * 64}
    mid = len(valid) // 2
    flipped = valid[:mid] + bytes([valid[mid] ^ 0x10]) + valid[mid + 1:]  # one bit in the weights: key still valid
    for bad in (b"not a flatbuffer", valid[:mid], flipped, artifact.embed_tflite(valid, other_key)):
        cached.write_bytes(bad)
        meta = _train(tiny_folder, tmp_path / "again", overwrite=True, **kw).meta
        assert meta["features"]["base_cache_status"] == "created", meta["features"]
        assert meta["metrics"]["val_accuracy"] == good["metrics"]["val_accuracy"]
        assert backbone.read_base_cache(backbone.base_cache_key(good["weights"], 0.35, 96))[0] is not None


def test_unwritable_cache_or_failing_runtime_still_trains(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    from edgetl import backbone

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    kw = {"weights": str(tiny_weights), "image_size": 96, "epochs": 2}
    meta = _train(tiny_folder, tmp_path / "ro", **kw).meta
    assert meta["features"]["engine"] == "tflite"
    assert meta["features"]["base_cache_status"].startswith("not cached:")

    def broken(*a, **k):
        raise RuntimeError("delegate refused the model")

    monkeypatch.setattr(backbone, "TFLiteBase", broken)
    meta2 = _train(tiny_folder, tmp_path / "broken", **kw).meta
    assert meta2["features"]["engine"] == "tensorflow"
    assert "delegate refused the model" in meta2["features"]["base_cache_status"]
    assert meta2["metrics"]["val_accuracy"] == meta["metrics"]["val_accuracy"]


def test_fit_head_restores_the_best_epoch():
    from edgetl import train as T

    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(64, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    y, yv = (x[:, 0] > 0).astype(np.int64), rng.integers(0, 2, 40)  # val labels are noise: val loss rises
    head = T.build_head(16, 2, dropout=0.0)
    hist = T.fit_head(head, (x, y), (xv, yv), epochs=40, lr=0.05, batch_size=8, patience=3, console=QUIET)
    assert hist["stopped_epoch"] is not None and hist["stopped_epoch"] < 40
    best = int(np.argmin(hist["val_loss"]))
    assert hist["best_epoch"] == best + 1 and hist["stopped_epoch"] == best + 1 + 3
    p = np.asarray(head(xv, training=False), np.float64)
    assert -np.mean(np.log(np.clip(p[np.arange(40), yv], 1e-7, 1))) == pytest.approx(hist["val_loss"][best], rel=1e-5)
    assert hist["loss"][-1] < hist["loss"][0]  # it did learn the training set


def test_plot_process_failure_is_one_line(tmp_path):
    from edgetl.report import PlotProcess

    ok = PlotProcess()
    ok.submit({"dir": str(tmp_path), "history": {"head": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.9]}},
               "confusion_matrix": [[3, 1], [0, 4]], "classes": ["a", "b"], "title": "t"})
    ok.wait()
    assert (tmp_path / "training-curves.png").stat().st_size > 1000
    assert (tmp_path / "confusion-matrix.png").read_bytes()[:4] == b"\x89PNG"
    bad = PlotProcess()
    bad.submit({"dir": str(tmp_path / "missing"), "history": {}, "confusion_matrix": [[1]], "classes": ["a"]})
    with pytest.raises(EdgetlError, match=r"^drawing the plots failed: .*missing") as e:
        bad.wait()
    assert "\n" not in str(e.value)


# ---- integration: shared hymenoptera data and alpha 0.35 weights ---------------------------------------
@pytest.mark.integration
def test_hymenoptera_run(hymenoptera_run):
    meta = json.loads((hymenoptera_run / "edgetl.json").read_text())
    assert meta["metrics"]["val_accuracy"] >= 0.85, meta["metrics"]["val_accuracy"]
    assert meta["weights"]["source"] == "$EDGETL_WEIGHTS_DIR" and len(meta["weights"]["sha256"]) == 64
    assert meta["metrics"]["n_train"] + meta["metrics"]["n_val"] + meta["metrics"]["n_skipped"] == 398
    # odd files in the shared data: the GIF placeholder and the name with a space are decoded (not skipped)
    train_names = {Path(p).name for p, _ in meta["split"]["train"]}
    assert {"imageNotFound.gif", "ant photos.jpg"} <= train_names
    assert meta["metrics"]["n_skipped"] == len(meta["skipped"])
    assert not {Path(s["file"]).name for s in meta["skipped"]} & {"imageNotFound.gif", "ant photos.jpg"}
    assert meta["classes"] == ["ants", "bees"] and meta["alpha"] == 0.35 and meta["image_size"] == 224

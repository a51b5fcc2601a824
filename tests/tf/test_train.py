"""`edgetl train` on tiny generated data: the run directory and its metadata, reproducibility, atomic
writes (a failure or Ctrl-C never leaves a partial run nor damages the old one), layouts, --from and
--adapt-bn, fine-tuning and augmentation, and the training loops themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import factory
from edgetl.cli import app
from edgetl.core import plots, rundir
from edgetl.core.errors import EdgetlError
from edgetl.core.images import decode_all, decoding_of
from edgetl.model.load import load_run_model

META_KEYS = {"edgetl_version", "created", "classes", "image_size", "alpha", "preprocessing", "weights", "seed",
             "config", "split", "skipped", "data_warnings", "history", "metrics", "timings", "versions", "qat",
             "qat_info", "from_run", "adapt", "features", "model"}


def _data(run: Path) -> Path:
    return Path(rundir.Run(run).meta["split"]["data_root"])


def _tree_digest(d: Path) -> dict:
    return {p.name: rundir.sha256_file(p) for p in sorted(d.iterdir())}


def _val(run: Path):
    r = rundir.Run(run)
    px, y, _, _ = decode_all(r.split_items("val"), r.image_size, decoding=decoding_of(r.preprocessing))
    return r, px, y


def test_run_directory_contents_and_metadata(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert names == {"model.keras", "labels.txt", "edgetl.json", "training-curves.png", "confusion-matrix.png"}
    for png in ("training-curves.png", "confusion-matrix.png"):
        assert (tiny_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tiny_run / "labels.txt").read_text().split() == ["cats", "dogs"]
    meta = json.loads((tiny_run / "edgetl.json").read_text())
    assert set(meta) == META_KEYS
    assert meta["preprocessing"]["range"] == [-1.0, 1.0] and meta["preprocessing"]["size"] == [32, 32]
    assert meta["image_size"] == 32 and meta["alpha"] == 0.35 and meta["seed"] == 0 and meta["qat"] is False
    assert meta["qat_info"] is None and meta["from_run"] is None and meta["adapt"] is None
    assert meta["weights"]["source"] == "random" and meta["weights"]["bn_statistics_from_images"] == 16
    assert meta["features"] == {"engine": "tensorflow", "base_cache": None}  # random weights: no cached base
    assert meta["config"]["epochs"] == 8 and meta["config"]["head"] == "linear"
    # the defaults every run records: dropout 0.5, patience 10, two cached augmented views, no fine-tuning
    c = meta["config"]
    assert (c["dropout"], c["patience"], c["augment"], c["fine_tune"], c["test"]) == (0.5, 10, 2, "off", None)
    assert c["head_start"] == "zeros"
    sp = meta["split"]
    assert sp["layout"] == "split" and sp["data_root"] == str(_data(tiny_run).resolve()) and sp["val_split"] is None
    assert len(sp["train"]) == 16 and len(sp["val"]) == 8 and sp["test"] == [] and sp["test_source"] is None
    assert "test_accuracy" not in meta["metrics"]  # no test split: no test score
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _ in sp["train"] + sp["val"])
    h = meta["history"]["head"]
    assert 1 <= len(h["loss"]) <= 8 and len(h["val_loss"]) == len(h["loss"]) == len(h["val_accuracy"])
    # early stopping restored the best epoch: the reported accuracy is that epoch's
    best = int(np.argmin(h["val_loss"]))
    assert h["best_epoch"] == best + 1 == meta["metrics"]["head"]["best_epoch"]
    assert meta["metrics"]["val_accuracy"] == pytest.approx(h["val_accuracy"][best], abs=1e-6)
    cm = np.array(meta["metrics"]["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == 8
    assert np.trace(cm) / 8 == pytest.approx(meta["metrics"]["val_accuracy"])
    m = meta["metrics"]
    assert (m["n_train"], m["n_val"], m["n_train_views"], m["n_skipped"]) == (16, 8, 48, 0)
    assert list(meta["timings"]) == ["validate", "weights", "import_tensorflow", "decode", "build_model",
                                     "features", "head", "save", "total"]
    assert meta["timings"]["total"] >= sum(v for k, v in meta["timings"].items() if k != "total") - 0.01
    assert meta["model"]["output"] == [None, 2] and meta["model"]["params"] > 0
    assert {"tensorflow", "tf-keras", "numpy", "python"} <= set(meta["versions"])


def test_saved_model_is_flat_preprocessed_input_and_reproduces_metrics(tiny_run):
    from edgetl.model.graph import split_model
    from edgetl.model.predict import evaluate, predict_pixels

    model = load_run_model(tiny_run)
    assert not [layer for layer in model.layers if hasattr(layer, "layers")], "nested model inside the graph"
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 2)
    assert model.layers[-1].name == "head_softmax"
    run, px, y = _val(tiny_run)
    probs = predict_pixels(model, px, run.preprocessing)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    acc, cm = evaluate(model, px, y, run.preprocessing)
    assert acc == pytest.approx(run.meta["metrics"]["val_accuracy"])
    assert cm == run.meta["metrics"]["confusion_matrix"]
    base, head = split_model(model)
    assert base.output_shape == (None, 1280) and head.input_shape == (None, 1280)
    assert model.count_params() == run.meta["model"]["params"]


def test_same_seed_same_result_and_overwrite_replaces_the_run(tiny_run, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_run, out)  # an earlier run: --overwrite replaces only a folder edgetl wrote
    (out / "stale.txt").write_text("old")
    with pytest.raises(EdgetlError, match="--overwrite"):
        factory.train_run(_data(tiny_run), out)
    again = factory.train_run(_data(tiny_run), out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.keras").is_file()
    m1 = json.loads((tiny_run / "edgetl.json").read_text())
    m2 = again.meta
    assert round(m1["metrics"]["val_accuracy"], 3) == round(m2["metrics"]["val_accuracy"], 3)
    assert m1["metrics"]["confusion_matrix"] == m2["metrics"]["confusion_matrix"]
    assert np.allclose(m1["history"]["head"]["val_loss"], m2["history"]["head"]["val_loss"], atol=1e-5)
    w1 = load_run_model(tiny_run).layers[-1].get_weights()
    w2 = load_run_model(out).layers[-1].get_weights()
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(w1, w2))


def test_another_seed_gives_another_model(tiny_run, tmp_path):
    other = factory.train_run(_data(tiny_run), tmp_path / "other", seed=1, epochs=2)
    assert other.meta["seed"] == 1 and other.meta["config"]["seed"] == 1
    w1 = load_run_model(tiny_run).layers[-1].get_weights()[0]
    assert not np.allclose(w1, load_run_model(tmp_path / "other").layers[-1].get_weights()[0])


def test_failure_while_writing_leaves_no_partial_run(tiny_run, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots.PlotProcess, "wait", boom)  # after the model file is written
    with pytest.raises(RuntimeError, match="disk full"):
        factory.train_run(_data(tiny_run), tmp_path / "fresh", epochs=1)
    assert list(tmp_path.iterdir()) == []  # neither the run nor a hidden partial folder


def test_ctrl_c_through_the_cli_keeps_the_old_run(tiny_run, tmp_path, monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    before = _tree_digest(old)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots.PlotProcess, "wait", interrupt)  # Ctrl-C while the run is being written
    r = CliRunner().invoke(app, ["train", str(_data(tiny_run)), "--out", str(old), "--overwrite", "--weights",
                                 "random", "--alpha", "0.35", "--image-size", "32", "--epochs", "1"])
    assert r.exit_code == 130 and "interrupted" in r.output
    assert _tree_digest(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_flat_folder_is_split_by_edgetl(tmp_path):
    flat = factory.image_folder(tmp_path / "flat", classes=("a", "b", "c"), per_class=8, size=32, split=False)
    res = factory.train_run(flat, tmp_path / "run", epochs=2, val_split=0.25, head="dense128")
    sp = res.meta["split"]
    assert sp["layout"] == "flat" and sp["val_split"] == 0.25
    assert len(sp["val"]) == 6 and len(sp["train"]) == 18
    assert sorted(y for _, y in sp["val"]) == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in sp["val"]} & {p for p, _ in sp["train"]}
    assert res.meta["classes"] == ["a", "b", "c"] and res.meta["model"]["head"] == "dense128"
    assert np.array(res.meta["metrics"]["confusion_matrix"]).shape == (3, 3)
    assert [layer.name for layer in load_run_model(tmp_path / "run").layers[-3:]] == [
        "head_dense128", "head_dropout2", "head_softmax"]


def test_undecodable_files_are_skipped_and_listed(tmp_path):
    data = factory.image_folder(tmp_path / "data", per_class=4, size=32)
    (data / "train" / "cats" / "broken.jpg").write_bytes(b"not an image")
    (data / "train" / "dogs" / "notes.txt").write_text("not an image suffix")
    res = factory.train_run(data, tmp_path / "run", epochs=1)
    skipped = {Path(s["file"]).name: s["reason"] for s in res.meta["skipped"]}
    assert set(skipped) == {"broken.jpg", "notes.txt"} and res.meta["metrics"]["n_skipped"] == 2
    assert "not a readable image" in skipped["broken.jpg"] and "suffix" in skipped["notes.txt"]
    assert res.meta["metrics"]["n_train"] == 8
    assert "broken.jpg" not in {Path(p).name for p, _ in res.meta["split"]["train"]}


def test_class_without_a_decodable_image_is_one_error(tmp_path):
    data = factory.image_folder(tmp_path / "data", per_class=2, size=32)
    for p in (data / "val" / "dogs").iterdir():
        p.write_bytes(b"")
    with pytest.raises(EdgetlError, match=r"^DATA .*: no decodable val images for class\(es\) \['dogs'\]"):
        factory.train_run(data, tmp_path / "run", epochs=1)
    assert not (tmp_path / "run").exists()


def test_from_run_option_errors(tiny_run, tmp_path):
    other = factory.image_folder(tmp_path / "other", classes=("apples", "pears"), per_class=4, size=32)
    r = CliRunner().invoke(app, ["train", str(other), "--out", str(tmp_path / "r"), "--from", str(tiny_run)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--from" in lines[0], r.output
    assert "'apples', 'pears'" in lines[0] and "'cats', 'dogs'" in lines[0]
    data = _data(tiny_run)
    for args, flag in ((["--image-size", "64"], "--image-size 64"), (["--alpha", "0.5"], "--alpha 0.5"),
                       (["--out", str(tiny_run), "--overwrite"], "would delete your source run")):
        r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "r"), "--from", str(tiny_run), *args])
        assert r.exit_code == 2 and flag in r.output and len(r.output.strip().splitlines()) == 1, r.output
    qat_run = tmp_path / "qat-run"
    shutil.copytree(tiny_run, qat_run)
    meta = json.loads((qat_run / "edgetl.json").read_text())
    (qat_run / "edgetl.json").write_text(json.dumps({**meta, "qat": True}))
    r = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "r"), "--from", str(qat_run)])
    assert r.exit_code == 2 and "a QAT run cannot be trained further" in r.output


def test_from_run_with_adapt_bn_reports_accuracy_before_then_continues(tiny_run, tmp_path):
    src_meta = json.loads((tiny_run / "edgetl.json").read_text())
    res = factory.train_run(_data(tiny_run), tmp_path / "cont", epochs=2, weights="imagenet", alpha=None,
                            image_size=None, from_run=str(tiny_run), adapt_bn=True)
    fr = res.meta["from_run"]
    assert fr["run"] == str(tiny_run.resolve()) and fr["classes"] == ["cats", "dogs"]
    # same data, same model: accuracy before any update equals the source run's val accuracy
    assert fr["val_accuracy_before"] == pytest.approx(src_meta["metrics"]["val_accuracy"])
    assert fr["source_val_accuracy"] == src_meta["metrics"]["val_accuracy"]
    assert res.meta["image_size"] == 32 and res.meta["alpha"] == 0.35
    assert res.meta["weights"] == src_meta["weights"]
    ad = res.meta["adapt"]
    # relative AdaBN against the source run's own (here: the same) training images
    assert ad["bn"] is True and ad["method"] == "adabn-relative" and ad["images"] == ad["reference_images"] == 16
    assert ad["val_accuracy_before"] == fr["val_accuracy_before"] and 0 <= ad["val_accuracy_after"] <= 1
    assert np.array(ad["confusion_matrix_after"]).sum() == 8
    assert res.meta["features"]["engine"] == "tensorflow"
    assert "adapt_bn" in res.meta["timings"]
    assert json.loads((tiny_run / "edgetl.json").read_text()) == src_meta  # the source run is never modified


def test_pixel_batches_cover_every_view_once_per_epoch():
    from edgetl.core.images import preprocessing_spec
    from edgetl.model.fit import pixel_batches

    px = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 8, 8, 3), np.uint8) * 40
    labels = np.arange(5)
    spec = preprocessing_spec(8)
    seq = pixel_batches(px, labels, spec, batch_size=2, seed=0, views=1)
    assert len(seq) == 5  # 10 views in batches of 2
    epoch0 = [seq[b] for b in range(len(seq))]
    ys = np.concatenate([y for _, y in epoch0])
    assert sorted(ys.tolist()) == sorted(labels.tolist() * 2)
    seq.on_epoch_end()
    assert not np.array_equal(np.concatenate([seq[b][1] for b in range(len(seq))]), ys)  # reshuffled
    plain = pixel_batches(px, labels, spec, batch_size=2, seed=0, sorted_batches=True)
    for x, y in (plain[b] for b in range(len(plain))):
        assert list(y) == sorted(y)
        assert np.allclose(x, px[y] / 127.5 - 1)  # unaugmented views are the images themselves


def test_fit_head_restores_the_best_epoch():
    from edgetl.model.fit import fit_head
    from edgetl.model.graph import build_head

    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(64, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    y, yv = (x[:, 0] > 0).astype(np.int64), rng.integers(0, 2, 40)  # val labels are noise: val loss rises
    head = build_head(16, 2, "linear", 0.0, 0, start="zeros")
    assert not np.any(head.get_weights()[0])  # the recipe's start; an untrained stand-in head is random
    assert np.any(build_head(16, 2, "linear", 0.0, 0, start="glorot").get_weights()[0])
    hist = fit_head(head, (x, y), (xv, yv), epochs=40, lr=0.05, batch_size=8, patience=3, seed=0,
                    console=factory.quiet_console())
    assert hist["stopped_epoch"] is not None and hist["stopped_epoch"] < 40
    best = int(np.argmin(hist["val_loss"]))
    assert hist["best_epoch"] == best + 1 and hist["stopped_epoch"] == best + 1 + 3
    p = np.asarray(head(xv, training=False), np.float64)
    assert -np.mean(np.log(np.clip(p[np.arange(40), yv], 1e-7, 1))) == pytest.approx(hist["val_loss"][best], rel=1e-5)
    assert hist["loss"][-1] < hist["loss"][0]  # it did learn the training set


def test_plot_process_failure_is_one_line(tmp_path):
    ok = plots.PlotProcess()
    ok.submit({"dir": str(tmp_path), "history": {"head": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.9]}},
               "confusion_matrix": [[3, 1], [0, 4]], "classes": ["a", "b"], "title": "t"})
    ok.wait()
    assert (tmp_path / "training-curves.png").stat().st_size > 1000
    assert (tmp_path / "confusion-matrix.png").read_bytes()[:4] == b"\x89PNG"
    bad = plots.PlotProcess()
    bad.submit({"dir": str(tmp_path / "missing"), "history": {}, "confusion_matrix": [[1]], "classes": ["a"]})
    with pytest.raises(EdgetlError, match=r"^drawing the plots failed: .*missing") as e:
        bad.wait()
    assert "\n" not in str(e.value)

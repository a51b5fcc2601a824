"""`edgetl compare` end to end on tiny generated images (--weights random, alpha 0.35, 32 px): two fractions,
three arms each, the scratch budget honoured exactly, the test split scored per arm, and the files and tables
of the report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import factory
from edgetl.cli import app
from edgetl.compare.config import ARMS
from edgetl.core.rundir import Run


def test_compare_end_to_end_tiny(tiny_run, tmp_path):
    data = tmp_path / "data"  # 8 + 8 training, 4 + 4 val, 3 + 3 test images
    shutil.copytree(Path(Run(tiny_run).meta["split"]["data_root"]), data)
    factory.image_folder(data / "test", per_class=3, size=40, split=False, seed=4)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, [
        "compare", str(data), "--out", str(out), "--weights", "random", "--alpha", "0.35", "--image-size", "32",
        "--fractions", "1,0.5", "--budget", "2ep,600s", "--epochs", "3", "--fine-tune", "5",
        "--fine-tune-epochs", "1", "--target", "0.5"])
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {"compare.json", "compare.csv", "learning-curve.png"}
    rep = json.loads((out / "compare.json").read_text())
    res = rep["results"]
    assert [(x["arm"], x["fraction"], x["n_train"]) for x in res] == [
        (a, f, n) for f, n in ((0.5, 8), (1.0, 16)) for a in ARMS]
    # nested, stratified subsets of the decoded training images
    s5, s10 = set(rep["subsets"]["0.5"]), set(rep["subsets"]["1"])
    assert s5 < s10 and len(s10) == 16
    assert rep["weights"]["bn_statistics_from_images"] == 16 and list(rep["timings"]) == [
        "import_tensorflow", "decode", "build_model", "features", "total"]
    assert (rep["n_test"], rep["test_source"]) == (6, "test/")
    for x in res:
        assert 0.0 <= x["val_accuracy"] <= 1.0 and x["seconds"] > 0 and x["images_seen"] > 0
        assert sum(map(sum, x["confusion_matrix"])) == 8 and sum(map(sum, x["test_confusion_matrix"])) == 6
        assert x["test_accuracy"] == np.trace(np.array(x["test_confusion_matrix"])) / 6
    by = {(x["arm"], x["fraction"]): x for x in res}
    for f, n in ((0.5, 8), (1.0, 16)):
        fe, ft, sc = by["feature-extraction", f], by["fine-tuning", f], by["from-scratch", f]
        # trainable parameters: head only < head + top layers < every layer
        assert fe["trainable_params"] < ft["trainable_params"] < sc["trainable_params"]
        assert fe["trainable_params"] == 1280 * 2 + 2  # dense softmax head on 1280 features
        # the budget: exactly 2 epochs of n images; base passes = training passes + BN statistics pass
        assert sc["stopped_by"] == "epochs" and sc["epochs"] == 2.0 and sc["images_seen"] == 2 * n
        assert sc["base_passes"] == 3 * n and sc["budget_epochs"] == 2.0
        assert sc["budget_reference_seconds"] == ft["seconds"]  # the fine-tuning arm's time at this fraction
        # the head trains on the originals and the 2 cached augmented views of each image (--augment 2)
        assert fe["images_seen"] == fe["epochs"] * 3 * n and fe["base_passes"] == 3 * n
        # fine-tuning continues from the feature-extraction model, as train does it (--fine-tune 5: the
        # block boundary 4 layers from the top), even on data train would skip it on (recorded)
        assert ft["seconds"] > fe["seconds"]
        assert ft["epochs"] == fe["epochs"] + ft["fine_tune_epochs"] == fe["epochs"] + 1
        assert ft["base_passes"] == fe["base_passes"] + n and ft["fine_tune_lr"] == 1e-4
        assert (ft["cut"], ft["unfrozen_layers"]) == ("block_16_project_BN", 4) and isinstance(ft["kept"], bool)
        assert ft["train_would_skip"].startswith(f"fine-tuning skipped: {n // 2} images/class")
        if not ft["kept"]:  # kept out: the feature-extraction model's scores
            assert (ft["val_accuracy"], ft["test_accuracy"]) == (fe["val_accuracy"], fe["test_accuracy"])
    tab = rep["table"]
    assert tab["target_accuracy"] == 0.5 and tab["fraction"] == 1.0 and set(tab["arms"]) == set(ARMS)
    assert tab["arms"]["feature-extraction"]["relative_cost"] == 1.0
    for arm, row in tab["arms"].items():
        rs = [x for x in res if x["arm"] == arm]
        first = min((x["n_train"] for x in rs if x["val_accuracy"] >= 0.5), default=None)
        assert row["images_to_target"] == first
        assert row["val_accuracy"] == by[arm, 1.0]["val_accuracy"] and row["seconds"] == by[arm, 1.0]["seconds"]
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 6 and float(rows[2]["val_accuracy"]) == by["from-scratch", 0.5]["val_accuracy"]
    from PIL import Image

    with Image.open(out / "learning-curve.png") as im:
        assert im.format == "PNG" and im.size[0] > 600
    for row in ("Data needed for val acc >= 0.50", "Training time (16 images)", "Relative compute cost (time)",
                "Accuracy (16 images)", "Test accuracy (test/: 6 images, never used to choose)",
                "Trainable parameters"):
        assert row in r.output, row
    assert f"next: edgetl train {data.resolve()} --alpha 0.35 --image-size 32 --weights random" in r.output

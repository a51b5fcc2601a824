"""Test splits and fine-tuning on tiny runs: the test split scored once at the end and labelled as test
accuracy in the summary, edgetl.json, the export manifest and bench; --test DIR; fine-tuning (model.finetune):
--fine-tune values, the skip rule, the keep rule, the frozen bottom and its producer threads."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import factory
from edgetl.core import rundir
from edgetl.core.images import decode_all, decoding_of, preprocess, preprocessing_spec, strong_augment
from edgetl.core.errors import EdgetlError
from edgetl.model import finetune
from edgetl.model.load import load_run_model
from edgetl.model.predict import evaluate

SAME_HEAD = {"epochs": 3, "augment": 0}  # every run of the tested data trains the same head from it


@pytest.fixture(scope="module")
def tested_data(tmp_path_factory):
    """train/ + val/ + Test/ (any case): 8 + 4 + 4 images per class."""
    root = tmp_path_factory.mktemp("tested") / "data"
    factory.image_folder(root, per_class=8, size=40)
    factory.image_folder(root / "Test", per_class=4, size=40, split=False, seed=3)
    return root


@pytest.fixture(scope="module")
def tested(tested_data):
    return factory.train_run(tested_data, tested_data.parent / "run", **SAME_HEAD)


def _saved_accuracy(run_path, which: str) -> float:
    run = rundir.Run(run_path)
    px, y, _, _ = decode_all(run.split_items(which), 32, decoding=decoding_of(run.preprocessing))
    return evaluate(load_run_model(run_path), px, y, run.preprocessing)[0]


def test_test_split_is_scored_once_and_recorded(tested):
    meta = tested.meta
    sp, m = meta["split"], meta["metrics"]
    assert sp["test_source"] == "Test/" and len(sp["test"]) == m["n_test"] == 8
    assert {p.split("/")[-3] for p, _ in sp["test"]} == {"Test"}
    assert (m["n_train"], m["n_val"]) == (16, 8)  # test images are neither trained nor chosen on
    cm = np.array(m["test_confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == 8 and np.trace(cm) / 8 == pytest.approx(m["test_accuracy"])
    assert _saved_accuracy(tested.path, "test") == pytest.approx(m["test_accuracy"])
    assert _saved_accuracy(tested.path, "val") == pytest.approx(m["val_accuracy"])  # val kept as it was
    assert list(meta["timings"])[-3:] == ["test", "save", "total"]


def test_summary_labels_the_test_accuracy(tested):
    from rich.console import Console

    from edgetl.train.summary import print_summary

    con = Console(record=True, width=200)
    print_summary(con, tested.path, tested.meta)
    lines = con.export_text().splitlines()
    row = next(line for line in lines if "test accuracy" in line)
    assert "(Test/, 8 images, never used to choose)" in row
    assert row.rstrip(" │|").endswith(f"{tested.meta['metrics']['test_accuracy']:.3f}")
    assert any("images train / val / test" in line and "16 / 8 / 8" in line for line in lines)


def test_export_and_bench_score_the_test_split(tested, tmp_path):
    from edgetl.bench.stage import bench

    run = tmp_path / "run"
    shutil.copytree(tested.path, run)
    man = factory.export_run(run, formats="tflite-fp32,tflite-int8")
    x_acc = tested.meta["metrics"]["test_accuracy"]
    for name in ("tflite-fp32", "tflite-int8"):
        par = man["artifacts"][name]["parity"]
        assert par["test_n"] == 8 and 0 <= par["test_accuracy"] <= 1 and par["n"] == 8  # val checks as before
    assert man["artifacts"]["tflite-fp32"]["parity"]["keras_test_accuracy"] == pytest.approx(x_acc)
    res = bench([run], formats="tflite-fp32", min_time=0.05, min_runs=3, console=factory.quiet_console())
    row = res["rows"][0]
    assert row["accuracy_split"] == "test" and row["eval_images"] == 8
    assert row["accuracy"] == pytest.approx(man["artifacts"]["tflite-fp32"]["parity"]["test_accuracy"])


def test_test_option_scores_another_folder(tmp_path):
    data = factory.image_folder(tmp_path / "data", per_class=4, size=40)
    other = factory.image_folder(tmp_path / "other", per_class=3, size=40, split=False, seed=9)
    res = factory.train_run(data, tmp_path / "run", epochs=1, augment=0, test=str(other))
    assert res.meta["split"]["test_source"] == f"--test {other}" and res.meta["metrics"]["n_test"] == 6
    assert res.meta["config"]["test"] == str(other)
    assert _saved_accuracy(res.path, "test") == pytest.approx(res.meta["metrics"]["test_accuracy"])


def test_fine_tune_values_map_to_block_boundaries(tiny_parts):
    base, _, _ = tiny_parts
    names = [layer.name for layer in base.layers]
    for cut, above in finetune.CUTS:  # the table matches the base: `above` layers of base.layers over the cut
        assert len(names) - 1 - names.index(cut) == above, cut
    assert len(names) - 1 == finetune.BASE_LAYERS
    assert finetune.fine_tune_cut("on") == ("block_12_add", 39) == finetune.DEFAULT_CUT
    assert finetune.fine_tune_cut("off") is None
    assert finetune.fine_tune_cut(20) == ("block_14_add", 21) and finetune.fine_tune_cut("40") == ("block_12_add", 39)
    for bad in ("all", 155, -3, 0, "0"):  # 0 layers: an error, not a silent off
        with pytest.raises(EdgetlError, match="--fine-tune"):
            finetune.fine_tune_cut(bad)


def test_skip_rule_and_keep_rule():
    assert finetune.too_small(np.repeat([0, 1], 99), 2, 500) == (
        "fine-tuning skipped: 99 images/class; on data this small it did not beat the frozen head")
    assert "133 val images" in finetune.too_small(np.repeat([0, 1], 100), 2, 133)
    assert finetune.too_small(np.repeat([0, 1], 100), 2, 134) is None
    head = {"correct": 50, "loss": 0.30}
    assert finetune.keeps(head, {"correct": 52, "loss": 0.29})
    assert not finetune.keeps(head, {"correct": 51, "loss": 0.10})  # one image more: within noise
    assert not finetune.keeps(head, {"correct": 60, "loss": 0.31})  # more right but a higher loss


def test_warmup_then_cosine_schedule():
    lr = finetune.warmup_cosine(1e-4, 4, 12)
    got = [float(lr(s)) for s in range(12)]
    assert got[:4] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4])
    assert all(a > b for a, b in zip(got[3:], got[4:])) and got[-1] == pytest.approx(0, abs=1e-12)


def test_train_skips_fine_tuning_on_small_data(tiny_data, tmp_path):
    res = factory.train_run(tiny_data, tmp_path / "run", epochs=1, augment=0, fine_tune="on")
    m = res.meta["metrics"]
    assert m["fine_tune"] == {"skipped": "fine-tuning skipped: 6 images/class; on data this small it did "
                                         "not beat the frozen head"}
    assert m["val_accuracy"] == m["head"]["val_accuracy"] and "fine_tune" not in res.meta["history"]


@pytest.fixture(scope="module")
def tiny_parts():
    return factory.tiny_parts()


def _weights(model, names) -> dict:
    return {n: [w.copy() for w in model.get_layer(n).get_weights()] for n in names}


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(x, y) for n in a for x, y in zip(a[n], b[n]))


@pytest.mark.parametrize("kept", [True, False])
def test_train_keeps_the_fine_tuned_top_only_when_the_rule_says_so(tested, tested_data, tmp_path, monkeypatch,
                                                                    kept):
    monkeypatch.setattr(finetune, "keeps", lambda before, best: kept)
    res = factory.train_run(tested_data, tmp_path / "ft", fine_tune="on", fine_tune_any_size=True,
                            fine_tune_epochs=2, **SAME_HEAD)
    ft, m = res.meta["metrics"]["fine_tune"], res.meta["metrics"]
    assert (ft["cut"], ft["layers"], ft["kept"], ft["bottom"]) == ("block_12_add", 39, kept, "made for this run")
    assert len(res.meta["history"]["fine_tune"]["loss"]) == 2 and ft["lr"] == 1e-4
    frozen, tuned = load_run_model(tested.path), load_run_model(res.path)  # same seed, data and head
    top, low = ["block_16_project", "Conv_1", "head_softmax"], ["block_1_project", "block_12_project"]
    bns = [layer.name for layer in tuned.layers if "BatchNormalization" in type(layer).__name__]
    assert _same(_weights(frozen, low + bns), _weights(tuned, low + bns))  # bottom and BatchNorm untouched
    assert _same(_weights(frozen, top), _weights(tuned, top)) is not kept  # top changed only when kept
    assert m["val_accuracy"] == (ft["val_accuracy_after"] if kept else m["head"]["val_accuracy"])
    assert _saved_accuracy(res.path, "val") == pytest.approx(m["val_accuracy"])
    assert _saved_accuracy(res.path, "test") == pytest.approx(m["test_accuracy"])


def test_producer_batches_do_not_depend_on_threads(tiny_parts):
    base, head, px = tiny_parts
    spec = preprocessing_spec(32)
    y = np.arange(len(px)) % 2
    order = np.random.default_rng(0).permutation(len(px))
    runs = []
    for workers in (1, 2):
        tuner = finetune.TopTuner(base, head, "block_12_add", spec, workers)
        assert tuner.bottom.make_copy(None, preprocess(px[:4], spec)) == "made for this run"
        runs.append(list(tuner._epoch_batches(px, y, order, 5, seed=1, epoch=2)))
    assert [len(yb) for _, yb in runs[0]] == [5] * 4 + [4]
    for (h1, y1), (h2, y2) in zip(*runs):
        assert np.array_equal(y1, y2) and np.array_equal(h1, h2)
    # each batch: fresh strong views of its images (seeded by image and epoch) through the bottom
    want = [strong_augment(px[i], np.random.default_rng([1, int(i), 7, 2])) for i in order[:5]]
    keras_bottom = np.asarray(tuner.bottom.model(preprocess(np.stack(want), spec), training=False))
    assert np.allclose(runs[0][0][0], keras_bottom, atol=1e-3 * max(1.0, np.abs(keras_bottom).max()))
    assert np.array_equal(runs[0][0][1], y[order[:5]])

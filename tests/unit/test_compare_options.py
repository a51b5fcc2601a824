"""`edgetl compare` without TensorFlow: fractions and budget parsing, nested stratified subsets, bad input
through the CLI (one line, exit 2, before any work), and the summary table."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import factory
from edgetl.cli import app
from edgetl.compare.config import (check_fractions, nested_subsets, parse_budget, parse_fractions,
                                   per_class_take)
from edgetl.compare.report import summary_table
from edgetl.core.errors import EdgetlError


def test_parse_fractions_sorted_unique_and_bounded():
    assert parse_fractions("1.0, 0.1,0.25,0.1") == [0.1, 0.25, 1.0]
    assert parse_fractions("1") == [1.0]
    for bad, word in (("0", "outside (0, 1]"), ("0.5,1.5", "outside (0, 1]"), ("-0.1", "outside (0, 1]"),
                      ("a,0.5", "not a number"), ("", "at least one"), ("nan", "outside")):
        with pytest.raises(EdgetlError, match="--fractions") as e:
            parse_fractions(bad)
        assert word in str(e.value)


def test_parse_budget_units_and_limits():
    b = parse_budget("30ep,300s")
    assert (b.epochs, b.seconds, b.times) == (30.0, 300.0, None)
    assert b.seconds_for(1000.0) == 300.0
    b = parse_budget("4x")
    assert b.times == 4.0 and b.seconds_for(12.5) == 50.0 and b.epochs is None
    assert parse_budget("2m").seconds == 120.0
    assert parse_budget("3x,100s").seconds_for(50.0) == 100.0  # first limit reached wins
    assert parse_budget("3x,100s").seconds_for(20.0) == 60.0
    assert parse_budget("10ep").seconds_for(5.0) is None
    assert parse_budget("30ep,300s").as_dict() == {"spec": "30ep,300s", "times_transfer": None, "seconds": 300.0,
                                                   "epochs": 30.0}
    for bad in ("0s", "0x", "-3x", "0ep", "0.0m", "fast", "", "4y"):
        with pytest.raises(EdgetlError, match="--budget"):
            parse_budget(bad)


def test_nested_stratified_subsets():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 5)
    subs = nested_subsets(labels, 3, [0.2, 0.5, 1.0], seed=3)
    assert [np.bincount(labels[subs[f]], minlength=3).tolist() for f in (0.2, 0.5, 1.0)] == \
        [[6, 2, 1], [15, 5, 3], [30, 10, 5]]
    assert set(subs[0.2]) < set(subs[0.5]) < set(subs[1.0])  # nested
    assert np.array_equal(subs[1.0], np.arange(45))
    again = nested_subsets(labels, 3, [0.2, 0.5, 1.0], seed=3)
    assert all(np.array_equal(subs[f], again[f]) for f in subs)  # seeded
    other = nested_subsets(labels, 3, [0.2], seed=4)
    assert not np.array_equal(subs[0.2], other[0.2])


def test_fraction_must_leave_one_image_per_class():
    assert per_class_take(10, 0.05) == 1 and per_class_take(10, 0.04) == 0 and per_class_take(7, 1.0) == 7
    check_fractions([0.05, 1.0], [10, 20], ["a", "b"], "0.05,1")
    with pytest.raises(EdgetlError, match=r"--fractions 0.04.*class 'a' \(10 images\).*>= 0.05"):
        check_fractions([0.04], [10, 200], ["a", "b"], "0.04")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return factory.image_folder(tmp_path_factory.mktemp("compare-options") / "data", per_class=6, size=32)


@pytest.mark.parametrize("args, flag", [
    (["--fractions", "0,0.5"], "--fractions"),
    (["--fractions", "0.5,1.5"], "--fractions"),
    (["--fractions", "0.05,1"], "--fractions"),  # 6 images per class: 0.05 leaves none
    (["--fractions", "half"], "--fractions"),
    (["--budget", "0s"], "--budget"),
    (["--budget", "-2x"], "--budget"),
    (["--budget", "0ep"], "--budget"),
    (["--budget", "lots"], "--budget"),
    (["--target", "1.5"], "--target"),
    (["--scratch-lr", "2"], "--scratch-lr"),
    (["--alpha", "0.3"], "--alpha"),
    (["--image-size", "100"], "--image-size"),
])
def test_compare_bad_input_is_one_line_before_work(small_data, tmp_path, args, flag):
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["compare", str(small_data), "--out", str(out), "--weights", "random",
                                 "--alpha", "0.35", "--image-size", "32", *args])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "error" in lines[0], r.output
    assert "decode" not in r.output and not out.exists()


def test_compare_missing_data_and_existing_out(tmp_path, small_data):
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "no such folder" in r.output and len(r.output.strip().splitlines()) == 1
    (tmp_path / "exists").mkdir()
    r = CliRunner().invoke(app, ["compare", str(small_data), "--out", str(tmp_path / "exists"),
                                 "--weights", "random", "--alpha", "0.35", "--image-size", "32"])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_summary_table_data_needed_time_and_cost():
    def r(arm, f, n, acc, s):
        return {"arm": arm, "fraction": f, "n_train": n, "val_accuracy": acc, "seconds": s, "images_seen": n * 10,
                "base_passes": n, "trainable_params": 7}

    res = [r("feature-extraction", 0.1, 10, 0.70, 2.0), r("feature-extraction", 0.5, 50, 0.86, 3.0),
           r("feature-extraction", 1.0, 100, 0.90, 4.0),
           r("from-scratch", 0.1, 10, 0.55, 20.0), r("from-scratch", 0.5, 50, 0.81, 30.0),
           r("from-scratch", 1.0, 100, 0.80, 40.0)]
    t = summary_table(res, ["feature-extraction", "from-scratch"], 0.8)
    fe, sc = t["arms"]["feature-extraction"], t["arms"]["from-scratch"]
    assert t["fraction"] == 1.0 and t["target_accuracy"] == 0.8
    assert (fe["images_to_target"], fe["seconds_to_target"]) == (50, 3.0)
    assert (sc["images_to_target"], sc["fraction_to_target"]) == (50, 0.5)
    assert (fe["relative_cost"], sc["relative_cost"]) == (1.0, 10.0)
    assert (sc["val_accuracy"], sc["best_val_accuracy"], sc["best_at_images"]) == (0.80, 0.81, 50)
    t = summary_table(res, ["feature-extraction", "from-scratch"], 0.88)
    assert t["arms"]["feature-extraction"]["images_to_target"] == 100
    assert t["arms"]["from-scratch"]["images_to_target"] is None

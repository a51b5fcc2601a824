"""Image folders: the train/val, flat and train-only layouts, stratified seeded splits, labelled folders for
bench, file lists for predict; every bad folder is one EdgetlError naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import factory
from edgetl.core import data
from edgetl.core.errors import EdgetlError


def test_split_layout(tiny_data):
    (tiny_data / "train" / "cats" / "README.txt").write_text("not an image")
    (tiny_data / "val" / "dogs" / ".hidden.jpg").write_bytes(b"")
    s = data.scan(tiny_data)
    assert s.layout == "split" and s.classes == ["cats", "dogs"]
    assert len(s.train) == 12 and len(s.val) == 6
    assert sorted({y for _, y in s.train}) == [0, 1]
    assert all(Path(p).parent.name == s.classes[y] for p, y in s.train + s.val)
    assert {Path(p).parts[-3] for p, _ in s.train} == {"train"} and {Path(p).parts[-3] for p, _ in s.val} == {"val"}
    assert [Path(i["file"]).name for i in s.ignored] == ["README.txt"] and "suffix" in s.ignored[0]["reason"]
    assert data.scan(tiny_data, 0.5, seed=9).val == s.val  # given split: --val-split and --seed do not apply


def test_flat_split_is_stratified_and_seeded(tmp_path):
    root = factory.image_folder(tmp_path / "flat", classes=("a", "b", "c"), per_class=10, split=False)
    s1, s2, s3 = data.scan(root, 0.2, seed=1), data.scan(root, 0.2, seed=1), data.scan(root, 0.2, seed=2)
    assert s1.layout == "flat" and s1.classes == ["a", "b", "c"]
    assert s1.val == s2.val and s1.train == s2.train
    assert s1.val != s3.val
    for k in range(3):
        assert sum(1 for _, y in s1.val if y == k) == 2 and sum(1 for _, y in s1.train if y == k) == 8
    assert not set(s1.val) & set(s1.train)
    assert sum(1 for _, y in data.scan(root, 0.34).val if y == 0) == 3  # round(10 * 0.34)


def test_flat_split_keeps_one_image_on_each_side(tmp_path):
    root = factory.image_folder(tmp_path / "few", per_class=2, split=False)
    for frac in (0.01, 0.99):
        s = data.scan(root, frac)
        assert len(s.val) == 2 and len(s.train) == 2, frac


def test_train_folder_alone_is_split(tmp_path):
    factory.image_folder(tmp_path / "d" / "train", per_class=5, split=False)
    s = data.scan(tmp_path / "d", 0.4, seed=0)
    assert s.layout == "flat" and s.classes == ["cats", "dogs"]
    assert len(s.val) == 4 and len(s.train) == 6


@pytest.mark.parametrize("name", ["training", "validation", "valid"])
def test_other_split_folder_names(tiny_data, name):
    kind = "train" if name == "training" else "val"
    (tiny_data / kind).rename(tiny_data / name)
    assert data.scan(tiny_data).layout == "split"


def _no_class(root):
    root.mkdir()
    (root / "loose.jpg").write_bytes(b"x")


def _one_class(root):
    factory.image_folder(root, classes=("cats",), split=False)


def _empty_class(root):
    factory.image_folder(root, per_class=4)
    for f in (root / "val" / "dogs").iterdir():
        f.unlink()


def _one_image(root):
    factory.image_folder(root, per_class=2, split=False)
    (root / "dogs" / "img_1.jpg").unlink()


def _classes_differ(root):
    factory.image_folder(root)
    shutil.copytree(root / "val" / "dogs", root / "val" / "birds")


def _a_file(root):
    root.write_text("x")


@pytest.mark.parametrize("make,needles", [
    (None, ["no such folder"]),
    (_a_file, ["not a folder"]),
    (_no_class, ["no class sub-folders"]),
    (_one_class, ["only one class", "'cats'"]),
    (_empty_class, ["val/dogs", "has no images"]),
    (_one_image, ["dogs has 1 image", "at least 2"]),
    (_classes_differ, ["class folders differ", "birds"]),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, needles):
    root = tmp_path / "data"
    if make:
        make(root)
    with pytest.raises(EdgetlError) as e:
        data.scan(root)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.2])
def test_val_split_out_of_range(tiny_data, frac):
    with pytest.raises(EdgetlError, match="--val-split"):
        data.scan(tiny_data, frac)


def test_labelled_folder_follows_the_models_label_order(tiny_data):
    (tiny_data / "val" / "dogs" / "notes.txt").write_text("x")
    classes, items, ignored = data.labelled_folder(tiny_data / "val", ["dogs", "cats"])
    assert classes == ["dogs", "cats"]
    assert {Path(p).parent.name for p, y in items if y == 0} == {"dogs"} and len(items) == 6
    assert [Path(i["file"]).name for i in ignored] == ["notes.txt"]
    assert data.labelled_folder(tiny_data / "val")[0] == ["cats", "dogs"]
    with pytest.raises(EdgetlError, match=r"--data .*do not match the model's labels"):
        data.labelled_folder(tiny_data / "val", ["cats", "birds"])
    with pytest.raises(EdgetlError, match="--data .*no such folder"):
        data.labelled_folder(tiny_data / "nope")


def test_image_files_walks_folders_and_keeps_named_files(tiny_data, tmp_path):
    (tiny_data / "val" / "cats" / "notes.txt").write_text("x")
    named = tmp_path / "photo.unknown"
    named.write_bytes(b"x")
    files = data.iter_image_files([tiny_data / "val", named])
    assert len(files) == 7 and files[-1] == named  # a named file is taken as is, whatever its suffix
    assert files[:6] == sorted(files[:6]) and not any(f.name == "notes.txt" for f in files)
    with pytest.raises(EdgetlError, match="nope.jpg: no such file or folder"):
        data.iter_image_files([named, tmp_path / "nope.jpg"])


def test_seeded_subset():
    items = list(range(50))
    a = data.seeded_subset(items, 10, seed=1)
    assert a == data.seeded_subset(items, 10, seed=1) and a == sorted(a) and len(set(a)) == 10
    assert a != data.seeded_subset(items, 10, seed=2)
    assert data.seeded_subset(items, 80, seed=1) == items


def _with_test(root: Path, name: str = "test") -> Path:
    """tiny_data-like folder plus a test split (images of its own, another seed)."""
    factory.image_folder(root / name, per_class=3, split=False, seed=5)
    return root


def test_train_val_test_layout_scores_test_apart(tiny_data):
    s = data.scan(_with_test(tiny_data))
    assert s.layout == "split" and (len(s.train), len(s.val), len(s.test)) == (12, 6, 6)
    assert s.test_source == "test/"
    assert {Path(p).parts[-3] for p, _ in s.test} == {"test"}
    assert sorted(y for _, y in s.test) == [0, 0, 0, 1, 1, 1]
    assert data.scan(tiny_data, 0.5, seed=9).test == s.test


def test_train_test_layout_carves_val_from_train(tmp_path):
    root = tmp_path / "d"
    factory.image_folder(root / "train", per_class=10, split=False)
    s = data.scan(_with_test(root), 0.2, seed=3)
    assert s.layout == "flat" and (len(s.train), len(s.val), len(s.test)) == (16, 4, 6)
    assert {Path(p).parts[-3] for p, _ in s.train + s.val} == {"train"}  # val: 2 of each class, from train/
    assert sorted(y for _, y in s.val) == [0, 0, 1, 1]
    assert s.val != data.scan(root, 0.2, seed=4).val and s.test == data.scan(root, 0.2, seed=4).test


def test_split_folder_names_in_any_case(tiny_data):
    (tiny_data / "train").rename(tiny_data / "TRAIN")
    (tiny_data / "val").rename(tiny_data / "Validation")
    s = data.scan(_with_test(tiny_data, "Test"))
    assert s.layout == "split" and (len(s.train), len(s.val), len(s.test)) == (12, 6, 6)
    assert s.test_source == "Test/"


def test_test_option_scores_another_folder(tiny_data, tmp_path):
    other = factory.image_folder(tmp_path / "other", per_class=2, split=False, seed=7)
    s = data.scan(tiny_data, test=other)
    assert len(s.test) == 4 and s.test_source == f"--test {other}"
    with pytest.raises(EdgetlError, match="also training or val images"):
        data.scan(tiny_data, test=tiny_data / "val")
    with pytest.raises(EdgetlError, match="--test .*no such folder"):
        data.scan(tiny_data, test=tmp_path / "missing")
    with pytest.raises(EdgetlError, match="own test/ folder"):
        data.scan(_with_test(tiny_data), test=other)


def _extra_folder(root):
    factory.image_folder(root)
    shutil.copytree(root / "val", root / "holdout")


def _val_without_train(root):
    factory.image_folder(root)
    (root / "train").rename(root / "images")
    shutil.rmtree(root / "images")


def _two_val_folders(root):
    factory.image_folder(root)
    shutil.copytree(root / "val", root / "validation")


def _test_classes_differ(root):
    factory.image_folder(root)
    factory.image_folder(root / "test", classes=("cats", "birds"), split=False)


@pytest.mark.parametrize("make,needles", [
    (_extra_folder, ["holdout/ beside", "accepted layouts", "DATA/train/ + DATA/test/"]),
    (_val_without_train, ["val/ without a train/ folder", "accepted layouts"]),
    (_two_val_folders, ["both val/ and validation/", "accepted layouts"]),
    (_test_classes_differ, ["class folders differ", "birds"]),
])
def test_unknown_layouts_are_one_line_listing_the_accepted_ones(tmp_path, make, needles):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(EdgetlError) as e:
        data.scan(root)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg

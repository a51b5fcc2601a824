"""Bad and unusual input without TensorFlow: a corpus of every awkward file a user's folder can hold (each
one used, or skipped and named: never silently left out, never a traceback), unreadable folders, and bad
values and files that must be one line before any work. With models: tests/tf/test_reliability.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import factory
from edgetl.cli import app
from edgetl.core import data, images
from edgetl.core.errors import EdgetlError

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return factory.bad_corpus(tmp_path_factory.mktemp("corpus") / "data")


def one_line_error(res, *needles) -> str:
    out = res.output
    assert res.exit_code == 2 and "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    assert all(n in out for n in needles), out
    return lines[0]


# ---- the corpus ------------------------------------------------------------------------------------------
def test_every_entry_of_the_corpus_is_used_or_named(corpus):
    root, good = corpus
    split = data.scan(root, 0.3, seed=0)
    assert split.classes == ["cats", "dogs"]  # the dangling class link is no class
    items = split.train + split.val
    _, _, used, skipped = images.decode_all(items, 16)
    assert sorted(str(Path(p).relative_to(root)) for p in used) == good
    named = {Path(s["file"]).name: s["reason"] for s in [*split.ignored, *skipped]}
    assert sorted(named) == sorted(factory.BAD_REASONS)
    for name, want in factory.BAD_REASONS.items():
        assert want in named[name], (name, named[name])
    assert not any(".hidden" in p for p, _ in items)  # hidden files are not data


def test_a_symlink_loop_ends(tmp_path):
    root = factory.image_folder(tmp_path / "d", per_class=3, split=False)
    (root / "dogs" / "again").symlink_to(root / "dogs", target_is_directory=True)
    (root / "cats" / "dogs-too").symlink_to(root / "dogs", target_is_directory=True)
    ignored = []
    files = data.walk_files(root / "dogs", ignored)
    assert [f.name for f in files] == ["img_0.jpg", "img_1.jpg", "img_2.jpg"] and ignored == []
    assert len(data.walk_files(root / "cats", ignored)) == 6  # its own 3, and dogs' 3 through the link


def test_predicts_file_walk_names_what_it_cannot_use(corpus):
    root, good = corpus
    skipped = []
    files = data.iter_image_files([root / "cats"], skipped)
    assert [(Path(s["file"]).name, s["reason"]) for s in skipped] == [
        ("dangling.jpg", data.BROKEN_LINK), ("pipe.jpg", "not a regular file")]  # not readme.txt: no image
    assert {f"cats/{f.name}" for f in files} >= {g for g in good if g.startswith("cats/")}


SCAN = """
import sys
from edgetl.core import data
from edgetl.core.errors import EdgetlError
try:
    s = data.scan(sys.argv[1])
    print("ignored:", [(i["file"].rsplit("/", 1)[-1], i["reason"]) for i in s.ignored])
except EdgetlError as e:
    print("error:", e)
"""


def test_unreadable_folders_say_cannot_read(tmp_path_factory):
    """Checked by an ordinary user's process (root reads everything): a class folder it cannot read is
    an error saying so, a sub-folder it cannot read is named among the skipped files."""
    import tempfile

    python, user = factory.as_other_user(stdlib_only=True)
    top = Path(tempfile.mkdtemp(prefix="edgetl-perm-"))
    try:
        root = factory.image_folder(top / "data", per_class=3, split=False)
        (root / "dogs" / "private").mkdir()
        for p in [top, *top.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(root / "dogs" / "private", 0)
        env = {**os.environ, "PYTHONPATH": str(Path(data.__file__).parents[2])}
        r = subprocess.run([python, "-c", SCAN, str(root)], capture_output=True, text=True, env=env, **user)
        assert r.stdout.strip() == "ignored: [('private', 'folder: cannot read it (Permission denied)')]", r.stderr
        os.chmod(root / "cats", 0)
        r = subprocess.run([python, "-c", SCAN, str(root)], capture_output=True, text=True, env=env, **user)
        assert r.stdout.strip() == f"error: class folder {root / 'cats'}: cannot read it (Permission denied)", r.stderr
    finally:
        for p in [top, *top.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        import shutil

        shutil.rmtree(top)


def test_an_unreadable_class_folder_as_the_system_reports_it(tmp_path, monkeypatch):
    """The same where the test cannot switch user: the folder as os.scandir reports it."""
    root = factory.image_folder(tmp_path / "data", per_class=3, split=False)
    real = os.scandir

    def scandir(p="."):
        if Path(p) == root / "cats":
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(EdgetlError) as e:
        data.scan(root)
    assert str(e.value) == f"class folder {root / 'cats'}: cannot read it (Permission denied)"


# ---- one line before any work ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return factory.image_folder(tmp_path_factory.mktemp("small") / "data", per_class=3, size=32)


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("args, needles", [
    (["--seed", "-1"], ["--seed -1: must be an integer from 0 to 4294967295"]),
    (["--seed", str(2**32)], [f"--seed {2**32}"]),
    (["--weights", "{jpg}", "--image-size", "96"], ["not an HDF5 weights file"]),
    (["--out", "{data}", "--overwrite"], ["is DATA", "would delete your images"]),
    (["--out", "{data}/train", "--overwrite"], ["sits inside DATA"]),
    (["--out", "{mine}", "--overwrite"], ["holds 1 file (notes.txt)", "--overwrite only replaces"]),
])
def test_bad_values_and_outputs_are_one_line_before_any_work(small, tmp_path, command, args, needles):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    jpg = next((small / "train" / "cats").iterdir())
    args = [a.format(data=small, jpg=jpg, mine=mine) for a in args]
    tiny = ["--weights", "random", "--alpha", "0.35", "--image-size", "32"]
    res = runner.invoke(app, [command, str(small), "--out", str(tmp_path / "o"), *tiny, *args])
    one_line_error(res, *needles)
    assert (mine / "notes.txt").read_text() == "mine" and len(list(small.rglob("*.jpg"))) == 10


def test_an_edited_run_is_one_line(tmp_path):
    """edgetl.json that another tool or a hand edit broke: named, with what is wrong, for every command."""
    run = factory.fake_run(tmp_path / "run")
    for meta, needle in (({"image_size": "abc"}, "'image_size' is 'abc', not a size in pixels"),
                         ({"classes": "cats"}, "'classes' is not a list of class names"),
                         ({"preprocessing": [1]}, "'preprocessing' is not an object")):
        (run / "edgetl.json").write_text(json.dumps({**factory.RUN_META, **meta}))
        for cmd in (["export", str(run)], ["bench", str(run)]):
            one_line_error(runner.invoke(app, cmd), f"RUN {run}: edgetl.json {needle}; re-run `edgetl train`")
    (run / "edgetl.json").write_text(json.dumps(factory.RUN_META))
    (run / "model-fp32.tflite").write_bytes(b"x" * 64)
    (run / "manifest.json").write_text("[1, 2")
    one_line_error(runner.invoke(app, ["bench", str(run)]), "manifest.json is corrupt; re-run `edgetl export")


# ---- inputs --overwrite could reach ------------------------------------------------------------------------
TINY_ARGS = ["--weights", "random", "--alpha", "0.35", "--image-size", "32"]


def images_under(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.jpg") if p.is_file())


def test_overwrite_refuses_a_run_holding_the_test_folder(tmp_path):
    data = factory.image_folder(tmp_path / "d", per_class=3, size=32)
    run = factory.fake_run(tmp_path / "r")
    factory.image_folder(run / "testimgs", per_class=2, size=32, split=False)
    res = runner.invoke(app, ["train", str(data), "--test", str(run / "testimgs"), "--out", str(run),
                              "--overwrite", *TINY_ARGS])
    one_line_error(res, f"--out {run} contains --test {run / 'testimgs'}", "would delete your test images")
    assert images_under(run / "testimgs") == 4


def test_overwrite_refuses_a_run_a_class_folder_links_into(tmp_path):
    data = factory.image_folder(tmp_path / "d", per_class=3, size=32)
    run = factory.fake_run(tmp_path / "r")
    factory.image_folder(run / "extra", classes=("ants",), per_class=4, size=32, split=False)
    (data / "train" / "ants").symlink_to(run / "extra" / "ants", target_is_directory=True)
    (data / "val" / "ants").mkdir()
    factory.image_folder(tmp_path / "v", classes=("ants",), per_class=2, size=32, split=False)
    for p in (tmp_path / "v" / "ants").iterdir():
        p.rename(data / "val" / "ants" / p.name)
    (run / "compare.json").write_text(json.dumps({"edgetl_version": "0", "results": [], "fractions": []}))
    for command in ("train", "compare"):
        res = runner.invoke(app, [command, str(data), "--out", str(run), "--overwrite", *TINY_ARGS])
        one_line_error(res, f"--out {run} holds {data / 'train' / 'ants'}", "--overwrite would delete it")
    assert images_under(run / "extra") == 4


def test_overwrite_refuses_a_run_holding_the_weights_file(tmp_path):
    data = factory.image_folder(tmp_path / "d", per_class=3, size=32)
    run = factory.fake_run(tmp_path / "r")
    (run / "w.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    res = runner.invoke(app, ["train", str(data), "--out", str(run), "--overwrite", "--weights", str(run / "w.h5"),
                              "--alpha", "0.35", "--image-size", "96"])
    one_line_error(res, f"--out {run} contains --weights {run / 'w.h5'}", "would delete your weights file")


def test_a_new_out_inside_data_or_test_is_refused(tmp_path):
    data = factory.image_folder(tmp_path / "d", per_class=3, size=32, split=False)
    res = runner.invoke(app, ["train", str(data), "--out", str(data / "runs" / "r"), *TINY_ARGS])
    one_line_error(res, f"--out {data / 'runs' / 'r'} sits inside DATA {data}", "would be read as images")
    other = factory.image_folder(tmp_path / "t", per_class=2, size=32, split=False)
    res = runner.invoke(app, ["train", str(data), "--test", str(other), "--out", str(other / "r"), *TINY_ARGS])
    one_line_error(res, f"sits inside --test {other}")
    assert not (data / "runs").exists() and not (other / "r").exists()


def test_a_link_loop_in_a_class_folder_is_an_error_naming_both_paths(tmp_path):
    data = factory.image_folder(tmp_path / "d", classes=("ants", "bees"), per_class=3, size=32)
    loop = data / "train" / "ants" / "loop"
    loop.symlink_to("..", target_is_directory=True)
    from edgetl.core import data as datamod

    with pytest.raises(EdgetlError) as e:
        datamod.scan(data)
    assert str(e.value).startswith(f"{loop} and {data / 'train'} are the same folder") and "\n" not in str(e.value)
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "o"), *TINY_ARGS])
    one_line_error(res, f"{loop} and {data / 'train'} are the same folder")


def test_two_class_folders_at_one_place_are_an_error(tmp_path):
    from edgetl.core import data as datamod

    root = factory.image_folder(tmp_path / "d", per_class=3, size=32, split=False)
    (root / "birds").symlink_to(root / "dogs", target_is_directory=True)
    with pytest.raises(EdgetlError, match=f"{root / 'dogs'} and {root / 'birds'} are the same folder"):
        datamod.scan(root)
    (root / "birds").unlink()
    (root / "cats" / "up").symlink_to(root, target_is_directory=True)  # a link around the whole DATA
    with pytest.raises(EdgetlError, match="are the same folder"):
        datamod.scan(root)
    (root / "cats" / "up").unlink()
    (root / "cats" / "same.jpg").symlink_to(root / "dogs" / "img_0.jpg")  # one file under two labels
    with pytest.raises(EdgetlError, match=r"are the same file .* in class folders '(cats|dogs)' and '(cats|dogs)'"):
        datamod.scan(root)

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
                         ({"preprocessing": [1]}, "'preprocessing' is not an object"),
                         ({"preprocessing": {**factory.RUN_META["preprocessing"], "antialias": "false"}},
                          "'preprocessing' has 'antialias' 'false', not true or false"),
                         ({"preprocessing": {**factory.RUN_META["preprocessing"], "jpeg_draft": -1}},
                          "'preprocessing' has 'jpeg_draft' -1, not a whole number >= 0"),
                         ({"preprocessing": {"size": [32], "scale": 1, "offset": 0}},
                          "'preprocessing' has 'size' [32], not two pixel counts (height, width)")):
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


# ---- one run, one model --------------------------------------------------------------------------------------
def run_with_model(path: Path, classes=("cats", "dogs"), root: Path | None = None) -> Path:
    """A run folder whose model.keras is a zip archive (export's own check) and whose split lists images under
    class folders."""
    import zipfile

    path.mkdir(parents=True)
    root = root or Path("/data/train")
    split = {w: [[str(root / c / f"{w}_{i}.jpg"), y] for y, c in enumerate(("cats", "dogs")) for i in range(3)]
             for w in ("train", "val")}
    (path / "edgetl.json").write_text(json.dumps({**factory.RUN_META, "classes": list(classes), "split": split}))
    with zipfile.ZipFile(path / "model.keras", "w") as z:
        z.writestr("config.json", "{}")
    return path


def test_class_names_swapped_in_edgetl_json_are_one_line(tmp_path):
    ok = run_with_model(tmp_path / "ok")
    from edgetl.core.rundir import Run

    Run(ok).check_labels()
    run = run_with_model(tmp_path / "swapped", classes=("dogs", "cats"))
    one_line_error(runner.invoke(app, ["export", str(run)]),
                   f"RUN {run}: edgetl.json names label 0 'dogs', but its train images lie in cats/ folders")
    linked = run_with_model(tmp_path / "linked", classes=("ants", "bees"))  # paths that name no class: no opinion
    Run(linked).check_labels()
    # one class folder that is a link to a folder named like another class (paths are recorded resolved): no error
    one = run_with_model(tmp_path / "one", classes=("cats", "mice"))
    meta = json.loads((one / "edgetl.json").read_text())
    meta["split"]["train"] = [[p.replace("/train/dogs/", "/elsewhere/cats/"), y] for p, y in meta["split"]["train"]]
    (one / "edgetl.json").write_text(json.dumps(meta))
    Run(one).check_labels()


def test_bench_and_predict_refuse_a_file_of_another_model_or_other_labels(tmp_path):
    from edgetl.core import runtime
    from edgetl.core.rundir import sha256_file

    run = run_with_model(tmp_path / "run")
    f = run / "model-int8.tflite"
    f.write_bytes(b"x")
    own = {"classes": ["cats", "dogs"], "source": {"model_sha256": sha256_file(run / "model.keras")}}
    runtime.check_belongs(f, own)
    with pytest.raises(EdgetlError, match="made from another model.keras than the one beside it"):
        runtime.check_belongs(f, {**own, "source": {"model_sha256": "1" * 64}})
    with pytest.raises(EdgetlError, match=r"its labels \['dogs', 'cats'\] differ from the run's"):
        runtime.check_belongs(f, {**own, "classes": ["dogs", "cats"]})
    runtime.check_belongs(tmp_path / "alone.tflite", {**own, "source": {"model_sha256": "1" * 64}})  # no run beside


def bench_run(tmp_path: Path, manifest) -> Path:
    run = run_with_model(tmp_path / "run")
    (run / "model-fp32.tflite").write_bytes(b"x" * 64)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.mark.parametrize("manifest, needle", [
    ({"artifacts": {"tflite-fp32": 5}}, "not listed in manifest.json"),  # an entry that is a number
    ({"artifacts": {}}, "not listed in manifest.json"),  # a file dropped in from elsewhere
    ({"artifacts": {"tflite-fp32": {"file": "model-fp32.tflite", "status": "failed", "reason": "too slow"}}},
     "records tflite-fp32 as failed at export (too slow): this file is not the one export checked"),
])
def test_bench_names_files_the_manifest_does_not_vouch_for(tmp_path, manifest, needle):
    run = bench_run(tmp_path, manifest)
    res = runner.invoke(app, ["bench", str(run), "--min-time", "0.01", "--min-runs", "1", "--format", "tflite-fp32",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    row = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"][0]
    assert row["status"].startswith(f"error: {run / 'model-fp32.tflite'}: ") and needle in row["status"], row


# ---- outputs checked before the work -------------------------------------------------------------------------
def test_bench_checks_its_outputs_before_measuring(tmp_path, monkeypatch):
    run = bench_run(tmp_path, {"artifacts": {}})
    afile = tmp_path / "afile"
    afile.write_text("mine")
    measured = []
    monkeypatch.setattr("edgetl.bench.stage.collect_targets", lambda *a: measured.append(1))
    for args, needle in ((["--out", str(afile)], f"--out {afile}: exists and is not a folder"),
                         (["--out", str(afile / "sub")], f"--out {afile / 'sub'}: cannot write in it"),
                         (["--json", str(tmp_path)], f"--json {tmp_path}: is a folder"),
                         (["--json", str(afile / "x.json")], f"--json {afile / 'x.json'}: its folder")):
        one_line_error(runner.invoke(app, ["bench", str(run), *args]), needle)
    (run / "bench").write_text("a file where bench/ goes")
    one_line_error(runner.invoke(app, ["bench", str(run)]), f"{run / 'bench'}: exists and is not a folder")
    (run / "bench").unlink()
    import tempfile

    real = tempfile.TemporaryFile

    def read_only(*a, dir=None, **k):  # a read-only RUN, as the system reports it (root writes anywhere)
        if Path(dir) == run:
            raise OSError(30, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    one_line_error(runner.invoke(app, ["bench", str(run)]), "cannot write in it (Read-only file system); nothing "
                   "was measured")
    assert measured == [] and afile.read_text() == "mine"


@pytest.mark.parametrize("toml, needles", [
    ("threads = 2", ["threads = 2: must be a list of thread counts"]),
    ('[peak]\nfp32_gflops_per_core = "fast"', ["peak.fp32_gflops_per_core = 'fast': must be a positive number"]),
    ('name = "../../../escaped"', ["name = '../../../escaped': give letters, digits, '.', '_' or '-' (it names the "
                                   "output files; no path separators)"]),
    ('name = "a/b"\nthreads = [1, 0]\nformats = "tflite-int8"', ["name = 'a/b'", "threads = [1, 0]", "formats = "]),
])
def test_a_device_profile_is_validated_one_line_per_bad_field(tmp_path, toml, needles):
    prof = tmp_path / "board.toml"
    prof.write_text(toml + "\n")
    res = runner.invoke(app, ["bench", str(tmp_path), "--device", str(prof)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("error:") and len(lines) == len(needles), res.output
    assert all(line.lstrip("error: ").startswith(f"--device {prof}: ") for line in lines)
    assert all(n in res.output for n in needles), res.output
    assert not list(tmp_path.glob("**/escaped*")) and not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("doc, needle", [({"rows": 5}, "'rows' is not a list of bench rows"),
                                         ({"rows": [1, 2]}, "'rows' is not a list of bench rows")])
def test_compare_with_a_file_that_is_not_a_bench_json(tmp_path, doc, needle):
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps(doc))
    one_line_error(runner.invoke(app, ["bench", str(tmp_path), "--compare", str(prev)]), f"--compare {prev}: {needle}")


@pytest.mark.parametrize("argv, flag", [
    (["export", "{run}", "--max-drop", "nan"], "--max-drop nan"),
    (["export", "{run}", "--size-budget", "inf"], "--size-budget inf"),
    (["bench", "{run}", "--min-time", "nan"], "--min-time nan"),
    (["train", "{data}", "--lr", "nan"], "--lr nan"),
    (["train", "{data}", "--val-split", "nan"], "--val-split nan"),
    (["compare", "{data}", "--target", "nan"], "--target nan"),
])
def test_non_finite_float_options_are_refused(tmp_path, small, argv, flag):
    run = run_with_model(tmp_path / "run")
    one_line_error(runner.invoke(app, [a.format(run=run, data=small) for a in argv]), f"{flag}: must be a finite number")


def test_a_full_disk_is_one_line_naming_the_place(tmp_path, monkeypatch):
    import errno

    def full(*a, **k):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:  # as a library wraps it
            raise RuntimeError("save failed") from e

    monkeypatch.setattr("edgetl.bench.stage.bench", full)
    one_line_error(runner.invoke(app, ["bench", str(tmp_path), "--out", str(tmp_path / "o")]),
                   f"{tmp_path / 'o'}: No space left on device", "intact")

    def too_large(*a, **k):
        raise OSError(errno.EFBIG, "File too large", str(tmp_path / "o" / "bench.json"))

    monkeypatch.setattr("edgetl.bench.stage.bench", too_large)
    one_line_error(runner.invoke(app, ["bench", str(tmp_path)]), f"{tmp_path / 'o' / 'bench.json'}: File too large")


# ---- hygiene ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["train", "{data}", "--fine-tune", "0"], "--fine-tune 0: give 'on'"),
    (["compare", "{data}", "--budget", "1000000x"], "--budget 1000000x: 1000000x is more than the most accepted"),
    (["compare", "{data}", "--budget", "30ep,48h"], "48h"),
    (["bench", "{data}", "--threads", "999"], "thread counts must be from 1 to 256"),
])
def test_bounds(small, tmp_path, argv, needle):
    argv = [a.format(data=small) for a in argv] + (["--out", str(tmp_path / "o"), *TINY_ARGS]
                                                    if argv[0] != "bench" else [])
    one_line_error(runner.invoke(app, argv), needle)


def test_more_threads_than_cores_is_a_warning(tmp_path):
    run = run_with_model(tmp_path / "run")
    res = runner.invoke(app, ["bench", str(run), "--threads", str((os.cpu_count() or 1) + 1)])
    assert f"is more than this machine's {os.cpu_count()} cores" in res.output.replace("\n", " "), res.output
    assert res.exit_code == 2 and "no exported artifacts" in res.output  # the warning, then the usual error


def test_killed_benches_leave_no_temp_folder_or_worker(tmp_path):
    import signal
    import sys
    import tempfile

    from edgetl.bench import stage

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"{stage.TEMP_PREFIX}{dead.pid}-abc"
    live = Path(tempfile.mkdtemp(prefix=f"{stage.TEMP_PREFIX}{os.getppid()}-"))
    stale.mkdir()
    try:
        assert stale.name in stage.clean_stale_temp() and not stale.exists() and live.exists()
    finally:
        live.rmdir()
    # a worker started as bench starts it dies when the bench is killed
    code = ("import subprocess, sys\nfrom edgetl.bench.worker import die_with_parent\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=die_with_parent)\n"
            "print(p.pid, flush=True)\nimport time; time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(factory.__file__).parents[1])})
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{child}/stat").read().split(")")[1].split()[0] == "Z":
            break  # a zombie: dead, waiting for init to reap it
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the worker outlived its killed bench")


def test_duplicates_across_splits_and_small_classes_are_found():
    import numpy as np

    a, b, c = (np.full((4, 4, 3), v, np.uint8) for v in (1, 2, 3))
    dups = data.duplicates_across_splits({"train": ([a, b], ["t/a.jpg", "t/b.jpg"]), "val": ([c], ["v/c.jpg"]),
                                          "test": ([b.copy(), a.copy()], ["x/other-name.jpg", "x/again.jpg"])})
    assert dups == [{"splits": "train/test", "files": ["t/b.jpg", "x/other-name.jpg"]},
                    {"splits": "train/test", "files": ["t/a.jpg", "x/again.jpg"]}]
    assert data.duplicates_across_splits({"train": ([a, a.copy()], ["1", "2"])}) == []  # within one split: no
    assert data.small_classes([0, 0, 0, 0, 0, 1], ["cats", "dogs"]) == {"dogs": 1}


def test_names_that_are_not_utf8_print(tmp_path):
    from rich.console import Console

    from edgetl.core.console import shown
    from edgetl.train.summary import print_summary

    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: a surrogate escape in Python
    assert shown(name) == "caf\\xe9.jpg"
    meta = {"skipped": [{"file": str(tmp_path / name), "reason": "not a readable image"}]}
    con = Console(file=open(os.devnull, "w", encoding="utf-8"), width=120)
    try:
        print_summary(con, tmp_path, meta)
    except (KeyError, TypeError):  # the table needs a full edgetl.json: only the skip list is exercised here
        pass
    import io

    out = io.StringIO()
    Console(file=out, width=200).print(f"  skipped {shown(meta['skipped'][0]['file'])}", highlight=False)
    assert "caf\\xe9.jpg" in out.getvalue()

"""Safety with users' data and damaged files, on real runs: the bad corpus through train and predict (every
file used or named, no traceback), damaged artifacts refused by bench and predict, run metadata that no
longer matches its model caught at export, missing validation images reported, and kills of real train
and export processes (SIGINT, SIGTERM, SIGKILL at several points: the old run intact or the new one
complete, manifest and disk agree), two exports of one run at once, native log lines off stderr."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import factory
from edgetl.cli import app
from edgetl.core import outdir, rundir
from edgetl.core.formats import FORMATS
from edgetl.core.rundir import MANIFEST_FILE, Run, sha256_file
from edgetl.export import manifest as manifest_file

runner = CliRunner()
FAST = ["--min-time", "0.05", "--min-runs", "3"]
TINY = ["--weights", "random", "--alpha", "0.35", "--image-size", "32"]


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def one_line_error(res, *needles, code: int = 2) -> str:
    out = res.output
    assert res.exit_code == code and "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and all(n in out.replace("\n", " ") for n in needles), out
    return errors[0]


def digest(run: Path) -> dict:
    return {str(p.relative_to(run)): sha256_file(p) for p in sorted(run.rglob("*")) if p.is_file()}


def manifest_true(run: Path) -> None:
    """Every ok entry's file exists with its size and sha256."""
    for name, a in json.loads((run / MANIFEST_FILE).read_text())["artifacts"].items():
        if a["status"] == "ok":
            p = run / a["file"]
            assert p.is_file() and p.stat().st_size == a["bytes"] and sha256_file(p) == a["sha256"], name


def disk_matches_manifest(run: Path) -> None:
    manifest_true(run)
    listed = {a["file"] for a in Run(run).manifest["artifacts"].values() if a["status"] == "ok"}
    present = {f.filename for f in FORMATS.values() if f.runtime != "tensorflow" and (run / f.filename).is_file()}
    assert present == listed
    assert not list(run.glob(".*.tmp"))


# ---- the bad corpus ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return factory.bad_corpus(tmp_path_factory.mktemp("corpus") / "data")


def test_train_uses_every_good_file_and_names_every_bad_one(corpus, tmp_path):
    root, good = corpus
    res = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), *TINY, "--epochs", "2"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    meta = Run(tmp_path / "run").meta
    used = [p for p, _ in meta["split"]["train"] + meta["split"]["val"]]
    # paths are recorded resolved (a symlinked sub-folder's files under their own folder)
    assert len(used) == len(good) and len(set(used)) == len(used)
    skipped = {Path(s["file"]).name: s["reason"] for s in meta["skipped"]}
    assert sorted(skipped) == sorted(factory.BAD_REASONS)
    assert all(want in skipped[name] for name, want in factory.BAD_REASONS.items()), skipped
    assert meta["metrics"]["n_skipped"] == len(factory.BAD_REASONS)


def test_predict_names_every_bad_file(corpus, tiny_exported):
    root, good = corpus
    res = runner.invoke(app, ["predict", str(tiny_exported / "model-int8.tflite"), str(root), "--json"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["images"] == len(good)
    named = {Path(s["file"]).name: s["reason"] for s in doc["skipped"]}
    want = {k: v for k, v in factory.BAD_REASONS.items() if k not in ("readme.txt", "ghosts")}  # not images
    want[".hidden.jpg"] = "not a readable image"  # files named on the command line: hidden ones too
    assert sorted(named) == sorted(want) and all(v in named[k] for k, v in want.items()), named


# ---- damaged artifacts -------------------------------------------------------------------------------------
def damage(path: Path, n: int = 200) -> None:
    """Flip n bytes in the middle of the file (inside the weights), as a bad copy or disk would."""
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    for i in range(mid, mid + n):
        b[i] ^= 0x55
    path.write_bytes(bytes(b))


@pytest.fixture(scope="module")
def damaged(tiny_exported, tmp_path_factory) -> Path:
    run = copy(tiny_exported, tmp_path_factory.mktemp("damaged") / "run")
    damage(run / "model-fp32.onnx")
    return run


def test_predict_refuses_a_damaged_file(damaged, tmp_path):
    img = next(iter(Run(damaged).split_items("val")))[0]
    f = damaged / "model-fp32.onnx"
    one_line_error(runner.invoke(app, ["predict", str(f), img]), f"{f}: differs from the sha256 in",
                   f"edgetl export {damaged} --format onnx-fp32", "--no-verify")
    assert runner.invoke(app, ["predict", str(f), img, "--no-verify"]).exit_code == 0  # the expert's override
    bare = tmp_path / "model-fp32.onnx"  # copied away from its manifest: the sealed sha256 decides
    shutil.copy(f, bare)
    one_line_error(runner.invoke(app, ["predict", str(bare), img]), "differs from the sha256 sealed in it")
    shutil.copy(damaged / "model-int8.tflite", tmp_path / "model-int8.tflite")
    assert runner.invoke(app, ["predict", str(tmp_path / "model-int8.tflite"), img]).exit_code == 0


def test_bench_refuses_a_damaged_file_and_measures_the_others(damaged, tmp_path):
    res = runner.invoke(app, ["bench", str(damaged), *FAST, "--format", "onnx-fp32,tflite-fp32",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 3 and "Traceback" not in res.output, res.output
    rows = {r["name"]: r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]}
    assert rows["tflite-fp32"]["status"] == "ok"
    assert rows["onnx-fp32"]["status"].startswith(f"error: {damaged / 'model-fp32.onnx'}: differs from the sha256")
    res = runner.invoke(app, ["bench", str(damaged), *FAST, "--format", "onnx-fp32", "--no-verify",
                              "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output


def follows_umask(folder: Path) -> None:
    """Every file and folder edgetl wrote has the mode open()/mkdir() give under this process's umask."""
    mask = rundir.umask()
    for p in [folder, *folder.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_a_run_its_artifacts_and_bench_outputs_follow_the_umask(tiny_exported, tmp_path):
    follows_umask(tiny_exported)  # run folder, edgetl.json, plots, model, manifest, every artifact
    res = runner.invoke(app, ["bench", str(tiny_exported), *FAST, "--format", "tflite-int8",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert sorted(p.suffix for p in (tmp_path / "b").iterdir()) == [".csv", ".json", ".png"]
    follows_umask(tmp_path / "b")


def test_native_log_lines_stay_off_stderr_unless_verbose(tiny_exported, tmp_path):
    """LiteRT's "Created TensorFlow Lite XNNPACK delegate" line: on stderr with --verbose only."""
    model = tiny_exported / "model-int8.tflite"
    img = next(iter(Run(tiny_exported).split_items("val")))[0]
    quiet, verbose = (factory.run_cli(["predict", str(model), img, *extra]) for extra in ([], ["--verbose"]))
    assert quiet.returncode == verbose.returncode == 0, (quiet.stderr, verbose.stderr)
    assert quiet.stderr == "" and "XNNPACK" in verbose.stderr, (quiet.stderr, verbose.stderr)
    bench = factory.run_cli(["bench", str(model), *FAST, "--out", str(tmp_path / "b")])
    assert bench.returncode == 0 and bench.stderr == "", bench.stderr


def test_every_exported_file_carries_a_valid_seal(tiny_exported, tmp_path):
    from edgetl.core import artifact

    for f in FORMATS.values():
        if f.runtime != "tensorflow":
            assert artifact.read_meta(tiny_exported / f.filename)[artifact.SEAL_KEY] != artifact.SEAL_PLACEHOLDER
            assert artifact.verify(tiny_exported / f.filename) == "manifest"
            shutil.copy(tiny_exported / f.filename, tmp_path / f.filename)  # away from its manifest
            assert artifact.verify(tmp_path / f.filename) == "embedded", f.name


def test_an_edited_preprocessing_spec_is_refused_even_unverified(tiny_exported, tmp_path):
    """A file whose embedded spec was edited (same length, so it still parses) and read with --no-verify:
    its decoding cannot be trusted, so predict stops in one line instead of decoding some other way."""
    img = next(iter(Run(tiny_exported).split_items("val")))[0]
    f = tmp_path / "model-fp32.tflite"
    b = (tiny_exported / f.name).read_bytes()
    assert b.count(b'"antialias": false') == 1
    f.write_bytes(b.replace(b'"antialias": false', b'"antialias": 0    '))
    one_line_error(runner.invoke(app, ["predict", str(f), img]), "differs from the sha256 sealed in it")
    one_line_error(runner.invoke(app, ["predict", str(f), img, "--no-verify"]),
                   f"{f}: its edgetl metadata's preprocessing has 'antialias' 0, not true or false")


# ---- run metadata against its model ------------------------------------------------------------------------
@pytest.mark.parametrize("edit, needles", [
    ({"classes": ["cats", "dogs", "birds"]}, ["edgetl.json lists 3 classes but model.keras outputs 2"]),
    ({"image_size": 64}, ["image_size 64", "model.keras takes 32x32 images"]),
    ({"preprocessing": "size64"}, ["preprocessing size [64, 64]"]),
])
def test_export_checks_the_run_against_its_model(tiny_run, tmp_path, edit, needles):
    run = copy(tiny_run, tmp_path / "run")
    meta = json.loads((run / "edgetl.json").read_text())
    if edit.get("preprocessing") == "size64":
        meta["preprocessing"]["size"] = [64, 64]
    else:
        meta.update(edit)
    (run / "edgetl.json").write_text(json.dumps(meta))
    one_line_error(runner.invoke(app, ["export", str(run), "--format", "tflite-fp32"]), *needles)
    assert not list(run.glob("*.tflite"))


def test_missing_validation_images_are_reported(tiny_run, tmp_path):
    run = copy(tiny_run, tmp_path / "run")
    meta = json.loads((run / "edgetl.json").read_text())
    gone = [tmp_path / f"gone-{i}.jpg" for i in range(2)]
    meta["split"]["val"] += [[str(g), 0] for g in gone]
    (run / "edgetl.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32"])
    assert res.exit_code == 0, res.output
    n = len(meta["split"]["val"])
    assert f"2 of {n} validation images in edgetl.json are missing on disk (gone-0.jpg, gone-1.jpg)" in \
        res.output.replace("\n", " ")
    m = Run(run).manifest
    assert m["missing_val"] == [str(g) for g in gone] and m["artifacts"]["tflite-fp32"]["parity"]["n"] == n - 2


# ---- kills of real processes -------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_trains_leave_the_old_run_or_the_new_one(tiny_run, tmp_path):
    data = Path(Run(tiny_run).meta["split"]["data_root"])
    cases = [("train-model-saved", signal.SIGINT), ("atomic-dir-complete", signal.SIGTERM),
             ("atomic-dir-swapped", signal.SIGKILL), ("atomic-dir-complete", signal.SIGKILL)]
    started = []
    for i, (point, sig) in enumerate(cases):
        run = copy(tiny_run, tmp_path / f"k{i}" / "run")
        argv = [sys.executable, "-m", "edgetl", "train", str(data), "--out", str(run), "--overwrite", *TINY,
                "--epochs", "2", "--seed", "1"]
        started.append((run, digest(run), factory.start_paused(argv, point, tmp_path / f"pause{i}"), point, sig))
    for i, (run, before, proc, point, sig) in enumerate(started):
        factory.wait_reached(proc, point, tmp_path / f"pause{i}")
        proc.send_signal(sig)
    for run, before, proc, point, sig in started:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        if sig != signal.SIGKILL:
            assert "Traceback" not in err and ("terminated" if sig == signal.SIGTERM else "interrupted") in err, err
        new = point == "atomic-dir-swapped"
        if new:  # the new run, complete
            r = Run(run)
            assert r.meta["seed"] == 1 and zipfile.is_zipfile(r.model_path) and (run / "labels.txt").is_file()
        else:
            assert digest(run) == before  # the old run, untouched
        left = sorted(p.name for p in run.parent.iterdir() if p.name != "run" and not p.name.startswith("pause"))
        assert bool(left) == (sig == signal.SIGKILL)  # Ctrl-C and SIGTERM clean up after themselves
        assert sorted(outdir.clean_leftovers(run.parent)) == left  # the next write removes them
        assert [p.name for p in run.parent.iterdir()] == ["run"]


@pytest.mark.slow
def test_killed_exports_leave_a_true_manifest(tiny_run, tiny_exported, tmp_path):
    cases = [(tiny_exported, "manifest-entry-removed", signal.SIGINT),
             (tiny_exported, "manifest-file-written", signal.SIGTERM),
             (tiny_exported, "manifest-file-written", signal.SIGKILL),
             (tiny_exported, "manifest-entry-removed", signal.SIGKILL),
             (tiny_run, "manifest-file-written", signal.SIGKILL)]  # a first export: no manifest before
    started = []
    for i, (src, point, sig) in enumerate(cases):
        run = copy(src, tmp_path / f"k{i}" / "run")
        argv = [sys.executable, "-m", "edgetl", "export", str(run), "--format", "tflite-fp32", "--size-budget", "0"]
        started.append((run, factory.start_paused(argv, point, tmp_path / f"pause{i}"), point, sig))
    for i, (run, proc, point, sig) in enumerate(started):
        factory.wait_reached(proc, point, tmp_path / f"pause{i}")
        proc.send_signal(sig)
    for i, (run, proc, point, sig) in enumerate(started):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        if sig != signal.SIGKILL:
            assert "Traceback" not in err and "nothing was left half-written" in err, err
        manifest_true(run)  # whatever the moment: every listed file is there as listed
        assert "tflite-fp32" not in Run(run).manifest["artifacts"]
        assert (run / "model-fp32.tflite").is_file()  # old or new: listed by no entry
        # the file no entry lists is whole (old or new: renamed in at once) and its seal verifies: the next
        # export gives it its entry back, names that, and leaves disk and manifest in agreement
        if i == 0:
            res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp16"])
            assert res.exit_code == 0, res.output
            assert "kept model-fp32.tflite: its sealed sha256 verifies" in res.output.replace("\n", " ")
        else:
            assert [n.split(":")[0] for n in manifest_file.begin(Run(run))] == ["kept model-fp32.tflite"]
        assert Run(run).manifest["artifacts"]["tflite-fp32"]["status"] == "ok"
        disk_matches_manifest(run)


@pytest.mark.slow
def test_two_exports_of_one_run_keep_both_records(tiny_run, tmp_path):
    """Two `edgetl export` processes on one run at once, different formats: every entry of both survives.
    One is --verbose: TensorFlow's native lines reach its stderr, never the other's."""
    run = copy(tiny_run, tmp_path / "run")
    argv = [sys.executable, "-m", "edgetl", "export", str(run), "--size-budget", "0", "--format"]

    procs = [subprocess.Popen(argv + [fmts, *extra], env=factory._env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for fmts, extra in (("tflite-fp32,tflite-fp16", []), ("onnx-fp32", ["--verbose"]))]
    (_, quiet), (_, verbose) = (p.communicate(timeout=600) for p in procs)
    assert [p.returncode for p in procs] == [0, 0], (quiet, verbose)
    assert sorted(Run(run).manifest["artifacts"]) == ["onnx-fp32", "tflite-fp16", "tflite-fp32"]
    disk_matches_manifest(run)
    assert quiet == "" and verbose.strip(), verbose  # TensorFlow's start-up lines (absl, CUDA) reach --verbose only


# ---- one run, one model; repair; limits ---------------------------------------------------------------------
def test_a_replaced_model_drops_the_old_models_files_and_calib_records_what_was_used(tiny_exported, tmp_path):
    """model.keras replaced after an export (here: the same weights in a re-written archive, so only its
    sha256 differs): the next export drops and names the 4 files of the old model, the manifest names the new
    one, and --calib records the images actually used."""
    run = copy(tiny_exported, tmp_path / "run")
    with zipfile.ZipFile(run / "model.keras", "a") as z:
        z.writestr("note.txt", "re-saved")
    res = runner.invoke(app, ["export", str(run), "--format", "tflite-fp32,tflite-int8", "--calib", "100000",
                              "--max-drop", "100", "--size-budget", "0"])
    assert res.exit_code == 0, res.output
    out = res.output.replace("\n", " ")
    for f in ("model-fp16.tflite", "model-fp32.onnx", "model-int8.onnx"):
        assert f"removed {f}: made from another model.keras" in out, out
    m = Run(run).manifest
    assert sorted(m["artifacts"]) == ["tflite-fp32", "tflite-int8"] and m["model_sha256"] == sha256_file(run / "model.keras")
    assert m["int8_source"]["calibration_images"] == len(Run(run).split_items("train"))
    disk_matches_manifest(run)
    # another run's file dropped in (same classes): bench and predict refuse it
    shutil.copy(tiny_exported / "model-fp32.onnx", run / "model-fp32.onnx")
    img = next(iter(Run(run).split_items("val")))[0]
    one_line_error(runner.invoke(app, ["predict", str(run / "model-fp32.onnx"), img]),
                   "made from another model.keras than the one beside it")


def test_a_file_without_a_valid_seal_is_named_unverified(tiny_exported, tmp_path):
    """The seal's key altered (and the weights damaged): nothing to check it against, so predict and bench
    say the file is unverified instead of using it silently."""
    bare = tmp_path / "model-int8.tflite"
    b = (tiny_exported / "model-int8.tflite").read_bytes().replace(b'"content_sha256"', b'"content_sha257"')
    bare.write_bytes(b)
    img = next(iter(Run(tiny_exported).split_items("val")))[0]
    res = runner.invoke(app, ["predict", str(bare), img])
    assert res.exit_code == 0 and f"unverified: {bare} has no valid sealed sha256" in res.output.replace("\n", " ")
    res = runner.invoke(app, ["bench", str(bare), *FAST, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0 and "unverified" in res.output, res.output
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["rows"][0]["integrity"] == "unverified"


def test_predict_prints_names_that_are_not_utf8(tiny_exported, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = next(iter(Run(tiny_exported).split_items("val")))[0]
    shutil.copy(img, folder / "good.jpg")
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"not an image")
    # a terminal wide enough for the whole path (rich shortens long table cells)
    res = runner.invoke(app, ["predict", str(tiny_exported / "model-int8.tflite"), str(folder)], env={"COLUMNS": "400"})
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "caf\\xe9.jpg" in res.output and "1 image(s) classified, 1 unreadable" in res.output
    (tmp_path / "empty").mkdir()  # nothing to classify: the error alone, no empty table before it
    one_line_error(runner.invoke(app, ["predict", str(tiny_exported / "model-int8.tflite"), str(tmp_path / "empty")]),
                   "no image files found")


def test_train_warns_about_duplicates_across_splits_and_tiny_classes(tmp_path):
    from PIL import Image

    data = factory.image_folder(tmp_path / "d", per_class=3, size=32)  # 3 training images per class: < 5
    test = factory.image_folder(tmp_path / "t", per_class=2, size=32, split=False, seed=5)
    src = data / "train" / "cats" / "img_0.jpg"
    Image.open(src).save(test / "cats" / "renamed-copy.png")  # the same pixels under another name
    res = runner.invoke(app, ["train", str(data), "--test", str(test), "--out", str(tmp_path / "run"), *TINY,
                              "--epochs", "1"])
    assert res.exit_code == 0, res.output
    out = res.output.replace("\n", " ")
    assert "1 image(s) appear in two splits with identical pixels" in out and "renamed-copy.png" in out, out
    assert "fewer than 5 training images: 'cats' (3), 'dogs' (3)" in out, out
    w = Run(tmp_path / "run").meta["data_warnings"]
    assert [d["splits"] for d in w["duplicates_across_splits"]] == ["train/test"]
    assert w["small_classes"] == {"cats": 3, "dogs": 3}


@pytest.mark.slow
def test_a_file_size_limit_during_train_is_one_line_and_keeps_the_old_run(tiny_run, tmp_path):
    import resource

    run = copy(tiny_run, tmp_path / "run")
    before = digest(run)
    data = Path(Run(tiny_run).meta["split"]["data_root"])

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "edgetl", "train", str(data), "--out", str(run), "--overwrite", *TINY,
                           "--epochs", "1"], capture_output=True, text=True, env=factory._env(), preexec_fn=limit,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "intact" in errors[0], proc.stderr[-3000:]
    assert digest(run) == before and [p.name for p in run.parent.iterdir()] == ["run"]


def test_a_file_size_limit_during_export_is_one_line_naming_the_place(tiny_exported, tmp_path):
    """A full disk or a size limit while export converts or writes is not a format's failure: one line that
    names where, exit 2, no traceback, and the files already there are intact."""
    import resource

    run = copy(tiny_exported, tmp_path / "run")
    before = digest(run)
    listed = {k: v["sha256"] for k, v in Run(run).manifest["artifacts"].items()}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "edgetl", "export", str(run), "--format", "tflite-fp32"],
                          capture_output=True, text=True, env=factory._env(), preexec_fn=limit, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "intact" in errors[0], proc.stderr[-3000:]
    after = digest(run)  # the manifest is rewritten as export starts; every file it lists is untouched
    assert {k: v for k, v in after.items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    assert {k: v["sha256"] for k, v in Run(run).manifest["artifacts"].items()} == listed

"""The command line, built from the stage configs: every command has the flags it always had, bad input is
one line naming the flag or file (exit 2; 3 for a failed check; 130 on Ctrl-C, 143 on SIGTERM), all before
TensorFlow."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import factory
from edgetl import predict
from edgetl.cli import app
from edgetl.core.config import REQUIRED, as_dict, opt
from edgetl.core.errors import ArtifactCheckError, EdgetlError

runner = CliRunner()
RECIPE = ["--alpha", "--image-size", "--weights", "--epochs", "--batch-size", "--lr", "--head", "--patience",
          "--fine-tune", "--fine-tune-epochs", "--fine-tune-lr", "--val-split", "--seed", "--overwrite", "--verbose",
          "--dropout", "--head-start", "--augment", "--max-train-views"]
FLAGS = {
    "train": ["--out", "-o", *RECIPE, "--test", "--from", "--qat", "--qat-epochs", "--qat-lr",
              "--qat-loss", "--adapt-bn", "--base-cache", "--no-base-cache"],
    "export": ["--int8", "--format", "-f", "--calib", "--max-drop", "--keep-going", "--size-budget", "--verbose"],
    "bench": ["--data", "--device", "--threads", "--json", "--out", "--compare", "--min-time", "--min-runs",
              "--format", "--emulate", "--no-verify", "--verbose", "--amx", "--remote", "--ssh-option",
              "--remote-python", "--wheelhouse", "--remote-timeout"],
    "predict": ["--top-k", "-k", "--json", "--threads", "--no-verify", "--verbose", "--amx"],
    "compare": ["--out", "-o", "--fractions", "--budget", "--target", *RECIPE, "--scratch-lr"],
    "search": ["--out", "-o", "--weights", "--epochs", "--batch-size", "--lr", "--patience", "--head-start",
               "--augment", "--val-split", "--seed", "--overwrite", "--verbose", "--test", "--device", "--max-latency-ms", "--max-size-mb",
               "--max-ram-mb", "--threads", "--trials", "--time-budget", "--alphas", "--sizes", "--formats", "--heads",
               "--workers", "--ray", "--resume", "--export-best", "--no-export-best"],
}


def _options(name: str) -> set[str]:
    cmd = typer.main.get_command(app).commands[name]
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")} - {"--help"}


def test_every_command_has_its_flags():
    assert sorted(typer.main.get_command(app).commands) == sorted(FLAGS)
    for name, flags in FLAGS.items():
        assert _options(name) == set(flags), name


@pytest.mark.parametrize("name", list(FLAGS))
def test_help_lists_the_flags(name):
    r = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    words = set(r.output.replace(",", " ").replace("/", " ").split())
    missing = [f for f in FLAGS[name] if f not in words]
    assert not missing, (missing, r.output)


def test_top_level_help_names_every_command():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for name in FLAGS:
        assert f" {name} " in r.output, name
    bare = runner.invoke(app, [], env={"COLUMNS": "200"})  # no arguments: the same help
    assert isinstance(bare.exception, SystemExit) and bare.output.strip() == r.output.strip()


def test_opt_carries_the_command_line_form():
    @dataclasses.dataclass
    class Cfg:
        path: Path = opt(REQUIRED, "A path", argument=True)
        items: list = opt([1], "Items", "--item", "-i", metavar="N")
        quiet: bool = opt(True, "Never on the command line", cli=False)

    a, b = Cfg(Path("x")), Cfg(Path("y"))
    a.items.append(2)
    assert b.items == [1]  # a list default is copied per instance
    meta = {f.name: f.metadata for f in dataclasses.fields(Cfg)}
    assert meta["path"]["argument"] and meta["items"]["flags"] == ("--item", "-i")
    assert meta["items"]["metavar"] == "N" and meta["items"]["help"] == "Items" and not meta["quiet"]["cli"]
    assert as_dict(a) == {"path": "x", "items": [1, 2], "quiet": True}


# ---- one-line errors --------------------------------------------------------------------------------------
def _one_line_error(args, *needles, code=2):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == code, (r.exit_code, r.output)
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(("error:", "interrupted")), r.output
    for n in needles:
        assert n in r.output, (n, r.output)


TRAIN_ERRORS = [
    (["--alpha", "0.4"], ["--alpha", "0.35"]),
    (["--image-size", "100"], ["--image-size", "224"]),
    (["--image-size", "40", "--weights", "random"], ["--image-size"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--val-split", "1.5"], ["--val-split"]),
    (["--head", "huge"], ["--head", "dense128"]),
    (["--weights", "missing.h5"], ["--weights", "missing.h5"]),
    (["--dropout", "1"], ["--dropout"]),
    (["--fine-tune", "500"], ["--fine-tune", "154"]),
    (["--augment", "-1"], ["--augment"]),
    (["--qat", "--qat-loss", "kd"], ["--qat-loss", "distill, labels"]),
    (["--qat", "--qat-lr", "0"], ["--qat-lr"]),
    (["--from", "norun"], ["--from", "norun"]),
]


@pytest.mark.parametrize("extra,needles", TRAIN_ERRORS, ids=[e[0][-2] for e in TRAIN_ERRORS])
def test_train_option_errors_are_one_line(tiny_data, tmp_path, extra, needles):
    _one_line_error(["train", tiny_data, "--out", tmp_path / "run", *extra], *needles)
    assert not (tmp_path / "run").exists()


def test_train_folder_errors_are_one_line_and_need_no_tensorflow(tmp_path, tiny_data):
    had_tf = "tensorflow" in sys.modules
    out = tmp_path / "run"
    _one_line_error(["train", tmp_path / "nope", "--out", out], "nope", "no such folder")
    _one_line_error(["train", "--out", out], "DATA")
    empty = factory.image_folder(tmp_path / "empty", per_class=4)
    for f in (empty / "train" / "dogs").iterdir():
        f.unlink()
    _one_line_error(["train", empty, "--out", out], str(empty / "train" / "dogs"), "no images")
    one = factory.image_folder(tmp_path / "one", classes=("cats",), split=False)
    _one_line_error(["train", one, "--out", out], "only one class")
    (tmp_path / "exists").mkdir()
    _one_line_error(["train", tiny_data, "--out", tmp_path / "exists"], "--overwrite")
    assert not out.exists()
    if not had_tf:  # checked before TensorFlow is imported
        assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("args,needles", [
    (["export", "{tmp}/nope"], ["RUN", "nope", "no such folder"]),
    (["export", "{tmp}/nope", "--format", "tflite-int4"], ["--format", "tflite-int4", "onnx-int8"]),
    (["bench", "{tmp}/nope"], ["nope"]),
    (["bench", "{tmp}/nope", "--threads", "0"], ["--threads"]),
    (["predict", "{tmp}/nope.tflite", "{tmp}"], ["nope.tflite"]),
    (["compare", "{tmp}/nope"], ["DATA", "nope"]),
    (["compare", "{tmp}", "--fractions", "2"], ["--fractions"]),
])
def test_other_commands_errors_are_one_line(tmp_path, args, needles):
    _one_line_error([a.format(tmp=tmp_path) for a in args], *needles)


@pytest.mark.parametrize("exc,code,needle", [
    (EdgetlError("--top-k 0: must be >= 1"), 2, "error: --top-k 0"),
    (ArtifactCheckError("model-int8.tflite: lost 5.0 points"), 3, "error: model-int8.tflite"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_exit_codes(monkeypatch, tmp_path, exc, code, needle):
    def stage(*args, **kwargs):
        raise exc

    monkeypatch.setattr(predict, "predict", stage)
    _one_line_error(["predict", tmp_path / "m.tflite", tmp_path], needle, code=code)


def test_a_real_process_prints_one_line_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("edgetl")
    if not exe.exists():
        pytest.skip(f"no edgetl script next to {sys.executable}")
    r = subprocess.run([str(exe), "train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "missing" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "edgetl", "predict", "--top-k", "0", str(tmp_path / "m.tflite"),
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: --top-k 0: must be >= 1", r.stderr

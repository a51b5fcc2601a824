"""Bad input: every odd file decodes correctly or is skipped and reported; every bad folder/option is a
one-line error from the CLI (no traceback) before any work."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_image_folder
from edgetl import data
from edgetl.cli import app
from edgetl.errors import EdgetlError

runner = CliRunner()
RED = (220, 30, 30)


def _solid(size=(40, 30), colour=RED):
    return Image.new("RGB", size, colour)


def make_odd_files(folder: Path) -> dict[str, str]:
    """Every kind of odd file in one folder; returns name -> 'ok' | 'skip'."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    (folder / "zero.jpg").write_bytes(b"")
    kinds["zero.jpg"] = "skip"
    buf = folder / "full.tmp"
    _solid((200, 200)).save(buf, "JPEG", quality=95)
    raw = buf.read_bytes()
    buf.unlink()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    kinds["truncated.jpg"] = "skip"
    (folder / "notes.jpg").write_text("this is not an image\n")
    kinds["notes.jpg"] = "skip"
    _solid().convert("L").save(folder / "gray.png")
    kinds["gray.png"] = "ok"
    rgba = Image.new("RGBA", (40, 30), RED + (255,))
    rgba.save(folder / "rgba.png")
    kinds["rgba.png"] = "ok"
    _solid().convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=95)
    kinds["cmyk.jpg"] = "ok"
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(folder / "deep16.png")
    kinds["deep16.png"] = "ok"
    _solid().save(folder / "anim.gif")
    kinds["anim.gif"] = "ok"
    _solid().save(folder / "with space.jpg", quality=95)
    kinds["with space.jpg"] = "ok"
    exif_rotated(folder / "exif.jpg")
    kinds["exif.jpg"] = "ok"
    return kinds


def exif_rotated(path: Path) -> None:
    """A 60x30 stored image (left half red, right half blue) tagged Orientation=6 (rotate 90 CW to view):
    viewed correctly it is 30 wide x 60 tall, red on top."""
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :30] = RED
    arr[:, 30:] = (30, 30, 220)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, "JPEG", quality=95, exif=exif.tobytes())


# ---- decoding ------------------------------------------------------------------------------------
def test_odd_files_decode_or_skip(tmp_path):
    kinds = make_odd_files(tmp_path / "odd")
    for name, want in kinds.items():
        p = tmp_path / "odd" / name
        if want == "skip":
            with pytest.raises(data.ImageDecodeError):
                data.load_image(p, 32)
        else:
            arr = data.load_image(p, 32)
            assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8, name


def test_colour_conversions_are_correct(tmp_path):
    kinds = make_odd_files(tmp_path / "odd")
    assert kinds
    d = tmp_path / "odd"
    red = np.array(RED, float)
    for name in ("rgba.png", "cmyk.jpg", "with space.jpg", "anim.gif"):
        mean = data.load_image(d / name, 16).reshape(-1, 3).mean(0)
        assert np.abs(mean - red).max() < 12, (name, mean)
    g = data.load_image(d / "gray.png", 16)
    assert np.ptp(g, axis=2).max() == 0  # grey replicated to 3 equal channels
    deep = data.load_image(d / "deep16.png", 16)
    assert abs(int(deep[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1  # 16-bit scaled, not clipped to 255


def test_rgba_transparency_composited_on_white(tmp_path):
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert data.load_image(tmp_path / "clear.png", 8).min() == 255


def test_exif_orientation_applied(tmp_path):
    exif_rotated(tmp_path / "exif.jpg")
    arr = data.load_image(tmp_path / "exif.jpg", (60, 30))  # (h, w): portrait after rotation
    top, bottom = arr[:20].reshape(-1, 3).mean(0), arr[-20:].reshape(-1, 3).mean(0)
    # Orientation 6: stored left (red) becomes top after rotating 90 degrees clockwise
    assert top[0] > 150 and top[2] < 100, top
    assert bottom[2] > 150 and bottom[0] < 100, bottom


# ---- folders -------------------------------------------------------------------------------------
def test_scan_split_layout(tiny_data):
    s = data.scan(tiny_data)
    assert s.layout == "split" and s.classes == ["cats", "dogs"]
    assert len(s.train) == 12 and len(s.val) == 6
    assert all(Path(p).is_absolute() for p, _ in s.train + s.val)


def test_scan_flat_is_stratified_and_seeded(tmp_path):
    root = make_image_folder(tmp_path / "flat", classes=("a", "b", "c"), per_class=10, split=False)
    s1, s2, s3 = data.scan(root, 0.2, seed=1), data.scan(root, 0.2, seed=1), data.scan(root, 0.2, seed=2)
    assert s1.layout == "flat"
    assert s1.val == s2.val and s1.train == s2.train
    assert s1.val != s3.val
    for k in range(3):
        assert sum(1 for _, y in s1.val if y == k) == 2 and sum(1 for _, y in s1.train if y == k) == 8
    assert not set(s1.val) & set(s1.train)


# ---- CLI: one-line errors before any work -----------------------------------------------------------
def _cli_error(args, *needles):
    r = runner.invoke(app, ["train", *map(str, args)])
    out = r.output
    assert r.exit_code == 2, (r.exit_code, out)
    assert "Traceback" not in out and r.exception is None or isinstance(r.exception, SystemExit), out
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    for n in needles:
        assert n in out, (n, out)
    return out


def test_cli_errors_are_one_line_and_need_no_tensorflow(tmp_path, tiny_data):
    had_tf = "tensorflow" in sys.modules
    out = tmp_path / "run"
    _cli_error([tmp_path / "nope", "--out", out], "nope", "no such folder")
    _cli_error(["--out", out], "DATA")
    empty = make_image_folder(tmp_path / "empty", per_class=4)
    for f in (empty / "train" / "dogs").iterdir():
        f.unlink()
    _cli_error([empty, "--out", out], str(empty / "train" / "dogs"), "no images")
    one = tmp_path / "one"
    make_image_folder(one, classes=("cats",), split=False)
    _cli_error([one, "--out", out], "only one class")
    _cli_error([tiny_data, "--out", out, "--alpha", "0.4"], "--alpha", "0.35")
    _cli_error([tiny_data, "--out", out, "--image-size", "100"], "--image-size", "224")
    _cli_error([tiny_data, "--out", out, "--image-size", "40", "--weights", "random"], "--image-size")
    _cli_error([tiny_data, "--out", out, "--epochs", "0"], "--epochs")
    _cli_error([tiny_data, "--out", out, "--val-split", "1.5"], "--val-split")
    _cli_error([tiny_data, "--out", out, "--head", "huge"], "--head", "dense128")
    _cli_error([tiny_data, "--out", out, "--weights", tmp_path / "missing.h5"], "--weights", "missing.h5")
    _cli_error([tiny_data, "--out", out, "--dropout", "1"], "--dropout")
    _cli_error([tiny_data, "--out", out, "--fine-tune", "500"], "--fine-tune", "154")
    _cli_error([tiny_data, "--out", out, "--augment", "-1"], "--augment")
    _cli_error([tiny_data, "--out", out, "--qat", "--qat-loss", "kd"], "--qat-loss", "distill, labels")
    _cli_error([tiny_data, "--out", out, "--qat", "--qat-lr", "0"], "--qat-lr")
    _cli_error([tiny_data, "--out", out, "--from", tmp_path / "norun"], "norun")
    (tmp_path / "exists").mkdir()
    _cli_error([tiny_data, "--out", tmp_path / "exists"], "--overwrite")
    assert not out.exists()
    if not had_tf:  # validation happens before TensorFlow is imported
        assert "tensorflow" not in sys.modules


@pytest.mark.skipif(not os.path.exists("/usr/bin/env"), reason="needs a shell")
def test_cli_error_in_a_real_process_has_no_traceback(tmp_path):
    import subprocess

    exe = Path(sys.executable).with_name("edgetl")
    r = subprocess.run([str(exe), "train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert "missing" in r.stderr


def test_qat_and_adapt_hooks_missing_give_clear_errors():
    from edgetl import train

    with pytest.raises(EdgetlError, match="--qat.*not available"):
        train._require_hook("no_such_qat_module", "qat_phase", "--qat")


# ---- train on a folder full of odd files: decoded or skipped, counted, named ------------------------
def test_train_reports_skipped_files(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=4, size=32)
    kinds = make_odd_files(root / "train" / "cats")
    (root / "train" / "cats" / "README.txt").write_text("not an image")
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(root), "--out", str(out), "--weights", "random", "--alpha", "0.35",
                            "--image-size", "32", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "edgetl.json").read_text())
    skipped = {Path(s["file"]).name: s["reason"] for s in meta["skipped"]}
    want_skip = {n for n, k in kinds.items() if k == "skip"} | {"README.txt"}
    assert set(skipped) == want_skip
    assert all(skipped[n] for n in skipped)
    assert meta["metrics"]["n_skipped"] == len(want_skip)
    assert meta["metrics"]["n_train"] == 8 + sum(1 for k in kinds.values() if k == "ok")
    assert "skipped files" in r.output and "zero.jpg" in r.output
    train_names = {Path(p).name for p, _ in meta["split"]["train"]}
    assert "with space.jpg" in train_names and "exif.jpg" in train_names
    assert not train_names & want_skip  # the split lists what the model was trained on
    assert len(meta["split"]["train"]) == meta["metrics"]["n_train"]


def test_quantize_rounds_like_tflite():
    """data.quantize (export parity, bench, predict): float32 division, ties away from zero, zero point
    added after rounding, saturation. MobileNetV2 pixels sit exactly on ties at scale 1/127.5."""
    from edgetl.data import MOBILENET_V2_PREPROCESSING, preprocess, quantize

    s = 0.25
    x = np.array([0.125, -0.125, 0.375, -0.375, 0.625, 100.0, -100.0], np.float32)  # ties at ±0.5, ±1.5, 2.5
    assert quantize(x, s, 0, np.int8).tolist() == [1, -1, 2, -2, 3, 127, -128]
    assert quantize(x, s, -1, np.int8).tolist() == [0, -2, 1, -3, 2, 127, -128]  # round, then add
    assert quantize(x, s, 128, np.uint8).tolist() == [129, 127, 130, 126, 131, 255, 0]
    # every uint8 pixel -> [-1, 1] -> int8 at the scale the converter picks for that range
    px = np.arange(256, dtype=np.uint8)
    q = quantize(preprocess(px, MOBILENET_V2_PREPROCESSING), 1 / 127.5, -1, np.int8).astype(int)
    # pixel values sit on ties: rounding away from zero leaves one gap at 0 and merges two values at an end
    assert q.min() == -128 and np.all(np.diff(q) >= 0) and np.diff(q).max() <= 2 and len(np.unique(q)) >= 254

"""The one factory for test inputs: generated image folders, odd and bad image files, a bad corpus (no
TensorFlow), and tiny models and runs made by edgetl's own code (TensorFlow). Tiny means MobileNetV2 alpha
0.35 at 32 px with random weights: seconds to train and export, yet a real run directory and real artifacts."""

from __future__ import annotations

import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np

CLASSES = ("cats", "dogs")
COLOURS = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
TINY = {"weights": "random", "alpha": 0.35, "image_size": 32, "epochs": 8}


def image_folder(root: Path, classes=CLASSES, per_class: int = 6, size: int = 48, split: bool = True,
                 seed: int = 0) -> Path:
    """A small, learnable image folder: each class has its own dominant colour plus noise.
    split=True: root/{train,val}/<class>/ (val gets half as many, at least 2); else root/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    parts = [("train", per_class), ("val", max(2, per_class // 2))] if split else [("", per_class)]
    for part, n in parts:
        for ci, c in enumerate(classes):
            d = root / part / c if part else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(COLOURS[ci % len(COLOURS)], dtype=np.float64)
                arr = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"img_{i}.jpg", quality=90)
    return root


RED = (220, 30, 30)
BLUE = (30, 30, 220)


def _solid(size=(40, 30), colour=RED):
    from PIL import Image

    return Image.new("RGB", size, colour)


def exif_rotated(path: Path) -> None:
    """A 60x30 stored image (left half red, right half blue) tagged Orientation=6 (rotate 90 CW to view):
    viewed correctly it is 30 wide x 60 tall, red on top."""
    from PIL import Image

    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :30] = RED
    arr[:, 30:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif.tobytes())


def bomb_png(path: Path, side: int = 30000) -> None:
    """A tiny PNG whose header claims side x side pixels: Pillow refuses it (DecompressionBombError)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def make_odd_files(folder: Path) -> dict[str, str]:
    """Every kind of odd image file in one folder; returns name -> 'ok' (decodes) | 'skip' (cannot)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    full = folder / "full.tmp"
    _solid((200, 200)).save(full, "JPEG", quality=95)
    raw = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (folder / "notes.jpg").write_text("this is not an image\n")
    bomb_png(folder / "bomb.png")
    _solid().convert("L").save(folder / "gray.png")
    Image.new("RGBA", (40, 30), RED + (255,)).save(folder / "rgba.png")
    _solid().convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=95)
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(folder / "deep16.png")
    _solid().save(folder / "anim.gif")
    _solid().save(folder / "with space.jpg", quality=95)
    _solid().save(folder / "pic.webp")
    _solid().save(folder / "pic.tiff")
    _solid().save(folder / "pic.bmp")
    _solid().save(folder / "UPPER.JPG", "JPEG")
    exif_rotated(folder / "exif.jpg")
    skip = {"zero.jpg", "truncated.jpg", "notes.jpg", "bomb.png"}
    return {p.name: "skip" if p.name in skip else "ok" for p in folder.iterdir()}


# what each bad entry of bad_corpus() must be reported as (a substring of its reason)
BAD_REASONS = {"zero.jpg": "empty file", "truncated.jpg": "truncated", "notes.jpg": "not a readable image",
               "bomb.png": "too large to decode", "dangling.jpg": "broken symlink", "readme.txt": "not an image suffix",
               "pipe.jpg": "not a regular file", "ghosts": "broken symlink"}


def bad_corpus(root: Path) -> tuple[Path, list[str]]:
    """DATA/<class>/ for two classes holding every awkward entry a user's folder can have: make_odd_files'
    decodable and undecodable images (in cats/), a dangling symlink, a text file, a FIFO, a hidden file,
    nested and symlinked sub-folders, a name with spaces and accents, and a dangling symlink where a class
    folder would be. Returns (DATA, paths under DATA of the files that must be used); BAD_REASONS names the rest."""
    root = image_folder(root, per_class=6, split=False).resolve()  # symlinks below point at absolute paths
    odd = make_odd_files(root / "cats")
    cats, dogs = root / "cats", root / "dogs"
    (cats / "dangling.jpg").symlink_to(root / "no-such-file.jpg")
    (cats / "readme.txt").write_text("notes\n")
    os.mkfifo(cats / "pipe.jpg")
    (dogs / ".hidden.jpg").write_bytes(b"not even an image")
    (dogs / "nested" / "deeper").mkdir(parents=True)
    _solid(colour=BLUE).save(dogs / "nested" / "deeper" / "été à la plage.jpg", quality=95)
    image_folder(root.parent / f"{root.name}-elsewhere", classes=("more",), per_class=2, split=False, seed=1)
    (dogs / "linked").symlink_to(root.parent / f"{root.name}-elsewhere" / "more", target_is_directory=True)
    (root / "ghosts").symlink_to(root / "no-such-folder", target_is_directory=True)
    good = [f"cats/{n}" for n, k in odd.items() if k == "ok"] + [f"{c}/img_{i}.jpg" for c in CLASSES for i in range(6)]
    good += ["dogs/nested/deeper/été à la plage.jpg", "dogs/linked/img_0.jpg", "dogs/linked/img_1.jpg"]
    return root, sorted(set(good))  # make_odd_files lists the folder: cats/img_* too


def as_other_user(stdlib_only: bool = False) -> tuple[str, dict]:
    """(python, subprocess.run keywords) for a process that permissions apply to: this Python as is for an
    ordinary user; as root (root reads and writes everything), dropped to `nobody`. When `nobody` cannot
    run this Python (e.g. it lives under /root), code that needs only the standard library runs on the
    system's python3; otherwise the test is skipped."""
    import shutil
    import sys

    import pytest

    if os.geteuid() != 0:
        return sys.executable, {}
    kw = {"user": 65534, "group": 65534, "extra_groups": []}
    for python in [sys.executable] + ([shutil.which("python3", path="/usr/bin:/usr/local/bin")] if stdlib_only else []):
        try:
            if python and subprocess.run([python, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                                         capture_output=True, timeout=60, **kw).returncode == 0:
                return python, kw
        except OSError:
            pass
    pytest.skip(f"running as root, and the unprivileged user cannot run {sys.executable}")


# ---- runs without a model, and processes stopped at a pause point (edgetl.core.rundir.pause_point) ----------
RUN_META = {"edgetl_version": "0.1.0", "classes": ["a", "b"], "image_size": 32,
            "preprocessing": {"size": [32, 32], "scale": 1 / 127.5, "offset": -1.0}}


def fake_run(path: Path, tag: str = "old") -> Path:
    """A folder with the edgetl.json edgetl writes (tagged) and a placeholder model.keras: for the file and
    folder protocols (overwrite, atomic swap, manifest), which never load the model."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "edgetl.json").write_text(json.dumps({**RUN_META, "tag": tag}))
    (path / "model.keras").write_text(tag)
    return path


def _env(extra: dict | None = None) -> dict:
    repo = Path(__file__).resolve().parents[1]
    return {**os.environ, **(extra or {}), "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "tests")])}


def start_paused(argv: list[str], point: str, pause_dir: Path, env: dict | None = None) -> subprocess.Popen:
    """A process that stops at pause point `point` until it is killed or DIR/<point>.go appears."""
    pause_dir.mkdir(parents=True, exist_ok=True)
    env = _env({**(env or {}), "EDGETL_PAUSE_AT": point, "EDGETL_PAUSE_DIR": str(pause_dir)})
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_reached(proc: subprocess.Popen, point: str, pause_dir: Path, timeout: float = 300) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not (pause_dir / f"{point}.reached").exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before {point}: {out[-1500:]} {err[-1500:]}")
        assert time.monotonic() < deadline, f"{point} not reached in {timeout} s"
        time.sleep(0.05)


def run_cli(args: list[str], env: dict | None = None, python: str | None = None, **kw) -> subprocess.CompletedProcess:
    """`python -m edgetl ARGS` in a fresh process (this checkout's edgetl on PYTHONPATH)."""
    import sys

    return subprocess.run([python or sys.executable, "-m", "edgetl", *map(str, args)], capture_output=True,
                          text=True, env=_env(env), timeout=kw.pop("timeout", 300), **kw)


def quiet_console():
    from rich.console import Console

    return Console(stderr=True, quiet=True)


def train_run(data: Path, out: Path, **options):
    """`edgetl train` on `data` with the tiny defaults (TINY) and any other options; returns TrainResult."""
    from edgetl.train.config import TrainConfig
    from edgetl.train.stage import train

    return train(TrainConfig(data=str(data), out=str(out), **{**TINY, **options}), console=quiet_console())


def export_run(run: Path, **options) -> dict:
    """`edgetl export` of a run (int8 included; the tiny model's int8 accuracy is not the subject: max_drop 100)."""
    from edgetl.export.stage import export_run as export

    return export(run, **{"int8": True, "calib": 16, "max_drop": 100.0, "console": quiet_console(), **options})


def tiny_parts(n_classes: int = 2, size: int = 32, seed: int = 0, images: np.ndarray | None = None):
    """(base, head, pixels used for BN): a random MobileNetV2 alpha 0.35 base (BatchNorm statistics from
    `images`, or from noise) and a new head, as `edgetl train --weights random` builds them."""
    from edgetl.core.images import preprocessing_spec
    from edgetl.model.backbone import build_base
    from edgetl.model.bn import calibrate_random_bn
    from edgetl.model.graph import build_head
    from edgetl.model.tfenv import set_seed

    set_seed(seed)
    px = images if images is not None else np.random.default_rng(seed).integers(0, 256, (24, size, size, 3),
                                                                                dtype=np.uint8)
    base = build_base(0.35, size, None)
    calibrate_random_bn(base, px, preprocessing_spec(size), seed=seed)
    base.trainable = False
    return base, build_head(int(base.output_shape[-1]), n_classes, "linear", 0.2, seed, start="glorot"), px


def tiny_model(n_classes: int = 2, size: int = 32, seed: int = 0, images: np.ndarray | None = None):
    """A flat base + head Keras model (tiny_parts assembled). Returns (model, pixels used for BN)."""
    from edgetl.model.graph import assemble

    base, head, px = tiny_parts(n_classes, size, seed, images)
    return assemble(base, head), px


def without_weight_zero_points(proto) -> int:
    """Drop the zero points of an int8 ONNX model's s8 QDQ weights, as other tools write them (the input
    is optional: zero), in place; returns how many weights changed."""
    from onnx import TensorProto

    inits = {t.name: t for t in proto.graph.initializer}
    changed = 0
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[0] in inits \
                and inits[node.input[0]].data_type == TensorProto.INT8 and len(inits[node.input[0]].dims) >= 2:
            node.input[:] = node.input[:2]
            changed += 1
    return changed

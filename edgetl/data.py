"""Image folders: discovery, robust decoding, stratified splits and the one preprocessing function.

Everything here is numpy + Pillow so `predict` and `bench` run without TensorFlow.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgetlError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "validation", "valid")

# MobileNetV2's own preprocessing (keras.applications.mobilenet_v2.preprocess_input, mode "tf"):
# RGB pixels in [0, 255] -> x / 127.5 - 1 -> [-1, 1]. Recorded in every run and every artifact.
MOBILENET_V2_PREPROCESSING = {
    "color": "RGB",
    "layout": "NHWC",
    "resize": "bilinear",
    "scale": 1.0 / 127.5,
    "offset": -1.0,
    "range": [-1.0, 1.0],
    "name": "mobilenet_v2",
}


def preprocessing_spec(image_size: int) -> dict:
    return {**MOBILENET_V2_PREPROCESSING, "size": [int(image_size), int(image_size)]}


def preprocess(pixels: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 RGB pixels (N,H,W,3) or (H,W,3), already resized -> float32 model input."""
    return pixels.astype(np.float32) * np.float32(spec["scale"]) + np.float32(spec["offset"])


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Preprocessed float32 -> an integer input tensor, the way TFLite's own QUANTIZE kernel does it
    (float32 x / scale, rounded half away from zero, + zero point, saturated). The one function export's
    parity check, bench and predict use. MobileNetV2's [-1, 1] pixels at scale 1/127.5 fall exactly
    halfway between two int8 steps, so a different rounding rule (numpy's half-to-even) or adding the
    zero point before rounding moves half the input values by one step."""
    v = np.asarray(x, np.float32) / np.float32(scale)
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)) + np.float32(zero_point)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


class ImageDecodeError(Exception):
    pass


def load_image(path: str | Path, size: int | tuple[int, int]) -> np.ndarray:
    """Decode any common image to uint8 RGB (size, size, 3), EXIF orientation applied.

    Grayscale, palette, RGBA (composited on white), CMYK and 16-bit images are converted; anything
    Pillow cannot decode fully (zero bytes, truncated, text named .jpg) raises ImageDecodeError.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    h, w = (size, size) if isinstance(size, int) else size
    try:
        if Path(path).stat().st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
    except OSError as e:
        raise ImageDecodeError(f"cannot read ({e.strerror or type(e).__name__})") from None
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageDecodeError("not a readable image (unknown format or not an image file)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"unexpected decoded shape {arr.shape}")
    return arr


def _to_rgb(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    if im.mode == "RGB;16" or im.mode.startswith("BGR"):
        im = im.convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


@dataclass
class Split:
    """Labelled file lists. Paths are absolute strings; labels index into `classes`."""

    classes: list[str]
    train: list[tuple[str, int]] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    layout: str = "split"  # "split" (train/ and val/ given) or "flat" (edgetl split it)
    ignored: list[dict] = field(default_factory=list)  # files skipped by name (not image suffixes)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted([d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")], key=lambda d: d.name)


def _files(class_dir: Path, ignored: list[dict]) -> list[Path]:
    out = []
    for p in sorted(class_dir.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(class_dir).parts):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(p)
        else:
            ignored.append({"file": str(p), "reason": f"not an image suffix ({p.suffix or 'none'})"})
    return out


def find_subdir(root: Path, names) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def scan(data: str | Path, val_split: float = 0.2, seed: int = 0) -> Split:
    """DATA with train/ and val/ (or validation/) class folders, or a flat folder of class folders."""
    root = Path(data)
    if not root.exists():
        raise EdgetlError(f"DATA {root}: no such folder")
    if not root.is_dir():
        raise EdgetlError(f"DATA {root}: not a folder (expected class sub-folders, or train/ and val/)")
    if not 0.0 < val_split < 1.0:
        raise EdgetlError(f"--val-split {val_split}: must be between 0 and 1 (exclusive)")
    ignored: list[dict] = []
    tdir, vdir = find_subdir(root, TRAIN_NAMES), find_subdir(root, VAL_NAMES)
    if tdir is not None and vdir is not None:
        tclasses = [d.name for d in _class_dirs(tdir)]
        vclasses = [d.name for d in _class_dirs(vdir)]
        if tclasses != vclasses:
            raise EdgetlError(
                f"DATA {root}: class folders differ between {tdir.name}/ {tclasses} and {vdir.name}/ {vclasses}")
        classes = tclasses
        _check_classes(root, classes)
        split = Split(classes, layout="split", ignored=ignored)
        for i, c in enumerate(classes):
            tf_, vf = _files(tdir / c, ignored), _files(vdir / c, ignored)
            for sub, files in ((tdir / c, tf_), (vdir / c, vf)):
                if not files:
                    raise EdgetlError(f"class folder {sub} has no images")
            split.train += [(str(p), i) for p in tf_]
            split.val += [(str(p), i) for p in vf]
        return split
    if tdir is not None and vdir is None:
        # train/ alone: split it ourselves
        root = tdir
    classes = [d.name for d in _class_dirs(root)]
    _check_classes(root, classes)
    split = Split(classes, layout="flat", ignored=ignored)
    rng = random.Random(seed)
    for i, c in enumerate(classes):
        files = _files(root / c, ignored)
        if not files:
            raise EdgetlError(f"class folder {root / c} has no images")
        if len(files) < 2:
            raise EdgetlError(f"class folder {root / c} has {len(files)} image; need at least 2 to split train/val")
        files = [str(p) for p in files]
        rng.shuffle(files)
        n_val = min(max(1, round(len(files) * val_split)), len(files) - 1)
        split.val += [(p, i) for p in sorted(files[:n_val])]
        split.train += [(p, i) for p in sorted(files[n_val:])]
    return split


def _check_classes(root: Path, classes: list[str]) -> None:
    if len(classes) == 0:
        raise EdgetlError(f"DATA {root}: no class sub-folders found (expected DATA/<class>/*.jpg or DATA/train/<class>/)")
    if len(classes) == 1:
        raise EdgetlError(f"DATA {root}: only one class ({classes[0]!r}); need 2 or more class folders")


def labelled_folder(folder: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]], list[dict]]:
    """Images under folder/<class>/ (recursively). With `classes` given, folder classes must match the model's."""
    root = Path(folder)
    if not root.is_dir():
        raise EdgetlError(f"--data {root}: no such folder")
    found = [d.name for d in _class_dirs(root)]
    if classes is not None:
        if sorted(found) != sorted(classes):
            raise EdgetlError(
                f"--data {root}: class folders {found} do not match the model's labels {list(classes)}")
        order = list(classes)
    else:
        order = found
    ignored: list[dict] = []
    items = [(str(p), order.index(c)) for c in order for p in _files(root / c, ignored)]
    return order, items, ignored


def load_batch(items: list[tuple[str, int]], size: int, progress=None) -> tuple[np.ndarray, np.ndarray, list[str], list[dict]]:
    """Decode (path, label) items to uint8 pixels. Undecodable files are skipped and reported, never fatal."""
    pix, labels, paths, skipped = [], [], [], []
    for path, label in items:
        try:
            pix.append(load_image(path, size))
            labels.append(label)
            paths.append(path)
        except ImageDecodeError as e:
            skipped.append({"file": path, "reason": str(e)})
        if progress is not None:
            progress()
    arr = np.stack(pix) if pix else np.zeros((0, size, size, 3), np.uint8)
    return arr, np.asarray(labels, dtype=np.int64), paths, skipped


def iter_image_files(inputs) -> list[Path]:
    """Files named on the command line; folders are walked recursively for image suffixes."""
    out: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise EdgetlError(f"{p}: no such file or folder")
    return out


def seeded_subset(items: list, n: int, seed: int) -> list:
    """A reproducible sample of n items (all of them if fewer), e.g. int8 calibration images."""
    if n >= len(items):
        return list(items)
    rng = random.Random(seed)
    return sorted(rng.sample(items, n))

"""Image folders: class folders, train/val layouts, stratified seeded splits, file lists."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgetlError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "validation", "valid")


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

"""Image folders: class folders, the train/val/test layouts, stratified seeded splits, file lists."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgetlError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# int8 calibration: training images in the seeded sample that export (--calib) converts with, and that
# `train --qat` converts with to score its int8 candidates on the very files export will write
CALIBRATION_IMAGES = 200
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "validation", "valid")
BROKEN_LINK = "broken symlink (its target is missing)"
TEST_NAMES = ("test", "testing")
SPLIT_NAMES = {"train": TRAIN_NAMES, "val": VAL_NAMES, "test": TEST_NAMES}
LAYOUTS = ("DATA/<class>/ (val carved from it), DATA/train/ + DATA/val/ (or validation/), DATA/train/ + DATA/test/ "
           "(val carved from train/), or DATA/train/ + DATA/val/ + DATA/test/; folder names in any case")


@dataclass
class Split:
    """Labelled file lists: (path under DATA as given, label index into `classes`)."""

    classes: list[str]
    train: list[tuple[str, int]] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    layout: str = "split"  # "split" (train/ and val/ given) or "flat" (edgetl split val off the training images)
    ignored: list[dict] = field(default_factory=list)  # files skipped by name (not image suffixes)
    test: list[tuple[str, int]] = field(default_factory=list)  # scored once, at the end; never used to choose
    test_source: str | None = None  # where the test images come from: "test/" (DATA's folder) or "--test DIR"
    # every folder and image file the scan reached: {real path: path as reached} (--overwrite checks it)
    reached: dict = field(default_factory=dict)


def _entries(folder: Path, what: str) -> list[os.DirEntry]:
    """A folder's entries by name; an unreadable folder is one line naming it."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise EdgetlError(f"{what} {folder}: {_cannot_read(e)}") from None


def _cannot_read(e: OSError) -> str:
    return f"cannot read it ({e.strerror or type(e).__name__})"


def _class_dirs(folder: Path, ignored: list[dict] | None = None, what: str = "DATA") -> list[Path]:
    """Class folders (symlinked ones followed); broken symlinks are named in `ignored`."""
    out = []
    for e in _entries(folder, what):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            out.append(folder / e.name)
        elif e.is_symlink() and not os.path.exists(e.path) and ignored is not None:
            ignored.append({"file": e.path, "reason": BROKEN_LINK})
    return out


def walk_files(root: Path, ignored: list[dict], hidden: bool = False, reached: dict | None = None) -> list[Path]:
    """Every file under `root`, sorted by path. Symlinked files and folders are followed (each real folder
    once, so a link loop ends); hidden names are left out unless `hidden`; broken symlinks, unreadable
    sub-folders and special files (FIFOs, sockets) are named in `ignored`. An unreadable `root` is an error.
    `reached` ({real path: path}, shared by a whole scan): a folder reached twice (a link loop, two class
    folders at one place) or one holding a folder already reached is an error naming both paths."""
    out: list[Path] = []
    seen: set[str] = set()

    def visit(folder: Path, top: bool) -> None:
        real = os.path.realpath(folder)
        if reached is not None:
            _reach(folder, real, reached)
        elif real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if top:
                raise EdgetlError(f"class folder {folder}: {_cannot_read(e)}") from None
            ignored.append({"file": str(folder), "reason": f"folder: {_cannot_read(e)}"})
            return
        for e in entries:
            if e.name.startswith(".") and not hidden:
                continue
            p = folder / e.name
            if e.is_dir():
                visit(p, False)
            elif e.is_file():
                out.append(p)
            elif e.is_symlink() and not os.path.exists(e.path):
                ignored.append({"file": str(p), "reason": BROKEN_LINK})
            else:
                ignored.append({"file": str(p), "reason": "not a regular file"})

    visit(root, True)
    return sorted(out)


def _reach(folder: Path, real: str, reached: dict) -> None:
    """Record a folder of a scan; one reached before, or one around a folder reached before, is an error."""
    twice = reached.get(real)
    if twice is None:
        twice = next((shown for r, shown in reached.items() if r.startswith(real.rstrip(os.sep) + os.sep)), None)
        if twice is not None:
            raise EdgetlError(f"{folder} (symlinks resolved: {real}) holds {twice}, already read: its images would "
                              "be read twice, under two labels; remove the symlink")
        reached[real] = str(folder)
        return
    raise EdgetlError(f"{folder} and {twice} are the same folder (symlinks resolved: {real}): its images would "
                      "be read twice; remove one of the symlinks")


def _files(class_dir: Path, ignored: list[dict], reached: dict | None = None) -> list[Path]:
    out = []
    for p in walk_files(class_dir, ignored, reached=reached):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(p)
        else:
            ignored.append({"file": str(p), "reason": f"not an image suffix ({p.suffix or 'none'})"})
    return out


def _split_folders(root: Path) -> dict[str, Path]:
    """DATA's train/val/test folders by kind (names matched in any case); {} for a flat folder. A second
    folder of one kind, a val/ or test/ without train/, or class folders beside them: one error naming the
    accepted layouts."""
    found: dict[str, Path] = {}
    others = []
    for d in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name):
        kind = next((k for k, names in SPLIT_NAMES.items() if d.name.lower() in names), None)
        if kind is None:
            others.append(d.name)
        elif kind in found:
            raise EdgetlError(f"DATA {root}: both {found[kind].name}/ and {d.name}/ are {kind} folders; "
                              f"accepted layouts: {LAYOUTS}")
        else:
            found[kind] = d
    if found and (others or "train" not in found):
        what = (f"{', '.join(n + '/' for n in others[:3])} beside {', '.join(d.name + '/' for d in found.values())}"
                if others else f"{', '.join(d.name + '/' for d in found.values())} without a train/ folder")
        raise EdgetlError(f"DATA {root}: {what}; accepted layouts: {LAYOUTS}")
    return found


def scan(data: str | Path, val_split: float = 0.2, seed: int = 0, test: str | Path | None = None) -> Split:
    """DATA as one of the accepted layouts (LAYOUTS): train/ with val/ (or validation/) and/or test/, or a flat
    folder of class folders (or train/ alone). Without a val/ folder, `val_split` of each class's training
    images (stratified, seeded) become val. `test`: another labelled folder to score as the test set."""
    root = Path(data)
    if not root.exists():
        raise EdgetlError(f"DATA {root}: no such folder")
    if not root.is_dir():
        raise EdgetlError(f"DATA {root}: not a folder (expected class sub-folders, or train/ and val/)")
    if not 0.0 < val_split < 1.0:
        raise EdgetlError(f"--val-split {val_split}: must be between 0 and 1 (exclusive)")
    parts = _split_folders(root)
    # DATA and its split folders count as reached: a class folder's link back up to them is a loop
    reached = {os.path.realpath(d): str(d) for d in (root, *parts.values())}
    if test is not None and Path(test).is_dir():
        reached.setdefault(os.path.realpath(test), str(test))
    if "val" in parts:
        split = _given_split(root, {"train": parts["train"], "val": parts["val"]}, reached)
    else:
        split = _random_split(parts.get("train", root), val_split, seed, reached)
    if "test" in parts:
        if test is not None:
            raise EdgetlError(f"--test {test}: DATA {root} has its own {parts['test'].name}/ folder; give one test set")
        _add_test(split, parts["test"], f"{parts['test'].name}/", f"DATA {root}")
    elif test is not None:
        _add_test(split, Path(test), f"--test {test}", f"--test {test}")
    _check_files_once(split)
    return split


def _check_files_once(split: Split) -> None:
    """An image file reached under two labels (file symlinks) is an error naming both paths; every file is
    recorded in `split.reached`."""
    labels: dict[str, tuple[str, int]] = {}
    for p, y in split.train + split.val + split.test:
        real = os.path.realpath(p)
        first = labels.setdefault(real, (p, y))
        if first[1] != y:
            raise EdgetlError(f"{p} and {first[0]} are the same file (symlinks resolved: {real}) in class folders "
                              f"{split.classes[y]!r} and {split.classes[first[1]]!r}; remove one of them")
        split.reached.setdefault(real, p)


def _add_test(split: Split, folder: Path, source: str, flag: str) -> None:
    """The test images of `folder` (same class folders as train, each with an image), none of them also a
    training or val image."""
    if not folder.is_dir():
        raise EdgetlError(f"{flag}: no such folder")
    found = [d.name for d in _class_dirs(folder)]
    if sorted(found) != sorted(split.classes):
        raise EdgetlError(f"{flag}: class folders differ between train {split.classes} and {folder.name}/ {found}")
    # a test class folder that is a train or val one: walked alone, so that the check below names its images
    overlap = any(os.path.realpath(folder / c) in split.reached for c in split.classes)
    for i, c in enumerate(split.classes):
        files = _files(folder / c, split.ignored, None if overlap else split.reached)
        if not files:
            raise EdgetlError(f"class folder {folder / c} has no images")
        split.test += [(str(p), i) for p in files]
    seen = {Path(p).resolve() for p, _ in split.train + split.val}
    shared = [p for p, _ in split.test if Path(p).resolve() in seen]
    if shared:
        raise EdgetlError(f"{flag}: {len(shared)} test image(s) are also training or val images "
                          f"(e.g. {shared[0]}); the test set must be images never trained or chosen on")
    split.test_source = source


def _given_split(root: Path, parts: dict[str, Path], reached: dict) -> Split:
    """The split as the folders give it: parts = {"train": dir, "val": dir}, each with the same class
    folders, each class folder holding at least one image."""
    ignored: list[dict] = []
    found = {part: [d.name for d in _class_dirs(d, ignored)] for part, d in parts.items()}
    classes = found["train"]
    for part, names in found.items():
        if names != classes:
            raise EdgetlError(f"DATA {root}: class folders differ between {parts['train'].name}/ {classes} "
                              f"and {parts[part].name}/ {names}")
    _check_classes(root, classes)
    split = Split(classes, layout="split", ignored=ignored, reached=reached)
    for i, c in enumerate(classes):
        files = {part: _files(d / c, split.ignored, reached) for part, d in parts.items()}
        for part, fs in files.items():
            if not fs:
                raise EdgetlError(f"class folder {parts[part] / c} has no images")
        for part, fs in files.items():
            getattr(split, part).extend((str(p), i) for p in fs)
    return split


def _random_split(root: Path, val_split: float, seed: int, reached: dict) -> Split:
    """A folder of class folders split per class (stratified), seeded: round(n * val_split) images of
    each class (at least 1, at most n - 1) go to val."""
    ignored: list[dict] = []
    classes = [d.name for d in _class_dirs(root, ignored)]
    _check_classes(root, classes)
    split = Split(classes, layout="flat", ignored=ignored, reached=reached)
    rng = random.Random(seed)
    for i, c in enumerate(classes):
        files = _files(root / c, split.ignored, reached)
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
        raise EdgetlError(f"DATA {root}: no class sub-folders found; accepted layouts: {LAYOUTS}")
    if len(classes) == 1:
        raise EdgetlError(f"DATA {root}: only one class ({classes[0]!r}); need 2 or more class folders")


def labelled_folder(folder: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]], list[dict]]:
    """Images under folder/<class>/ (recursively). With `classes` given, folder classes must match the model's."""
    root = Path(folder)
    if not root.is_dir():
        raise EdgetlError(f"--data {root}: no such folder")
    ignored: list[dict] = []
    found = [d.name for d in _class_dirs(root, ignored, "--data")]
    if classes is not None:
        if sorted(found) != sorted(classes):
            raise EdgetlError(
                f"--data {root}: class folders {found} do not match the model's labels {list(classes)}")
        order = list(classes)
    else:
        order = found
    items = [(str(p), order.index(c)) for c in order for p in _files(root / c, ignored)]
    return order, items, ignored


def iter_image_files(inputs, skipped: list[dict] | None = None) -> list[Path]:
    """Files named on the command line; folders are walked recursively (symlinks followed) for image
    suffixes. What a walk cannot use (a broken symlink, an unreadable sub-folder, a FIFO named like an
    image) is appended to `skipped` with the reason."""
    out: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            ignored: list[dict] = []
            out += [q for q in walk_files(p, ignored, hidden=True) if q.suffix.lower() in IMAGE_SUFFIXES]
            if skipped is not None:
                skipped += [i for i in ignored if i["reason"].startswith("folder")
                            or Path(i["file"]).suffix.lower() in IMAGE_SUFFIXES]
        elif p.exists() or p.is_symlink():
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


MIN_CLASS_IMAGES = 5  # fewer decodable training images in a class than this: a warning (its scores are noise)


def duplicates_across_splits(splits: dict) -> list[dict]:
    """Images with identical decoded pixels in two different splits ({name: (pixels, paths)}), e.g. one photo
    copied into train/ and test/ under another name: val/test accuracy would count it as unseen. One entry
    per such image: {"splits": "train/test", "files": [path, path]}."""
    import hashlib

    first: dict[bytes, tuple[str, str]] = {}
    out = []
    for name, (pixels, paths) in splits.items():
        for px, path in zip(pixels, paths):
            key = hashlib.sha256(px.tobytes()).digest()
            seen = first.setdefault(key, (name, str(path)))
            if seen[0] != name:
                out.append({"splits": f"{seen[0]}/{name}", "files": [seen[1], str(path)]})
    return out


def small_classes(labels, classes: list[str], minimum: int = MIN_CLASS_IMAGES) -> dict[str, int]:
    """{class: training images} of the classes with fewer than `minimum` of them."""
    counts = {c: 0 for c in classes}
    for y in labels:
        counts[classes[int(y)]] += 1
    return {c: n for c, n in counts.items() if n < minimum}

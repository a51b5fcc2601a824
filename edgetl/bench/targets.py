"""What a bench measures: one Target per artifact file (and per format that failed at export), read
cheaply in the parent, and the evaluation images, decoded ONCE (same decoding as training) into .npy
files that every worker maps, so rows measure the model, not JPEG decoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import data, images, runtime
from ..core.console import progress, shown
from ..core.errors import EdgetlError
from ..core.formats import FORMATS
from ..core.rundir import MANIFEST_FILE, META_FILE, Run


@dataclass
class Target:
    path: Path
    label: str  # row name, e.g. "tflite-int8" or "runA/tflite-int8"
    fmt: str | None = None
    meta: dict | None = None
    run: Run | None = None
    status: str | None = None  # set when the artifact fails before measuring
    eval_key: str | None = None
    extra: dict = field(default_factory=dict)
    unlisted: str | None = None  # why the run's manifest does not vouch for this file (checked unless --no-verify)


def collect_targets(paths: list[Path], formats: list[str] | None) -> list[Target]:
    """Run directories give one target per artifact present (registry order) plus one per format the
    manifest records as failed at export; bare files give one target each, labelled later."""
    for p in paths:
        if not p.exists():
            raise EdgetlError(f"{p}: no such run directory or model file")
    multi = len(paths) > 1
    out: list[Target] = []
    for p in paths:
        if p.is_dir():
            out += _run_targets(p, formats, f"{p.name}/" if multi else "")
        else:
            out.append(Target(p, ""))  # labelled after its format is known (assign_labels)
    return out


def _run_targets(p: Path, formats: list[str] | None, prefix: str) -> list[Target]:
    run = Run(p)
    found = [f for f in FORMATS.values() if (p / f.filename).is_file()]
    if not [f for f in found if f.runtime != "tensorflow"]:
        raise EdgetlError(f"RUN {p}: no exported artifacts; run `edgetl export {p}` first")
    manifest = run.manifest.get("artifacts", {})
    out = []
    for f in FORMATS.values():  # formats export could not write are named too, with the reason
        entry = manifest.get(f.name) or {}
        if f not in found and entry.get("status") == "failed" and (not formats or f.name in formats):
            out.append(Target(p / f.filename, prefix + f.name, f.name, run=run,
                              status=f"failed at export: {entry.get('reason', 'see manifest.json')}"))
    has_manifest = (p / MANIFEST_FILE).is_file()
    for f in found:
        if formats and f.name not in formats:
            continue
        t = Target(p / f.filename, prefix + f.name, f.name, run=run)
        st = (manifest.get(f.name) or {}).get("status")
        if st and st != "ok":  # the file present is not the one export checked
            t.extra["export_status"] = st
            t.unlisted = (f"{MANIFEST_FILE} records {f.name} as failed at export "
                          f"({(manifest.get(f.name) or {}).get('reason', 'no reason given')}): this file is not the one "
                          f"export checked; re-export it with `edgetl export {p} --format {f.name}`")
        elif f.runtime != "tensorflow" and has_manifest and st is None:
            t.unlisted = (f"not listed in {MANIFEST_FILE}: not exported into this run (copied in, or left by an "
                          f"interrupted export); re-export it with `edgetl export {p} --format {f.name}`")
        out.append(t)
    return out


def assign_labels(targets: list[Target]) -> None:
    """Bare files are named by their format (unique) or parent-folder/format; unreadable ones by path."""
    for t in targets:
        if t.label:
            continue
        same = [o for o in targets if o.fmt and o.fmt == t.fmt]
        t.label = t.fmt if t.fmt and len(same) == 1 else f"{t.path.parent.name}/{t.fmt or t.path.name}"


def describe(t: Target, verify: bool = True) -> None:
    """Read the artifact's metadata in the parent (cheap): classes, size and eval source; with `verify`, its
    sha256 is checked first (the workers then load it unchecked). Errors -> status."""
    if t.status:
        return
    if verify and t.unlisted:
        t.status = f"error: {t.path}: {t.unlisted} (or pass --no-verify)"
        return
    try:
        fmt, meta, checked = runtime.identify_checked(t.path, verify)
    except EdgetlError as e:
        t.status = f"error: {e}"
        return
    t.fmt, t.meta = fmt.name, meta
    if checked == "unverified":
        t.extra["integrity"] = "unverified"
    if t.run is None and fmt.runtime != "tensorflow":
        src = (meta.get("source") or {}).get("run")
        cand = [t.path.parent] + ([Path(src)] if src else [])
        for c in cand:
            if (c / META_FILE).is_file():
                try:
                    t.run = Run(c)
                    break
                except EdgetlError:
                    pass


def keras_macs(targets: list[Target]) -> None:
    """The Keras row has no embedded metadata: borrow MACs from an artifact of the same run."""
    for t in targets:
        if t.fmt == "keras" and t.meta and not t.meta.get("macs"):
            for o in targets:
                if o is not t and o.run is not None and t.run is not None and o.run.path == t.run.path \
                        and o.meta and o.meta.get("macs"):
                    t.meta["macs"] = o.meta["macs"]
                    break


def prepare_eval(targets: list[Target], data_dir: Path | None, tmp: Path, console) -> dict:
    """Decode each distinct (image list, size) once into tmp/*.npy; returns {key: info}. A target without
    images gets an accuracy note (or an error status) instead of an eval_key."""
    sets: dict = {}
    for t in targets:
        if t.status or t.meta is None:
            continue
        classes, size = list(t.meta["classes"]), int(t.meta["preprocessing"]["size"][0])
        decoding = images.decoding_of(t.meta["preprocessing"])
        found = _eval_items(t, classes, data_dir)
        if found is None:
            continue
        items, ignored, source, split = found
        key = f"{source}|{size}|{decoding.jpeg_draft}|{decoding.antialias}|{','.join(classes)}"
        if key not in sets:
            sets[key] = _decode(items, size, decoding, len(sets), tmp, console, source)
            sets[key].update(ignored=len(ignored), split=split)
        t.eval_key = key
    return sets


def _eval_items(t: Target, classes: list[str], data_dir: Path | None) -> tuple[list, list, str, str] | None:
    """(items, ignored files, source description, split: "data", "test" or "val") of a target's labelled
    images: --data, else its run's test split when it has one (images never used to choose anything), else
    its validation split (the images still on this machine); None, with a note or status set, when it has
    none."""
    if data_dir is not None:
        _, items, ignored = data.labelled_folder(data_dir, classes)  # raises on class mismatch
        return items, ignored, f"--data {data_dir}", "data"
    if t.run is not None:
        if t.run.classes != classes:
            t.status = f"error: labels {classes} differ from its run's {t.run.classes}"
            return None
        split = "test" if t.run.split_items("test") else "val"
        name = "test" if split == "test" else "validation"
        items = t.run.split_items(split)
        present = [it for it in items if Path(it[0]).is_file()]
        if present:
            ignored = [{"file": p, "reason": "missing"} for p, _ in items if not Path(p).is_file()]
            return present, ignored, f"{name} split of {t.run.path}", split
        if items:  # e.g. the run folder was copied to a Pi without its images
            t.extra["accuracy_note"] = (f"the run's {len(items)} {name} images are not on this machine: "
                                        "pass --data DIR")
            return None
    t.extra.setdefault("accuracy_note", "no labelled images: pass --data DIR")
    return None


def _decode(items, size, decoding: images.Decoding, idx, tmp: Path, console, source) -> dict:
    with progress(console, transient=True) as prog:
        task = prog.add_task(f"decoding {len(items)} eval images at {size}px", total=len(items))
        pix, labels, _, skipped = images.decode_all(items, size, progress=lambda: prog.advance(task),
                                                    decoding=decoding)
    px, lb = tmp / f"eval{idx}_{size}.npy", tmp / f"eval{idx}_{size}_labels.npy"
    np.save(px, pix)
    np.save(lb, labels)
    for s in skipped:
        console.print(f"[yellow]skipped[/] {shown(s['file'])}: {shown(s['reason'])}", highlight=False)
    return {"source": source, "size": size, "images": int(len(labels)), "skipped": skipped,
            "pixels": str(px), "labels": str(lb)}

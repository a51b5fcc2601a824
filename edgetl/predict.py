"""`edgetl predict MODEL IMAGE_OR_DIR...`: top-k labels from one exported .tflite/.onnx file.

Same decoding (core.images.load_image) and preprocessing (core.images.preprocess with the spec stored in the
artifact) as training. No TensorFlow: runs with the light install.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core import data, images, runtime
from .core.amx import check_mode as check_amx_mode
from .core.config import REQUIRED, opt
from .core.console import native_logs_aside, shown
from .core.errors import EdgetlError


@dataclass
class PredictConfig:
    model: Path = opt(REQUIRED, ".tflite or .onnx file exported by edgetl", argument=True)
    images: list[Path] = opt(REQUIRED, "Image files or folders (walked recursively)", argument=True)
    top_k: int = opt(3, "How many labels to show per image", "--top-k", "-k")
    json: bool = opt(False, "Print one JSON document to stdout", "--json")
    threads: int = opt(1, "CPU threads for the runtime")
    no_verify: bool = opt(False, "Use the file even if its sha256 differs from its manifest or its embedded "
                                 "seal (damaged or changed since export)", "--no-verify")
    verbose: bool = opt(False, "Show the runtime's native log lines on stderr", "--verbose")
    amx: str = opt("auto", "Let the int8 kernels use AMX: auto (per model: off where its layers fill AMX tiles "
                           "poorly), on, off")


def predict(model_path: Path, inputs: list[Path], top_k: int = 3, as_json: bool = False, threads: int = 1,
            console=None, verify: bool = True, verbose: bool = False, amx: str = "auto") -> dict:
    from rich.console import Console

    console = console or Console()
    if top_k < 1:
        raise EdgetlError(f"--top-k {top_k}: must be >= 1")
    threads = runtime.check_threads(threads)
    check_amx_mode(amx)
    if not inputs:
        raise EdgetlError("give at least one image file or folder after MODEL")
    skipped: list[dict] = []
    files = data.iter_image_files(inputs, skipped)  # raises on a missing path, before loading the model
    cores = os.cpu_count() or 1
    if threads > cores:
        _note(console, as_json, f"--threads {threads} is more than this machine's {cores} cores")
    with native_logs_aside(console, verbose):  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate"
        model = runtime.load(model_path, threads=threads, allow_keras=False, verify=verify, amx=amx)
    if model.integrity == "unverified":
        _note(console, as_json, f"unverified: {model_path} has no valid sealed sha256 and no manifest entry: its "
                                "content could not be checked")
    with native_logs_aside(console, verbose):
        k = min(top_k, len(model.classes))
        results = []
        for f in files:
            try:
                px = images.load_image(f, model.image_size, images.decoding_of(model.spec))
            except images.ImageDecodeError as e:
                skipped.append({"file": str(f), "reason": str(e)})
                continue
            probs = model.predict_pixels(px[None])[0]
            order = np.argsort(-probs, kind="stable")[:k]
            results.append({"path": str(f), "top": [{"label": model.classes[i], "probability": float(probs[i])}
                                                    for i in order]})
    skipped = [{**s, "file": shown(s["file"]), "reason": shown(s["reason"])} for s in skipped]
    doc = {"model": str(model_path), "format": model.format.name, **model.amx, "classes": model.classes,
           "image_size": model.image_size, "top_k": k, "images": len(results), "skipped": skipped,
           "integrity": model.integrity, "predictions": [{**r, "path": shown(r["path"])} for r in results]}
    if not results:  # no table: only what was skipped, then the error
        if not as_json:
            for s in skipped:
                console.print(f"[yellow]skipped[/] {s['file']}: {s['reason']}", highlight=False)
        raise EdgetlError(f"no readable images among {len(files)} file(s) given" if files else
                          "no image files found in the given folder(s)")
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print(doc, console)
    return doc


def _note(console, as_json: bool, text: str) -> None:
    """A warning line: on stderr with --json (stdout holds the JSON document), else on the console."""
    if as_json:
        sys.stderr.write(f"note: {text}\n")
    else:
        console.print(f"[yellow]note[/]: {text}", highlight=False, soft_wrap=True)


def _print(doc: dict, console) -> None:
    from rich.table import Table

    tab = Table(title=f"{doc['model']} ({doc['format']}, {doc['image_size']} px)", title_justify="left")
    tab.add_column("image", overflow="fold")
    for i in range(doc["top_k"]):
        tab.add_column(f"#{i + 1}")
    for r in doc["predictions"]:
        tab.add_row(r["path"], *[f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top"]])
    console.print(tab)
    for s in doc["skipped"]:
        console.print(f"[yellow]skipped[/] {s['file']}: {s['reason']}", highlight=False)
    msg = f"{doc['images']} image(s) classified"
    if doc["skipped"]:
        msg += f", {len(doc['skipped'])} unreadable image(s) skipped"
    console.print(msg, highlight=False)

"""`edgetl export RUN`: TFLite and ONNX artifacts (float and int8), each parity-checked and self-describing.

Flow: validate everything (run, model file, formats, calibration/validation images) before any work ->
load the Keras model and the run's validation images -> per format: convert to bytes in memory, compact,
embed edgetl metadata and read it back, run the parity check through the deployment runtime -> only
then write the file atomically -> manifest.json + result table. A file that fails its check is never
written (and a stale file of that format is removed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..core import cpu
from ..core.errors import ArtifactCheckError, EdgetlError, describe
from ..core.formats import FORMATS, FP32_OF
from ..core.images import decode_all, preprocess
from ..core.rundir import MANIFEST_FILE, Run, sha256_file, write_bytes, write_json
from ..model.graph import count_macs
from ..model.load import load_run_model, strip_quantization
from ..model.predict import predict
from .artifacts import compact_checked, embed
from .budget import fit_size_budget
from .config import check_inputs
from .context import ExportContext
from .convert import converted
from .parity import parity

DEFAULT_CALIB = 200
DEFAULT_MAX_DROP = 2.0
DEFAULT_SIZE_BUDGET = 30.0


def load_model(run: Run):
    """The run's Keras model via train.load_run_model (QAT models open inside quantize_scope)."""
    try:
        return load_run_model(run)
    except EdgetlError:
        raise
    except Exception as e:
        raise EdgetlError(f"RUN {run.path}: cannot load {run.model_path.name} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                          "re-run `edgetl train`") from None


def export_run(run_path, formats: str | None = None, int8: bool = False, calib: int = DEFAULT_CALIB,
               max_drop: float = DEFAULT_MAX_DROP, keep_going: bool = False, seed: int | None = None,
               console=None, size_budget: float = DEFAULT_SIZE_BUDGET) -> dict:
    """Export, check and write the chosen formats; returns the manifest. Raises on the first failure
    (ArtifactCheckError, exit 3) unless keep_going, in which case it raises after all formats finished."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console()
    run, fmts, calib_items, val_items = check_inputs(run_path, formats, int8, calib, max_drop, size_budget)
    t_start = time.perf_counter()
    size, spec = run.image_size, run.preprocessing
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=False)
    with progress:
        t = progress.add_task("load model", total=1)
        model = load_model(run)
        progress.advance(t)
        t = progress.add_task("validation images", total=len(val_items))
        pix, y, _, skipped = decode_all(val_items, size, progress=lambda: progress.advance(t))
        if len(pix) == 0:
            raise EdgetlError(f"RUN {run.path}: none of the {len(val_items)} validation images could be decoded")
        val_x = preprocess(pix, spec)
        t = progress.add_task("keras reference", total=1)
        kp = predict(model, val_x)
        qat = bool(run.meta.get("qat"))
        float_model = strip_quantization(model) if qat else model
        fp = predict(float_model, val_x) if qat else kp
        progress.advance(t)
        ctx = ExportContext(run=run, model=model, float_model=float_model, float_probs=fp, size=size, spec=spec, classes=run.classes, val_x=val_x, val_y=y,
                            keras_probs=kp, macs=count_macs(float_model), qat=qat,
                            calib_items=calib_items, calib_n=calib,
                            seed=int(seed if seed is not None else run.meta.get("seed", 0) or 0), console=console)
        manifest = _load_manifest(run)
        results: dict[str, dict] = {}
        failures: list[str] = []
        task = progress.add_task("export", total=len(fmts))
        for fmt in fmts:
            progress.update(task, description=f"export {fmt.name}")
            t0 = time.perf_counter()
            path = run.path / fmt.filename
            try:
                raw = converted(ctx, fmt)
                blob, meta = embed(ctx, fmt, compact_checked(ctx, fmt, raw))
                par = parity(ctx, fmt, blob, max_drop)
                budget = None
                if fmt.precision == "int8" and size_budget:
                    progress.update(task, description=f"export {fmt.name} (size budget)")
                    try:
                        blob, meta, par, budget = fit_size_budget(ctx, fmt, blob, meta, par, size_budget,
                                                                  max_drop, results)
                    except Exception as e:  # the per-channel file is checked and good: keep it, say why
                        budget = {"percent": size_budget, "met": False, "per_tensor_layers": [],
                                  "reason": f"the size-budget step failed ({describe(e)})"}
            except Exception as e:  # a check failure, or a converter crash: one line, never a traceback
                if isinstance(e, EdgetlError):
                    reason, shown = str(e), f"{e} (file not written)"
                else:
                    reason = f"{fmt.name}: conversion failed ({describe(e)})"
                    shown = reason
                _drop_stale(path)
                results[fmt.name] = {"file": fmt.filename, "status": "failed", "reason": reason}
                failures.append(reason)
                if not keep_going:
                    manifest["artifacts"].update(results)
                    _write_manifest(run, manifest)
                    raise ArtifactCheckError(shown) from None
            else:
                write_bytes(path, blob)
                results[fmt.name] = {"file": fmt.filename, "bytes": len(blob), "sha256": sha256_file(path),
                                     "status": "ok", "parity": par, "seconds": round(time.perf_counter() - t0, 2),
                                     "input_dtype": meta["input"]["dtype"]}
                if budget is not None:
                    results[fmt.name]["size_budget"] = budget
            progress.advance(task)
    manifest["artifacts"].update(results)
    manifest["skipped_val"] = skipped
    manifest["checked_on"] = cpu.features()
    manifest["seconds"] = round(time.perf_counter() - t_start, 1)
    _write_manifest(run, manifest)
    _print_table(console, run, results, kp, y, fp if ctx.qat else None)
    if failures:
        for f in failures:
            console.print(f"[red]failed[/]: {f}", highlight=False)
        raise ArtifactCheckError(f"{len(failures)} of {len(fmts)} formats failed (see above); "
                                 f"the others are in {run.path / MANIFEST_FILE}")
    console.print(f"next: [bold]edgetl bench {run.path}[/]", highlight=False)
    return manifest


def _drop_stale(path: Path) -> None:
    if path.exists():
        os.unlink(path)


def _load_manifest(run: Run) -> dict:
    """Keep entries of other formats whose files are still there, unchanged."""
    old = {}
    try:
        old = run.manifest.get("artifacts", {})
    except Exception:
        pass
    keep = {}
    for name, a in old.items():
        p = run.path / a.get("file", "")
        if a.get("status") == "ok" and p.is_file() and sha256_file(p) == a.get("sha256"):
            keep[name] = a
    from datetime import datetime, timezone

    return {"run": str(run.path.resolve()), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_sha256": sha256_file(run.model_path), "artifacts": keep}


def _write_manifest(run: Run, manifest: dict) -> None:
    order = [n for n in FORMATS if n in manifest["artifacts"]]
    manifest["artifacts"] = {n: manifest["artifacts"][n] for n in order}
    write_json(run.path / MANIFEST_FILE, manifest)


def _print_table(console, run: Run, results: dict, kp, y, fp=None) -> None:
    from rich.table import Table

    tab = Table(title=f"edgetl export {run.path}")
    # file names come from the registry (FORMATS[name].filename); manifest.json lists them with sha256
    for c in ("format", "size", "of fp32", "accuracy", "agreement", "max |Δp|", "status"):
        tab.add_column(c, justify="left" if c in ("format", "status") else "right", no_wrap=True)
    tab.add_row("keras", _mb(run.model_path.stat().st_size), "-",
                f"{100 * float((kp.argmax(1) == y).mean()):.1f}%", "-", "-", "QAT ref" if fp is not None else "ref")
    if fp is not None:
        tab.add_row("keras float", "-", "-", f"{100 * float((fp.argmax(1) == y).mean()):.1f}%",
                    "-", "-", "float")
    notes = []
    for name, r in results.items():
        if r["status"] == "ok":
            p, b = r["parity"], r.get("size_budget") or {}
            ref = results.get(FP32_OF[FORMATS[name].suffix], {}).get("bytes") or b.get("fp32_bytes")
            tab.add_row(name, _mb(r["bytes"]), f"{100 * r['bytes'] / ref:.1f}%" if ref else "-",
                        f"{100 * p['accuracy']:.1f}%", f"{100 * p['agreement']:.1f}%",
                        f"{p['max_abs_diff']:.2g}", "[green]ok[/]")
            if b.get("per_tensor_layers"):
                k = len(b["per_tensor_layers"])
                notes.append(f"{name}: {k} layer{' uses' if k == 1 else 's use'} per-tensor weight scales to fit "
                             f"--size-budget {b['percent']:g}% (per-channel file: "
                             f"{100 * b['per_channel_bytes'] / b['fp32_bytes']:.1f}% of fp32, "
                             f"{100 * b['per_channel_parity']['accuracy']:.1f}% accuracy)")
            elif b and not b["met"]:
                notes.append(f"{name}: --size-budget {b['percent']:g}% not met, per-channel file kept: {b['reason']}")
        else:
            tab.add_row(name, "-", "-", "-", "-", "-", "[red]failed[/]")
    console.print(tab)
    for n in notes:
        console.print(n, highlight=False, soft_wrap=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"

"""The rows of a bench: each target x thread count measured by a fresh worker process on this machine,
then (with --emulate) each TFLite/ONNX target once more on aarch64 kernels under QEMU, scored on the
same images: accuracy and top-1 agreement with this machine, never latency."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core import runtime
from ..core.console import progress
from ..core.formats import FORMATS
from .targets import Target
from .worker import WORKER_TIMEOUT_S, run_worker


def measure_rows(targets: list[Target], threads: list[int], sets: dict, min_time: float, min_runs: int,
                 peak: dict, tmp: Path, emulate_cpu: str | None, console, run=None, cores: int | None = None,
                 amx: str = "auto") -> list[dict]:
    """One row per target x thread count, in that order; with `emulate_cpu`, each target's emulated row
    right after its host rows. `run` measures one job (default: a worker here, worker.run_worker), `cores`
    is the measuring machine's core count (default: this machine's); amx: each worker's AMX mode (core.amx)."""
    rows: list[dict] = []
    jobs = [(i, t, n) for i, t in enumerate(targets) for n in threads]
    with progress(console, transient=True) as prog:
        task = prog.add_task("benchmarking", total=len(jobs))
        for i, t, n in jobs:
            prog.update(task, description=f"{t.label} x{n} thread{'s' if n > 1 else ''}")
            # the first thread count's run keeps its per-image probabilities for the emulated rows
            probs = tmp / f"host-{i}.npy" if emulate_cpu and n == threads[0] else None
            rows.append(measure_row(t, n, sets, min_time, min_runs, peak, save_probs=probs, run=run, cores=cores,
                                    amx=amx))
            prog.advance(task)
    if emulate_cpu:
        rows = _with_emulated_rows(targets, rows, emulate_cpu, sets, tmp, console)
    return rows


def _base_row(t: Target, threads: int) -> dict:
    return {"name": t.label, "format": t.fmt, "file": str(t.path), "threads": threads,
            "bytes": t.path.stat().st_size if t.path.is_file() else None, "status": t.status or "ok"}


def measure_row(t: Target, threads: int, sets: dict, min_time: float, min_runs: int, peak: dict,
                save_probs: Path | None = None, run=None, cores: int | None = None, amx: str = "auto") -> dict:
    row = {**_base_row(t, threads), **t.extra}
    if t.meta:
        row["macs"] = t.meta.get("macs")
        row["image_size"] = int(t.meta["preprocessing"]["size"][0])
        row["alpha"] = (t.meta.get("source") or {}).get("alpha")
    if t.status:
        return row
    if t.fmt == "keras" and not runtime.tensorflow_installed():
        row["status"] = "skipped: TensorFlow not installed"
        return row
    ev = sets.get(t.eval_key) if t.eval_key else None
    job = {"path": str(t.path), "threads": threads, "min_time": min_time, "min_runs": min_runs,
           "pixels": ev["pixels"] if ev else None, "labels": ev["labels"] if ev else None, "amx": amx}
    if ev:
        row["accuracy_split"] = ev["split"]  # "test", "val" or "data" (--data)
    if save_probs is not None and ev:
        job["save_probs"] = str(save_probs)
    res = (run or run_worker)(job)
    res.pop("traceback", None)
    row.update({k: v for k, v in res.items() if k not in ("classes",) and not (k == "macs" and v is None)})
    lat = row.get("latency_ms")
    if row["status"] == "ok" and lat and row.get("macs"):
        row["gmacs_per_s"] = row["macs"] / (lat["p50"] / 1e3) / 1e9
        pk = peak.get("fp32_gmacs_per_core")
        # % of the FP32 peak only means something for float kernels (int8 runs on other, faster units)
        if pk and FORMATS.get(t.fmt) is not None and FORMATS[t.fmt].precision != "int8":
            row["pct_of_fp32_peak"] = 100.0 * row["gmacs_per_s"] / (pk * min(threads, cores or os.cpu_count() or threads))
    return row


def _with_emulated_rows(targets: list[Target], rows: list[dict], cpu: str, sets: dict, tmp: Path,
                        console) -> list[dict]:
    """Every TFLite/ONNX target once more under QEMU, its row placed right after its host rows.
    Runs after all host timing (so QEMU never competes with a timed row), two at a time on 2+ cores."""
    todo = [(i, t) for i, t in enumerate(targets) if t.fmt != "keras"]
    with progress(console, transient=True) as prog, \
            ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        task = prog.add_task(f"{cpu} (emulated): {len(todo)} file(s)", total=len(todo))
        futures = {}
        for i, t in todo:
            futures[i] = pool.submit(_emulated_row, t, cpu, sets, tmp / f"host-{i}.npy", tmp / f"emu-{i}.npy")
            futures[i].add_done_callback(lambda _: prog.advance(task))
        per_target = len(rows) // max(1, len(targets))
        out: list[dict] = []
        for i in range(len(targets)):
            out += rows[i * per_target:(i + 1) * per_target]
            if i in futures:
                out.append(futures[i].result())
    return out


def _emulated_row(t: Target, cpu: str, sets: dict, host_probs: Path, emu_probs: Path) -> dict:
    from . import armenv

    row = {**_base_row(t, 1), "name": f"{t.label} @{cpu} (emulated)", "emulated_cpu": cpu,
           "alpha": ((t.meta or {}).get("source") or {}).get("alpha")}
    ev = sets.get(t.eval_key) if t.eval_key else None
    if t.status:
        return row
    if ev is None:
        row["status"] = "skipped: no labelled images to compare with this machine (pass --data DIR)"
        return row
    job = {"path": str(t.path), "threads": 1, "min_time": 0.0, "min_runs": 0, "timing": False,
           "pixels": ev["pixels"], "labels": ev["labels"], "save_probs": str(emu_probs)}
    start = time.perf_counter()
    res = armenv.run_job(job, cpu, timeout=WORKER_TIMEOUT_S + 10 * ev["images"])
    # wall time of the whole emulated process: how long the check took, NOT a device latency
    row["emulation_wall_s"] = round(time.perf_counter() - start, 1)
    row.update({k: res[k] for k in ("status", "accuracy", "per_class_accuracy", "eval_images", "runtime",
                                     "input_dtype", "macs", "image_size") if k in res})
    if row["status"] == "ok":
        row.update(agreement(host_probs, emu_probs))
    return row


def agreement(host_probs: Path, emu_probs: Path) -> dict:
    """Per-image comparison of two runs of one file: top-1 agreement, max |Δp|, which images differ."""
    if not host_probs.is_file():
        return {"agreement_note": "the run on this machine failed or had no images: nothing to compare"}
    h, e = np.load(host_probs), np.load(emu_probs)
    ht, et = h.argmax(1), e.argmax(1)
    return {"agreement_vs_host": float((ht == et).mean()), "max_abs_dp_vs_host": float(np.abs(h - e).max()),
            "disagreements_vs_host": np.flatnonzero(ht != et).tolist(), "top1": et.tolist(),
            "host_top1": ht.tolist()}


def emulation_info(cpu: str) -> dict:
    from . import armenv

    st = armenv.status()
    return {"cpu": cpu, "qemu": f"qemu-aarch64-static {st.get('qemu')} (Debian)", "guest_python": st.get("python"),
            "runtimes": st.get("pins"), "env": st["path"],
            "note": "accuracy and top-1 agreement only: timing under emulation is not device latency"}

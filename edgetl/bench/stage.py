"""`edgetl bench`: latency, accuracy, size and memory of every artifact, side by side, on this CPU.

Eval images are decoded ONCE here (same decoding as training) and handed to the workers as a .npy, so
rows measure the model, not JPEG decoding. Each artifact x thread count runs in a fresh
`python -m edgetl.bench.worker` process (memory and caches never leak between rows; a crash only
fails its own row). TensorFlow is never imported here; the Keras row's worker imports it, when it is
installed.

`--emulate` (with an aarch64 `--device` profile that names a `qemu_cpu`) runs every TFLite/ONNX file
once more with the aarch64 builds of the runtimes under user-mode QEMU (edgetl.bench.emulate): those rows
report accuracy and top-1 agreement with this machine's run on the same images, never latency.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import cpu, data, images, runtime
from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import FORMATS
from ..core.rundir import META_FILE, Run, write_json
from .worker import RESULT_TAG

REPO_DEVICES = Path(__file__).resolve().parents[1] / "devices"
PACKAGED_DEVICES = Path(__file__).resolve().parent / "devices"  # a wheel ships devices/ as edgetl.devices
WORKER_TIMEOUT_S = 900


# ---- options ----------------------------------------------------------------------------------------
def parse_threads(spec: str | None) -> list[int] | None:
    """`--threads 1,2,4` -> [1, 2, 4]; every value must be a whole number >= 1."""
    if spec is None or str(spec).strip() == "":
        return None
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            t = int(part)
        except ValueError:
            raise EdgetlError(f"--threads {spec!r}: give whole numbers >= 1, comma-separated (e.g. 1,2,4)") from None
        if t <= 0:
            raise EdgetlError(f"--threads {spec!r}: thread counts must be >= 1 (got {t})")
        out.append(t)
    return list(dict.fromkeys(out))


def device_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("EDGETL_DEVICES"):
        dirs.append(Path(os.environ["EDGETL_DEVICES"]))
    dirs += [REPO_DEVICES, Path.cwd() / "devices", PACKAGED_DEVICES]
    return [d for d in dict.fromkeys(d.resolve() for d in dirs) if d.is_dir()]


def available_devices() -> list[str]:
    return sorted({p.stem for d in device_dirs() for p in d.glob("*.toml")})


def load_device(name: str) -> dict:
    """A device profile (devices/NAME.toml, or a path to a .toml file)."""
    import tomllib

    p = Path(name)
    if not (p.suffix == ".toml" and p.is_file()):
        p = next((d / f"{name}.toml" for d in device_dirs() if (d / f"{name}.toml").is_file()), None)
        if p is None:
            raise EdgetlError(f"--device {name!r}: unknown profile; available: {', '.join(available_devices()) or 'none'}"
                              " (or give a path to a .toml file)")
    try:
        prof = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgetlError(f"--device {p}: not valid TOML ({e})") from None
    prof.setdefault("name", p.stem)
    prof["file"] = str(p)
    if "threads" in prof:
        prof["threads"] = parse_threads(",".join(str(t) for t in prof["threads"]))
    bad = [f for f in prof.get("formats", []) if f not in FORMATS]
    if bad:
        raise EdgetlError(f"--device {p}: unknown formats {bad}; valid: {', '.join(FORMATS)}")
    return prof


def emulation_profiles() -> list[str]:
    """Profiles that name an aarch64 core for `--emulate`."""
    names = []
    for n in available_devices():
        try:
            p = load_device(n)
        except EdgetlError:
            continue
        if p.get("qemu_cpu") and p.get("arch") == "aarch64":
            names.append(n)
    return names


def emulation_cpu(profile: dict | None) -> str:
    """The core that `--emulate` runs (the profile's `qemu_cpu`), once the arm env is known to be ready."""
    from . import emulate

    accepted = ", ".join(emulation_profiles()) or "none"
    if profile is None:
        raise EdgetlError(f"--emulate needs --device with an aarch64 qemu_cpu: {accepted}")
    cpu = profile.get("qemu_cpu")
    if not cpu or profile.get("arch") != "aarch64":
        raise EdgetlError(f"--emulate: profile {profile['name']!r} names no aarch64 qemu_cpu; use --device {accepted}")
    if cpu not in emulate.CPUS:
        raise EdgetlError(f"--device {profile['file']}: qemu_cpu {cpu!r} is not one of {', '.join(emulate.CPUS)}")
    emulate.require()
    return cpu


# ---- host description ----------------------------------------------------------------------------
def host_info() -> dict:
    ci = cpu.cpuinfo()
    model = ci.get("model name") or ci.get("Model") or platform.processor() or "unknown"
    return {"cpu": model, "vendor": ci.get("vendor_id"), "family": ci.get("cpu family"), "model": ci.get("model"),
            "cores": os.cpu_count(), "os": platform.platform(), "arch": platform.machine(),
            "python": platform.python_version(), "peak": cpu.peak(ci), "versions": runtime.runtime_versions(),
            "cpu_features": cpu.features()}


# ---- what to measure --------------------------------------------------------------------------------
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


def collect_targets(paths: list[Path], formats: list[str] | None) -> list[Target]:
    for p in paths:
        if not p.exists():
            raise EdgetlError(f"{p}: no such run directory or model file")
    multi = len(paths) > 1
    out: list[Target] = []
    for p in paths:
        if p.is_dir():
            run = Run(p)
            found = [f for f in FORMATS.values() if (p / f.filename).is_file()]
            if not [f for f in found if f.runtime != "tensorflow"]:
                raise EdgetlError(f"RUN {p}: no exported artifacts; run `edgetl export {p}` first")
            manifest = run.manifest.get("artifacts", {})
            for f in FORMATS.values():  # formats export could not write are named too, with the reason
                entry = manifest.get(f.name) or {}
                if f not in found and entry.get("status") == "failed" and (not formats or f.name in formats):
                    out.append(Target(p / f.filename, f"{p.name}/{f.name}" if multi else f.name, f.name, run=run,
                                      status=f"failed at export: {entry.get('reason', 'see manifest.json')}"))
            for f in found:
                if formats and f.name not in formats:
                    continue
                t = Target(p / f.filename, f"{p.name}/{f.name}" if multi else f.name, f.name, run=run)
                st = (manifest.get(f.name) or {}).get("status")
                if st and st != "ok":
                    t.extra["export_status"] = st
                out.append(t)
        else:
            out.append(Target(p, ""))  # labelled after its format is known (assign_labels)
    return out


def assign_labels(targets: list[Target]) -> None:
    """Bare files are named by their format (unique) or parent-folder/format; unreadable ones by path."""
    for t in targets:
        if t.label:
            continue
        same = [o for o in targets if o.fmt and o.fmt == t.fmt]
        t.label = t.fmt if t.fmt and len(same) == 1 else f"{t.path.parent.name}/{t.fmt or t.path.name}"


def describe(t: Target) -> None:
    """Read the artifact's metadata in the parent (cheap): classes, size and eval source. Errors -> status."""
    if t.status:
        return
    try:
        fmt, meta = runtime.identify(t.path)
    except EdgetlError as e:
        t.status = f"error: {e}"
        return
    t.fmt, t.meta = fmt.name, meta
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


# ---- eval set: decoded once -------------------------------------------------------------------------
def prepare_eval(targets: list[Target], data_dir: Path | None, tmp: Path, console) -> dict:
    """Decode each distinct (image list, size) once into tmp/*.npy; returns {key: info}."""
    sets: dict = {}
    for t in targets:
        if t.status or t.meta is None:
            continue
        classes, size = list(t.meta["classes"]), int(t.meta["preprocessing"]["size"][0])
        if data_dir is not None:
            _, items, ignored = data.labelled_folder(data_dir, classes)  # raises on class mismatch
            source = f"--data {data_dir}"
        elif t.run is not None:
            if t.run.classes != classes:
                t.status = f"error: labels {classes} differ from its run's {t.run.classes}"
                continue
            items, ignored = t.run.split_items("val"), []
            source = f"validation split of {t.run.path}"
            present = [it for it in items if Path(it[0]).is_file()]
            if not present:  # e.g. the run folder was copied to a Pi without its images
                source = None
                if items:
                    t.extra["accuracy_note"] = (f"the run's {len(items)} validation images are not on this machine: "
                                                "pass --data DIR")
                    continue
            elif len(present) < len(items):
                ignored = [{"file": p, "reason": "missing"} for p, _ in items if not Path(p).is_file()]
                items = present
        else:
            items, ignored, source = [], [], None
        if not source:
            t.extra.setdefault("accuracy_note", "no labelled images: pass --data DIR")
            continue
        key = f"{source}|{size}|{','.join(classes)}"
        if key not in sets:
            sets[key] = _decode(items, size, len(sets), tmp, console, source)
            sets[key]["ignored"] = len(ignored)
        t.eval_key = key
    return sets


def _decode(items, size, idx, tmp: Path, console, source) -> dict:
    from rich.progress import Progress

    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"decoding {len(items)} eval images at {size}px", total=len(items))
        pix, labels, _, skipped = images.decode_all(items, size, progress=lambda: prog.advance(task))
    px, lb = tmp / f"eval{idx}_{size}.npy", tmp / f"eval{idx}_{size}_labels.npy"
    np.save(px, pix)
    np.save(lb, labels)
    for s in skipped:
        console.print(f"[yellow]skipped[/] {s['file']}: {s['reason']}", highlight=False)
    return {"source": source, "size": size, "images": int(len(labels)), "skipped": skipped,
            "pixels": str(px), "labels": str(lb)}


# ---- measuring ----------------------------------------------------------------------------------------
def run_worker(job: dict, python: str | None = None, timeout: float = WORKER_TIMEOUT_S,
               command: list[str] | None = None, env: dict | None = None) -> dict:
    """Run one job in a fresh `python -m edgetl.bench.worker`; `command` replaces that argv (e.g. the same
    under QEMU) and `env` the inherited environment."""
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    # pin the math libraries' own pools to the asked thread count too (numpy's BLAS is not used for timing)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(job["threads"])
    try:
        proc = subprocess.run(command or [python or sys.executable, "-m", "edgetl.bench.worker"],
                              input=json.dumps(job), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"error: timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    if proc.returncode < 0:
        return {"status": f"error: worker crashed (signal {-proc.returncode})"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"status": f"error: worker exited {proc.returncode}: {tail}"}


def bench(paths: list[Path], data_dir: Path | None = None, device: str | None = None, threads: str | None = None,
          json_path: Path | None = None, out: Path | None = None, compare: Path | None = None,
          min_time: float = 2.0, min_runs: int = 50, formats: str | None = None, emulate: bool = False,
          console=None) -> dict:
    from rich.console import Console

    console = console or Console()
    # -- check every option before doing any work
    thread_list = parse_threads(threads)
    if min_time <= 0:
        raise EdgetlError(f"--min-time {min_time}: must be > 0 seconds")
    if min_runs < 1:
        raise EdgetlError(f"--min-runs {min_runs}: must be >= 1")
    fmt_list = None
    if formats:
        fmt_list = [s.strip() for s in formats.split(",") if s.strip()]
        bad = [f for f in fmt_list if f not in FORMATS]
        if bad:
            raise EdgetlError(f"--format {bad[0]!r}: valid formats: {', '.join(FORMATS)}")
    profile = load_device(device) if device else None
    if profile and fmt_list is None and profile.get("formats"):
        fmt_list = list(profile["formats"])
    thread_list = thread_list or (profile or {}).get("threads") or [1]
    prev = _load_compare(compare) if compare else None
    if data_dir is not None and not Path(data_dir).is_dir():
        raise EdgetlError(f"--data {data_dir}: no such folder")
    emu_cpu = emulation_cpu(profile) if emulate else None

    targets = collect_targets([Path(p) for p in paths], fmt_list)
    if not targets:
        raise EdgetlError(f"no artifacts match --format {formats}")
    for t in targets:
        describe(t)
    assign_labels(targets)
    keras_macs(targets)
    host = host_info()
    peak = dict(host["peak"])
    if profile and profile.get("peak", {}).get("fp32_gflops_per_core"):
        peak = {**profile["peak"], "basis": profile["peak"].get("basis", "device profile")}
        peak.setdefault("fp32_gmacs_per_core", peak["fp32_gflops_per_core"] / 2)
    device_name = (profile or {}).get("name") or _host_slug(host)
    host_arch = host["arch"]
    if profile and profile.get("arch") and profile["arch"] != host_arch:
        console.print(f"[yellow]note:[/] profile {profile['name']!r} is for {profile['arch']}, this machine is "
                      f"{host_arch}: its threads/formats are applied, its reference numbers are not comparable")
    if emu_cpu:
        console.print(f"--emulate: each TFLite/ONNX file also runs on aarch64 kernels under QEMU ({emu_cpu}): "
                      "accuracy and agreement with this machine only, no latency", highlight=False)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        sets = prepare_eval(targets, Path(data_dir) if data_dir else None, Path(tmp), console)
        jobs = [(i, t, n) for i, t in enumerate(targets) for n in thread_list]
        from rich.progress import Progress

        with Progress(console=console, transient=True) as prog:
            task = prog.add_task("benchmarking", total=len(jobs))
            for i, t, n in jobs:
                prog.update(task, description=f"{t.label} x{n} thread{'s' if n > 1 else ''}")
                # the first thread count's run keeps its per-image probabilities for the emulated rows
                probs = Path(tmp) / f"host-{i}.npy" if emu_cpu and n == thread_list[0] else None
                rows.append(_measure_row(t, n, sets, min_time, min_runs, peak, save_probs=probs))
                prog.advance(task)
        if emu_cpu:
            rows = _with_emulated_rows(targets, rows, emu_cpu, sets, Path(tmp), console)

    result = {"edgetl_bench": 1, "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "device": device_name, "profile": profile, "host": host, "peak": peak,
              "settings": {"threads": thread_list, "min_time_s": min_time, "min_runs": min_runs,
                           "formats": fmt_list, "data": str(data_dir) if data_dir else None, "emulate": emu_cpu},
              "eval_sets": [{k: v for k, v in s.items() if k not in ("pixels", "labels")} for s in sets.values()],
              "rows": rows}
    if emu_cpu:
        result["emulation"] = _emulation_info(emu_cpu)
    result["summary"] = summarize(rows)
    if prev is not None:
        apply_compare(rows, prev)
        result["compared_to"] = str(compare)

    render(result, console)
    files = write_outputs(result, [Path(p) for p in paths], out, json_path, device_name, console)
    result["files"] = files
    if all(r["status"] != "ok" for r in rows):
        raise EdgetlError("no artifact could be measured (see the status column)")
    failed = [r["name"] for r in rows if r["status"].startswith(("error", "failed"))]
    if failed:
        raise ArtifactCheckError(f"{len(failed)} of {len(rows)} rows failed ({', '.join(dict.fromkeys(failed))}); "
                                 "the table and files above hold every row")
    return result


def _host_slug(host: dict) -> str:
    cpu = "".join(c if c.isalnum() else "-" for c in (host["cpu"] or "cpu").lower()).strip("-")
    while "--" in cpu:
        cpu = cpu.replace("--", "-")
    return f"{host['arch']}-{cpu}"[:40]


def _measure_row(t: Target, threads: int, sets: dict, min_time: float, min_runs: int, peak: dict,
                 save_probs: Path | None = None) -> dict:
    row = {"name": t.label, "format": t.fmt, "file": str(t.path), "threads": threads,
           "bytes": t.path.stat().st_size if t.path.is_file() else None, "status": t.status or "ok",
           **t.extra}
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
           "pixels": ev["pixels"] if ev else None, "labels": ev["labels"] if ev else None}
    if save_probs is not None and ev:
        job["save_probs"] = str(save_probs)
    res = run_worker(job)
    res.pop("traceback", None)
    row.update({k: v for k, v in res.items() if k not in ("classes",) and not (k == "macs" and v is None)})
    lat = row.get("latency_ms")
    if row["status"] == "ok" and lat and row.get("macs"):
        row["gmacs_per_s"] = row["macs"] / (lat["p50"] / 1e3) / 1e9
        pk = peak.get("fp32_gmacs_per_core")
        # % of the FP32 peak only means something for float kernels (int8 runs on other, faster units)
        if pk and FORMATS.get(t.fmt) is not None and FORMATS[t.fmt].precision != "int8":
            row["pct_of_fp32_peak"] = 100.0 * row["gmacs_per_s"] / (pk * min(threads, os.cpu_count() or threads))
    return row


# ---- emulated rows: the same files on aarch64 kernels under QEMU ---------------------------------------
def _with_emulated_rows(targets: list[Target], rows: list[dict], cpu: str, sets: dict, tmp: Path,
                        console) -> list[dict]:
    """Every TFLite/ONNX target once more under QEMU, its row placed right after its host rows.
    Runs after all host timing (so QEMU never competes with a timed row), two at a time on 2+ cores."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import Progress

    todo = [(i, t) for i, t in enumerate(targets) if t.fmt != "keras"]
    with Progress(console=console, transient=True) as prog, \
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
    from . import emulate

    row = {"name": f"{t.label} @{cpu} (emulated)", "format": t.fmt, "file": str(t.path), "threads": 1,
           "bytes": t.path.stat().st_size if t.path.is_file() else None, "status": t.status or "ok",
           "emulated_cpu": cpu, "alpha": ((t.meta or {}).get("source") or {}).get("alpha")}
    ev = sets.get(t.eval_key) if t.eval_key else None
    if t.status:
        return row
    if ev is None:
        row["status"] = "skipped: no labelled images to compare with this machine (pass --data DIR)"
        return row
    job = {"path": str(t.path), "threads": 1, "min_time": 0.0, "min_runs": 0, "timing": False,
           "pixels": ev["pixels"], "labels": ev["labels"], "save_probs": str(emu_probs)}
    start = time.perf_counter()
    res = emulate.run_job(job, cpu, timeout=WORKER_TIMEOUT_S + 10 * ev["images"])
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


def _emulation_info(cpu: str) -> dict:
    from . import emulate

    st = emulate.status()
    return {"cpu": cpu, "qemu": f"qemu-aarch64-static {st.get('qemu')} (Debian)", "guest_python": st.get("python"),
            "runtimes": st.get("pins"), "env": st["path"],
            "note": "accuracy and top-1 agreement only: timing under emulation is not device latency"}


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok" and r.get("latency_ms") and not r.get("emulated_cpu")]
    out: dict = {}
    if not ok:
        return out
    for n in sorted({r["threads"] for r in ok}):
        at = [r for r in ok if r["threads"] == n]
        best = min((r for r in at if r["format"] != "keras"), key=lambda r: r["latency_ms"]["p50"], default=None)
        keras = next((r for r in at if r["format"] == "keras"), None)
        s: dict = {}
        if best:
            s["best"] = {"name": best["name"], "p50_ms": best["latency_ms"]["p50"]}
        if best and keras:
            s["speedup_best_vs_keras"] = keras["latency_ms"]["p50"] / best["latency_ms"]["p50"]
        for rt in ("tflite", "onnx"):
            f32 = next((r for r in at if r["format"] == f"{rt}-fp32"), None)
            i8 = next((r for r in at if r["format"] == f"{rt}-int8"), None)
            if f32 and i8:
                s[f"{rt}_int8_vs_fp32_speed"] = f32["latency_ms"]["p50"] / i8["latency_ms"]["p50"]
        out[f"threads={n}"] = s
    return out


# ---- compare ------------------------------------------------------------------------------------------
def _load_compare(path: Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise EdgetlError(f"--compare {p}: no such file")
    try:
        prev = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgetlError(f"--compare {p}: not a JSON file") from None
    if not isinstance(prev, dict) or "rows" not in prev:
        raise EdgetlError(f"--compare {p}: not an `edgetl bench` JSON (no 'rows')")
    return prev


def apply_compare(rows: list[dict], prev: dict) -> None:
    old = {(r.get("name"), r.get("threads")): r for r in prev["rows"]}
    by_fmt: dict = {}
    for r in prev["rows"]:
        if not r.get("emulated_cpu"):
            by_fmt.setdefault((r.get("format"), r.get("threads")), []).append(r)
    for r in rows:
        o = old.get((r["name"], r["threads"]))
        if o is None and not r.get("emulated_cpu") and len(by_fmt.get((r["format"], r["threads"]), [])) == 1:
            # same format, renamed row (an emulated row is only ever compared with an emulated row)
            o = by_fmt[(r["format"], r["threads"])][0]
        if o is None:
            r["compare"] = {"note": "new row"}
            continue
        c: dict = {}
        if r.get("latency_ms") and o.get("latency_ms"):
            c["p50_ms_before"] = o["latency_ms"]["p50"]
            c["p50_change_pct"] = 100.0 * (r["latency_ms"]["p50"] / o["latency_ms"]["p50"] - 1.0)
        if r.get("accuracy") is not None and o.get("accuracy") is not None:
            c["accuracy_change"] = r["accuracy"] - o["accuracy"]
        if r.get("bytes") and o.get("bytes"):
            c["bytes_change_pct"] = 100.0 * (r["bytes"] / o["bytes"] - 1.0)
        r["compare"] = c


# ---- output ---------------------------------------------------------------------------------------------
def _fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def render(result: dict, console) -> None:
    from rich.table import Table

    rows = result["rows"]
    host = result["host"]
    comp = any("compare" in r for r in rows)
    emu = any(r.get("emulated_cpu") for r in rows)
    tab = Table(title=f"edgetl bench — {result['device']} — {host['cpu']}, {host['cores']} cores, {host['arch']}",
                title_justify="left")
    cols = [("artifact", "left"), ("thr", "right"), ("load ms", "right"), ("p50 ms", "right"),
            ("p90/p99 ms", "right"), ("mean ± std", "right"), ("cpu ms", "right"), ("img/s", "right"), ("accuracy", "right"),
            ("MB", "right"), ("RSS MB", "right"), ("GMAC/s (% peak)", "right")]
    if emu:
        cols.insert(cols.index(("accuracy", "right")) + 1, ("top-1 vs host", "right"))
    if comp:
        cols += [("Δ p50", "right"), ("Δ acc", "right")]
    cols.append(("status", "left"))
    for col, just in cols:
        tab.add_column(col, justify=just, no_wrap=col != "status")
    for r in rows:
        lat = r.get("latency_ms") or {}
        acc = r.get("accuracy")
        gm = r.get("gmacs_per_s")
        pct = r.get("pct_of_fp32_peak")
        cells = [r["name"], str(r["threads"]), _fmt(r.get("load_ms"), ".0f"), _fmt(lat.get("p50")),
                 f"{lat['p90']:.2f}/{lat['p99']:.2f}" if lat else "–",
                 f"{lat['mean']:.2f} ± {lat['std']:.2f}" if lat else "–", _fmt((r.get("cpu_ms") or {}).get("p50")),
                 _fmt(r.get("throughput_ips"), ".0f"),
                 f"{100 * acc:.1f}%" if acc is not None else "–",
                 _fmt(r["bytes"] / 1e6 if r.get("bytes") else None),
                 _fmt(None if r.get("emulated_cpu") else r.get("peak_rss_mb"), ".0f"),
                 (f"{gm:.1f}" + (f" ({pct:.0f}%)" if pct is not None else "")) if gm is not None else "–"]
        if emu:
            cells.insert(cols.index(("top-1 vs host", "right")), _agreement_cell(r))
        if comp:
            c = r.get("compare", {})
            cells += [f"{c['p50_change_pct']:+.1f}%" if "p50_change_pct" in c else c.get("note", "–"),
                      f"{100 * c['accuracy_change']:+.1f} pt" if "accuracy_change" in c else "–"]
        st = r["status"]
        cells.append(f"[green]{st}[/]" if st == "ok" else f"[yellow]{st}[/]" if st.startswith("skipped")
                     else f"[red]{st}[/]")
        tab.add_row(*cells)
    if not console.is_terminal:  # files and pipes get the full table (rich would squeeze it into 80 columns)
        from rich.console import Console

        Console(file=console.file, width=max(console.width, 200 if emu else 170), no_color=console.no_color).print(tab)
    else:
        console.print(tab)
    for r in rows:
        for mode, st in (r.get("keras_modes_ms") or {}).items():
            console.print(f"{r['name']} x{r['threads']} called as {mode.replace('_', ' ')}: p50 {st['p50']:.2f} ms "
                          f"(the row above times the model traced once into a tf.function graph)", highlight=False)
    for name, session in dict.fromkeys((r["name"], r["session"]) for r in rows if r.get("session") not in (None, "", "default")):
        console.print(f"{name}: onnxruntime session {session}", highlight=False)
    console.print("cpu ms = process CPU time per inference (p50): not inflated when other programs share the CPU",
                  highlight=False)
    if emu:
        em = result.get("emulation") or {}
        console.print(f"(emulated) rows: the same files run by the aarch64 builds of the runtimes under "
                      f"qemu-aarch64-static -cpu {em.get('cpu')}: accuracy, and top-1 vs host = share of images whose "
                      "top-1 equals this machine's run of the file (Δp≤ = largest probability difference); "
                      "no latency: emulated, not device latency", highlight=False)
    pk = result["peak"]
    if pk.get("fp32_gflops_per_core"):
        console.print(f"FP32 peak per core: {pk['fp32_gflops_per_core']} GFLOP/s = {pk.get('fp32_gmacs_per_core')} "
                      f"GMAC/s ({pk.get('basis')}); % peak = GMAC/s at p50 / (peak x threads)", highlight=False)
    for es in result["eval_sets"]:
        msg = f"accuracy on {es['images']} images ({es['source']}, {es['size']} px)"
        if es["skipped"]:
            msg += f"; {len(es['skipped'])} unreadable image(s) skipped"
        if es.get("ignored"):
            msg += f"; {es['ignored']} file(s) missing or not images"
        console.print(msg, highlight=False)
    for note in dict.fromkeys(r["accuracy_note"] for r in rows if r.get("accuracy_note")):
        console.print(f"[yellow]no accuracy:[/] {note}", highlight=False)
    for k, s in result.get("summary", {}).items():
        bits = []
        if "best" in s:
            bits.append(f"fastest {s['best']['name']} ({s['best']['p50_ms']:.2f} ms p50)")
        if "speedup_best_vs_keras" in s:
            bits.append(f"{s['speedup_best_vs_keras']:.1f}x faster than the Keras model (graph call)")
        for rt in ("tflite", "onnx"):
            if f"{rt}_int8_vs_fp32_speed" in s:
                v = s[f"{rt}_int8_vs_fp32_speed"]
                bits.append(f"{rt} int8 is {v:.2f}x the speed of fp32 ({'faster' if v > 1 else 'slower'})")
        if bits:
            console.print(f"{k}: " + "; ".join(bits), highlight=False)
    prof = result.get("profile")
    if prof and prof.get("reference"):
        console.print(f"published reference latencies for {prof.get('description', prof['name'])}:", highlight=False)
        for ref in prof["reference"]:
            console.print(f"  {ref.get('model')}: {ref.get('latency_ms')} ms ({ref.get('runtime', '')}, "
                          f"{ref.get('threads', '?')} threads) — {ref.get('source')}", highlight=False)


def _agreement_cell(r: dict) -> str:
    a = r.get("agreement_vs_host")
    if a is None:
        return "–"
    return f"{100 * a:.1f}% (Δp≤{r['max_abs_dp_vs_host']:.3f})"


CSV_COLUMNS = ["name", "format", "threads", "status", "load_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
               "runs", "cpu_p50_ms", "throughput_ips", "accuracy", "eval_images", "bytes", "peak_rss_mb", "macs", "gmacs_per_s",
               "pct_of_fp32_peak", "image_size", "alpha", "file", "emulated_cpu", "agreement_vs_host",
               "max_abs_dp_vs_host", "emulation_wall_s"]


def write_outputs(result: dict, paths: list[Path], out: Path | None, json_path: Path | None, device: str,
                  console) -> dict:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if out is not None:
        folder, stem = Path(out), "bench"
    else:
        runs = [p for p in paths if p.is_dir()]
        folder = (runs[0] / "bench") if len(runs) == 1 else Path("bench")
        stem = f"{device}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": str(folder / f"{stem}.json"), "csv": str(folder / f"{stem}.csv")}
    write_json(files["json"], result)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, result)
        files["json_copy"] = str(json_path)
    tmp = folder / f".{stem}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in result["rows"]:
            lat = r.get("latency_ms") or {}
            w.writerow({**{k: r.get(k) for k in CSV_COLUMNS},
                        **{f"{k}_ms": lat.get(k) for k in ("p50", "p90", "p99", "mean", "std")},
                        "runs": lat.get("runs"), "cpu_p50_ms": (r.get("cpu_ms") or {}).get("p50")})
    os.replace(tmp, files["csv"])
    png = folder / f"{stem}.png"
    if plot(result, png):
        files["png"] = str(png)
    else:
        console.print("[yellow]note:[/] matplotlib is not installed: no PNG plot "
                      "(pip install 'edgetl[plot]' to get one)")
    console.print("wrote " + ", ".join(files.values()), highlight=False)
    return files


def plot(result: dict, png: Path) -> bool:
    """Latency (p50) against accuracy per artifact; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pts = [r for r in result["rows"] if r["status"] == "ok" and r.get("latency_ms")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # artifacts often share one accuracy: stagger the labels in latency order so they stay readable
    for i, r in enumerate(sorted(pts, key=lambda r: r["latency_ms"]["p50"])):
        acc = r.get("accuracy")
        y = 100 * acc if acc is not None else 0.0
        ax.scatter(r["latency_ms"]["p50"], y, s=40)
        ax.annotate(f"{r['name']} x{r['threads']}", (r["latency_ms"]["p50"], y), fontsize=7,
                    xytext=(4, 6 + 9 * (i % 4)), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "alpha": 0.5})
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency p50 (ms, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"edgetl bench — {result['device']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png)
    return True

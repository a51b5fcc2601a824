"""One bench measurement in a fresh process: `python -m edgetl.bench.worker` (JSON job on stdin).

Both ends of that exchange live here: `run_worker` (the parent) starts one worker per artifact and thread
count, so memory and warm caches never leak between rows and a crashing runtime only fails its own row;
`main` (the child) answers with one line on stdout prefixed with RESULT_TAG (runtimes may print their
own chatter).

Optional job keys: "timing": false skips the timed runs (accuracy only, e.g. under QEMU, where
timing means nothing); "save_probs": PATH writes the per-image probabilities (N, C) there as .npy;
"amx": "auto" | "on" | "off" decides whether the process may use AMX (core.amx), before the runtime loads.
Imports stay lazy and need only numpy and the runtimes: this module also runs under emulation.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

RESULT_TAG = "EDGETL_BENCH_RESULT "
WORKER_TIMEOUT_S = 900


def run_worker(job: dict, python: str | None = None, timeout: float = WORKER_TIMEOUT_S,
               command: list[str] | None = None, env: dict | None = None) -> dict:
    """Run one job in a fresh `python -m edgetl.bench.worker`; `command` replaces that argv (e.g. the same
    under QEMU) and `env` the inherited environment."""
    import subprocess  # here, not at the top: the worker process itself never starts one

    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    # pin the math libraries' own pools to the asked thread count too (numpy's BLAS is not used for timing)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(job["threads"])
    try:
        proc = subprocess.run(command or [python or sys.executable, "-m", "edgetl.bench.worker"],
                              input=json.dumps(job), capture_output=True, text=True, timeout=timeout, env=env,
                              preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
    except subprocess.TimeoutExpired:
        return {"status": f"error: timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    if proc.returncode < 0:
        return {"status": f"error: worker crashed (signal {-proc.returncode})"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"status": f"error: worker exited {proc.returncode}: {tail}"}


def die_with_parent() -> None:
    """In the worker, before exec: the kernel kills it when the bench that started it dies, even by SIGKILL
    (Linux prctl PR_SET_PDEATHSIG through ctypes: the standard library has no call for it)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of THIS process. On Linux VmHWM (per address space): getrusage's ru_maxrss
    survives fork+exec, so a fresh worker would report its parent's peak if the parent was larger."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB elsewhere


def measure(job: dict) -> dict:
    import numpy as np

    from ..core import runtime
    from ..core.errors import EdgetlError

    res: dict = {"status": "ok"}
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    try:
        model = runtime.load(job["path"], threads=job["threads"], verify=False,  # checked by the parent
                             amx=job.get("amx"))
    except runtime.RuntimeSkipped as e:
        return {"status": f"skipped: {e}"}
    except EdgetlError as e:
        return {"status": f"error: {e}"}
    res["load_ms"] = (time.perf_counter() - t0) * 1e3
    res["runtime_load_ms"] = model.load_seconds * 1e3
    res.update(format=model.format.name, runtime=model.format.runtime, classes=model.classes,
               image_size=model.image_size, input_dtype=str(model.in_dtype), macs=model.meta.get("macs"),
               session=model.session, **model.amx)

    pixels = labels = None
    if job.get("pixels"):
        pixels = np.load(job["pixels"], mmap_mode="r")
        labels = np.load(job["labels"]) if job.get("labels") else None
    if job.get("timing", True):
        res.update(_time_model(model, pixels, job))
    res["peak_rss_mb"] = peak_rss_mb()  # after load + timing: what running the model needs
    res["rss_at_start_mb"] = rss_start

    if pixels is not None and labels is not None and len(labels):
        probs = []
        for i in range(0, len(pixels), 64):  # chunks: bounded memory even for big folders
            probs.append(model.predict_prepared(model.prepare(np.asarray(pixels[i:i + 64]))))
        probs = np.concatenate(probs)
        pred = probs.argmax(1)
        res["accuracy"] = float((pred == labels).mean())
        res["per_class_accuracy"] = {c: (float((pred[labels == k] == k).mean()) if (labels == k).any() else None)
                                     for k, c in enumerate(model.classes)}
        res["eval_images"] = int(len(labels))
        if job.get("save_probs"):
            np.save(job["save_probs"], probs)
    model.close()
    return res


def _time_model(model, pixels, job: dict) -> dict:
    """First-inference, steady-state latency and CPU time of batch-1 runs (plus Keras' other call modes)."""
    import numpy as np

    res: dict = {}
    if pixels is not None and len(pixels):
        x = model.prepare(np.asarray(pixels[:1]))
    else:
        x = model.prepare(np.random.default_rng(0).integers(0, 256, (1, model.image_size, model.image_size, 3),
                                                             dtype=np.uint8))
    t = time.perf_counter()
    model.run(x)
    res["first_inference_ms"] = (time.perf_counter() - t) * 1e3

    # warm-up: a few runs and a slice of the time budget, then time >= min_time s AND >= min_runs runs
    min_time, min_runs = float(job["min_time"]), int(job["min_runs"])
    warm_end = time.perf_counter() + min(0.5, min_time / 4)
    n = 0
    while n < 3 or time.perf_counter() < warm_end:
        model.run(x)
        n += 1
    times, cpu = [], []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        c = time.process_time_ns()
        a = time.perf_counter_ns()
        model.run(x)
        times.append(time.perf_counter_ns() - a)
        cpu.append(time.process_time_ns() - c)
    ms = np.asarray(times, dtype=np.float64) / 1e6
    # CPU time of the whole process per run (all its threads): unlike wall time, not inflated when other
    # programs preempt us on a shared machine; equals wall time x threads busy when nothing else runs
    cms = np.asarray(cpu, dtype=np.float64) / 1e6
    res["cpu_ms"] = {"p50": float(np.percentile(cms, 50)), "mean": float(cms.mean())}
    res["latency_ms"] = {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                         "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "std": float(ms.std()),
                         "min": float(ms.min()), "runs": int(len(ms)), "seconds": float(ms.sum() / 1e3)}
    res["throughput_ips"] = 1e3 / float(ms.mean())
    if hasattr(model, "other_modes"):  # Keras: also time eager calls and model.predict (fewer runs)
        res["keras_modes_ms"] = {}
        for mode, fn in model.other_modes().items():
            for _ in range(3):
                fn(x)
            t, m_start, n_min = [], time.perf_counter(), min(10, min_runs)
            while len(t) < n_min or (time.perf_counter() - m_start < min_time / 2 and len(t) < max(n_min, min_runs)):
                a = time.perf_counter_ns()
                fn(x)
                t.append(time.perf_counter_ns() - a)
            res["keras_modes_ms"][mode] = {"p50": float(np.percentile(t, 50)) / 1e6, "min": min(t) / 1e6,
                                           "runs": len(t)}
    return res


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        res = measure(job)
    except Exception as e:  # any runtime failure becomes this row's status, never the whole bench
        tb = traceback.format_exc(limit=3)
        res = {"status": f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
               "traceback": tb}
    sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

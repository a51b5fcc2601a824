"""What a trial's file costs: its size, the runtime's peak RAM and its latency, per (alpha, size, head,
format). Latency, size and RAM do not depend on the head's trained weights, so each combination is
converted once (the registry row's own converter, the one `edgetl export` runs), the file gets edgetl's
metadata and is measured by bench's worker in a fresh process (`measure`, given by the caller): latency
on this machine for `--device this`; for a device profile the latency is estimated (search.estimate) and
only RAM is measured here. Results are kept in OUT/probes/ and shared by every trial, process and resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..core import images
from ..core.artifact import embed_onnx, embed_tflite
from ..core.flatbuffer import compact_tflite
from ..core.formats import FORMATS
from ..core.rundir import write_bytes, write_json
from ..core.runtime import INT8_WEIGHTS
from ..model import backbone
from ..model.bn import calibrate_random_bn
from ..model.graph import assemble, build_head, count_macs
from ..model.session import fresh_keras
from .estimate import estimate_latency_ms

PROBES_DIR = "probes"
MIN_RUNS = 20


def probe_key(alpha: float, size: int, head: str, fmt: str) -> str:
    return f"a{alpha:g}-{size}-{head}-{fmt}"


class Prober:
    """Probes of one search: `get(alpha, size, head, fmt, classes, calib_px)` -> {"size_mb", "ram_mb",
    "latency_ms", "latency_source", "macs", "file"}."""

    def __init__(self, out: Path, weights: dict, seed: int, threads: int, measure, profile: dict | None,
                 peak_gmacs: float | None, min_time: float):
        self.dir = Path(out) / PROBES_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.weights, self.seed, self.threads, self.measure = weights, seed, threads, measure
        self.profile, self.peak_gmacs, self.min_time = profile, peak_gmacs, min_time

    def get(self, alpha: float, size: int, head: str, fmt: str, classes: list[str], calib_px: np.ndarray) -> dict:
        key = probe_key(alpha, size, head, fmt)
        rec = self.dir / f"{key}.json"
        if not rec.is_file():
            with locked(self.dir / ".lock"):  # one probe at a time across --workers: each made and timed once
                if not rec.is_file():
                    write_json(rec, self._make(key, alpha, size, head, fmt, classes, calib_px))
        return json.loads(rec.read_text())

    def _make(self, key: str, alpha: float, size: int, head: str, fmt: str, classes: list[str],
              calib_px: np.ndarray) -> dict:
        spec = images.preprocessing_spec(size)
        f = FORMATS[fmt]
        path = self.dir / f"{key}{f.suffix}"
        fresh_keras(self.seed)
        base = backbone.build_base(alpha, size, self.weights["path"])
        if self.weights["source"] == "random":
            calibrate_random_bn(base, calib_px, spec, seed=self.seed)
        base.trainable = False
        head_model = build_head(int(base.output_shape[-1]), len(classes), head, 0.0, self.seed, start="glorot")
        model = assemble(base, head_model)
        calib = images.preprocess(calib_px, spec)
        # the registry's converter reads these attributes of export's context (a float model, no QAT, the
        # plain int8 file: no op kept in float, the default ONNX int8 weight encoding; bias values change
        # neither latency, size nor RAM)
        ctx = SimpleNamespace(model=model, float_model=model, size=size, cache={}, qat_graph=False,
                              calibration_inputs=lambda: calib, float_ops=(), onnx_weights=INT8_WEIGHTS,
                              correct_biases=False)
        raw = f.convert(ctx)
        macs = count_macs(model)
        meta = {"format": fmt, "classes": list(classes), "preprocessing": spec, "macs": macs,
                "note": "edgetl search probe: random head, for latency, size and RAM only"}
        if f.suffix == ".tflite":
            buf = embed_tflite(compact_tflite(raw), meta)
        else:
            import onnx

            proto = onnx.load_from_string(raw)
            embed_onnx(proto, meta)
            buf = proto.SerializeToString()
        write_bytes(path, buf)
        here = self.profile is None
        res = measured(self.measure, path, self.threads, self.min_time, here)
        out = {"file": str(path), "size_mb": round(len(buf) / 1e6, 4), "ram_mb": round(res["peak_rss_mb"], 1),
               "macs": macs, "threads": self.threads}
        if here:
            out.update(latency_ms=res["p50_ms"], latency_source="measured", latency_runs_ms=[res["p50_ms"]])
        else:
            out.update(latency_ms=round(estimate_latency_ms(macs, f.runtime, f.precision, self.threads,
                                                            self.peak_gmacs), 4),
                       latency_source="estimated", ram_source="measured on this machine")
        return out


def measured(measure, path: Path, threads: int, min_time: float, timing: bool = True) -> dict:
    """bench's worker run on a probe file in a fresh process (p50 latency at batch 1 when timing, peak RSS):
    its result with "p50_ms"; RuntimeError naming the file when the worker failed."""
    res = measure({"path": str(path), "threads": threads, "min_time": min_time, "min_runs": MIN_RUNS,
                   "pixels": None, "labels": None, "timing": timing})
    if res.get("status") != "ok":
        raise RuntimeError(f"{Path(path).name}: {res.get('status')}")
    return {**res, "p50_ms": round(res["latency_ms"]["p50"], 4) if timing else None}


def measure_again(out: Path, key: str, min_time: float, measure) -> list[float]:
    """A measured probe's latency measured once more in a fresh process; its record keeps every run and, as
    its latency, the lowest (a busy machine only adds time, so the lowest p50 is the file's own)."""
    rec = Path(out) / PROBES_DIR / f"{key}.json"
    with locked(rec.parent / ".lock"):
        r = json.loads(rec.read_text())
        p50 = measured(measure, Path(r["file"]), r["threads"], min_time)["p50_ms"]
        r["latency_runs_ms"] = r.get("latency_runs_ms", [r["latency_ms"]]) + [p50]
        r["latency_ms"] = min(r["latency_runs_ms"])
        write_json(rec, r)
    return r["latency_runs_ms"]


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on `path` (created) between processes."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield

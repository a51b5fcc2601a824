"""Latencies measured on a device, kept on this machine so that estimates can give way to measurements.

`edgetl bench --remote` adds each measured row's p50 to one JSON file per device:
$EDGETL_MEASUREMENTS_DIR, else $XDG_CACHE_HOME/edgetl/devices, else ~/.cache/edgetl/devices, as
<device>.json (device: the profile name, e.g. rpi4, or the remote's CPU slug). One entry per (format,
alpha, image size, threads); a newer bench replaces the entry. Readers use `measured_latency` (one
lookup) or `load_measurements` (every entry).

An entry: {"format", "alpha", "image_size", "macs", "threads", "p50_ms", "p90_ms", "runs", "measured"
(ISO time), "where" (user@host:port), "cpu", "runtime_versions", "accuracy", "file"}.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .rundir import write_json

LAYOUT = 1


def records_dir() -> Path:
    if os.environ.get("EDGETL_MEASUREMENTS_DIR"):
        return Path(os.environ["EDGETL_MEASUREMENTS_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "edgetl" / "devices"


def record_path(device: str) -> Path:
    return records_dir() / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', device)}.json"


def load_measurements(device: str) -> list[dict]:
    """Every entry recorded for `device` ([] when none, or when the file is not readable)."""
    try:
        doc = json.loads(record_path(device).read_text())
    except (OSError, ValueError):
        return []
    return list(doc.get("entries", [])) if isinstance(doc, dict) else []


def measured_latency(device: str, fmt: str, alpha: float | None, image_size: int, threads: int = 1) -> dict | None:
    """The recorded entry for this format, width, input size and thread count on `device`, or None (then
    use an estimate). Its "p50_ms" is the median batch-1 latency measured there."""
    for e in load_measurements(device):
        if (e.get("format"), e.get("image_size"), e.get("threads")) == (fmt, image_size, threads) and \
                (alpha is None or e.get("alpha") is None or abs(float(e["alpha"]) - float(alpha)) < 1e-9):
            return e
    return None


def _key(e: dict) -> tuple:
    return e.get("format"), e.get("alpha"), e.get("image_size"), e.get("threads")


def add_measurements(result: dict) -> Path | None:
    """Adds the measured rows of an `edgetl bench` result (not emulated, status ok) to its device's file;
    the file's path, or None when no row had a latency. Written atomically."""
    remote = result.get("remote") or {}
    host = result.get("host") or {}
    new = []
    for r in result.get("rows", []):
        lat = r.get("latency_ms")
        if r.get("status") != "ok" or not lat or r.get("measured_on") == "emulated" or r.get("format") == "keras":
            continue
        new.append({"format": r["format"], "alpha": r.get("alpha"), "image_size": r.get("image_size"),
                    "macs": r.get("macs"), "threads": r["threads"], "p50_ms": lat["p50"], "p90_ms": lat.get("p90"),
                    "runs": lat.get("runs"), "measured": result.get("created"), "where": remote.get("address"),
                    "cpu": host.get("cpu"), "runtime_versions": host.get("versions"),
                    "accuracy": r.get("accuracy"), "file": r.get("file")})
    if not new:
        return None
    path = record_path(result["device"])
    keep = {_key(e): e for e in load_measurements(result["device"])}
    keep.update({_key(e): e for e in new})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"edgetl_measurements": LAYOUT, "device": result["device"],
                      "entries": sorted(keep.values(), key=lambda e: tuple(str(x) for x in _key(e)))})
    return path

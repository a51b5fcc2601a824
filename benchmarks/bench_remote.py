"""Benchmark record of `edgetl bench --remote` against a local bench of the same files.

Run through `make bench-remote` (under flock /tmp/edgetl-cpu.lock). The "remote" is this machine through
OpenSSH's sshd on 127.0.0.1 (tests/sshd.py: its own host key and authorized key), running the light
python (--remote-python), so the two benches differ only in the way there: ssh, the copies, and a
worker started by the remote agent. On the hymenoptera alpha 0.35 run (created if missing), four
formats, one thread, it records:
  - p50 per row, local and remote, and their ratio; accuracy (must be equal: same pixels, same files)
  - wall time of the local bench, of the first remote bench (empty remote cache: everything copied)
    and of a second one (nothing copied), and the files and bytes each copied
Writes benchmarks/results/bench_remote.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
RESULTS = REPO / "benchmarks" / "results"
FORMATS = "tflite-fp32,tflite-int8,onnx-fp32,onnx-int8"


def main() -> int:
    from bench_runtime import ensure_run

    import sshd
    from edgetl.bench.stage import bench
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=str(REPO / "runs"))
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--remote-python", default=str(REPO / ".venv-light" / "bin" / "python"))
    args = ap.parse_args()
    run = Path(args.runs_dir) / "bench-a0.35"
    ensure_run(run, "0.35", 224)
    con = Console(stderr=True)
    record: dict = {"run": str(run), "formats": FORMATS, "min_time_s": args.min_time}
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-remote-") as tmp:
        tmp = Path(tmp)
        os.environ["EDGETL_MEASUREMENTS_DIR"] = str(tmp / "records")
        server = sshd.Sshd(tmp / "sshd").start()
        try:
            common = {"threads": "1", "formats": FORMATS, "min_time": args.min_time, "console": con}
            t = time.perf_counter()
            local = bench([run], out=tmp / "local", **common)
            record["local_wall_s"] = round(time.perf_counter() - t, 1)
            remote = {"remote": server.address, "ssh_options": server.options(tmp / "remote-cache"),
                      "remote_python": args.remote_python}
            for name in ("first", "second"):
                t = time.perf_counter()
                res = bench([run], out=tmp / name, **common, **remote)
                record[f"remote_{name}_wall_s"] = round(time.perf_counter() - t, 1)
                record[f"remote_{name}_copied"] = res["remote"]["copied"]
        finally:
            server.stop()
    record["remote_host"] = {k: res["remote"][k] for k in ("address", "python", "versions")}
    record["rows"] = []
    for a, b in zip(local["rows"], res["rows"]):
        record["rows"].append({"format": a["format"], "local_p50_ms": round(a["latency_ms"]["p50"], 3),
                               "remote_p50_ms": round(b["latency_ms"]["p50"], 3),
                               "remote_vs_local": round(b["latency_ms"]["p50"] / a["latency_ms"]["p50"], 3),
                               "accuracy_local": a["accuracy"], "accuracy_remote": b["accuracy"]})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_remote.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

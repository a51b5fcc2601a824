"""What the integrity check costs before an artifact is used, against loading that artifact.

For each exported file of RUN: the median time of `artifact.verify` through the manifest beside it (size +
sha256 of the file), of the same check on a copy away from the manifest (the seal embedded at export), and
of `runtime.load(verify=False)` (read the bytes, build the TFLite interpreter / ONNX session), and of that
load plus the first prediction (LiteRT packs its XNNPACK weights on the first run): what predict and bench
pay for the file besides the check, and the check's share of each. No TensorFlow (the light venv works).

    python benchmarks/bench_verify.py RUN [--repeat 7] [--json benchmarks/results/verify.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgetl.core import artifact, runtime
from edgetl.core.formats import FORMATS


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 2)


def first_prediction(path: Path) -> None:
    model = runtime.load(path, verify=False)
    model.predict_pixels(np.zeros((1, model.image_size, model.image_size, 3), np.uint8))


def measure(run: Path, repeat: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as bare:
        for fmt in FORMATS.values():
            path = run / fmt.filename
            if fmt.runtime == "tensorflow" or not path.is_file():
                continue
            copy = Path(shutil.copy(path, bare))
            assert artifact.verify(path) == "manifest" and artifact.verify(copy) == "embedded", fmt.name
            row = {"format": fmt.name, "bytes": path.stat().st_size,
                   "verify_manifest_ms": median_ms(lambda: artifact.verify(path), repeat),
                   "verify_embedded_ms": median_ms(lambda: artifact.verify(copy), repeat),
                   "load_ms": median_ms(lambda: runtime.load(path, verify=False), repeat),
                   "load_first_ms": median_ms(lambda: first_prediction(path), repeat)}
            check = max(row["verify_manifest_ms"], row["verify_embedded_ms"])
            row["check_share_of_load"] = round(check / row["load_ms"], 3)
            row["check_share_of_load_first"] = round(check / row["load_first_ms"], 3)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = measure(args.run, args.repeat)
    print(f"{'format':<12} {'bytes':>9} {'manifest ms':>12} {'embedded ms':>12} {'load ms':>9} {'share':>6} "
          f"{'load+1st ms':>12} {'share':>6}")
    for r in rows:
        print(f"{r['format']:<12} {r['bytes']:>9} {r['verify_manifest_ms']:>12} {r['verify_embedded_ms']:>12} "
              f"{r['load_ms']:>9} {r['check_share_of_load']:>6.1%} {r['load_first_ms']:>12} "
              f"{r['check_share_of_load_first']:>6.1%}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "repeat": args.repeat, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

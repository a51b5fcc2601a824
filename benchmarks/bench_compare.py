"""Benchmark: `edgetl compare` on hymenoptera with its defaults, and domain adaptation before/after numbers.

In one run (not a timed test; `make bench-compare` holds `flock /tmp/edgetl-cpu.lock`):
  1. `edgetl compare hymenoptera --alpha 0.35` (the shared weights; every compare option at its default:
     fractions 0.1,0.25,0.5,1.0, 224 px, budget 4x) as a whole process: wall time (target < 15 min on
     2 cores) and the measured transfer-vs-scratch table.
  2. A source run (`edgetl train hymenoptera --alpha 0.35`), then for each synthetic domain shift
     (shifted copies made in a temp dir, never committed): `edgetl train SHIFTED --from RUN --adapt-bn`
     -> val accuracy on the shifted data before any update, after --adapt-bn alone (no labels), and after
     the continued head training; and `edgetl train SHIFTED --from RUN` (no --adapt-bn) for reference.
Writes benchmarks/results/compare.json (logs in benchmarks/results/compare-logs/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", REPO.parent / "shared"))
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))


def run(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed (rc {rc}); see {log}")
    return round(time.perf_counter() - t0, 2)


def shifted_copy(src: Path, dst: Path, kind: str, size: int) -> int:
    """PNG copy of every decodable image of src (same layout), resized to `size`, with the shift applied."""
    from PIL import Image

    from edgetl.core.data import IMAGE_SUFFIXES
    from edgetl.core.images import ImageDecodeError, decoding_of, load_image, preprocessing_spec
    from edgetl.train.adapt import shift_pixels

    n = 0
    for p in sorted(src.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            arr = load_image(p, size, decoding_of(preprocessing_spec(size)))
        except ImageDecodeError:
            continue
        out = (dst / p.relative_to(src)).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shift_pixels(arr, kind)).save(out)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hymenoptera")
    ap.add_argument("--alpha", default="0.35")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--shifts", default="low-light,low-contrast,grayscale,colour-cast,blur")
    ap.add_argument("--skip-compare", action="store_true", help="only the domain-adaptation part")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compare.json")
    args = ap.parse_args()

    env = dict(os.environ)
    if (SHARED / "weights").is_dir():
        env.setdefault("EDGETL_WEIGHTS_DIR", str(SHARED / "weights"))
    logs = args.out.parent / "compare-logs"
    logs.mkdir(parents=True, exist_ok=True)
    edgetl = str(BIN / "edgetl")
    result: dict = {"data": str(args.data), "alpha": float(args.alpha), "image_size": args.size,
                    "machine": {"cpus": os.cpu_count()}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    prev = json.loads(args.out.read_text()) if args.out.exists() else {}

    with tempfile.TemporaryDirectory(prefix="edgetl-bench-compare-") as tmp:
        tmp = Path(tmp)
        # 1. compare with defaults
        if args.skip_compare and "compare" in prev:
            result["compare"] = prev["compare"]
        else:
            cmd = [edgetl, "compare", str(args.data), "--alpha", args.alpha, "--out", str(tmp / "compare")]
            print("compare:", " ".join(["edgetl", *cmd[1:]]), flush=True)
            wall = run(cmd, env, logs / "compare.log")
            rep = json.loads((tmp / "compare" / "compare.json").read_text())
            result["compare"] = {
                "command": " ".join(["edgetl", *cmd[1:-2]]), "wall_seconds": wall, "target_seconds": 900,
                "ok_under_15_min": wall < 900, "table": rep["table"], "results": [
                    {k: r.get(k) for k in ("arm", "fraction", "n_train", "val_accuracy", "seconds", "images_seen",
                                           "base_passes", "trainable_params", "epochs", "stopped_by")}
                    for r in rep["results"]],
                "budget": rep["budget"], "timings": rep["timings"], "target_rule": rep["target_rule"]}
            shutil.copy(tmp / "compare" / "learning-curve.png", args.out.parent / "compare-learning-curve.png")
            print(f"  {wall:.0f} s", flush=True)

        # 2. domain adaptation
        src = tmp / "source-run"
        run([edgetl, "train", str(args.data), "--alpha", args.alpha, "--image-size", str(args.size), "--out",
             str(src)], env, logs / "source-run.log")
        smeta = json.loads((src / "edgetl.json").read_text())
        result["adaptation"] = {"source_run": {
            "command": f"edgetl train {args.data} --alpha {args.alpha} --image-size {args.size} --out RUN",
            "val_accuracy": smeta["metrics"]["val_accuracy"]}, "shifts": {}}
        for kind in [k for k in args.shifts.split(",") if k]:
            shifted = tmp / f"hymenoptera-{kind}"
            shifted_copy(args.data, shifted, kind, args.size)
            row = {}
            for name, extra in (("adapt_bn", ["--adapt-bn"]), ("no_adapt", [])):
                out = tmp / f"run-{kind}-{name}"
                wall = run([edgetl, "train", str(shifted), "--from", str(src), *extra, "--out", str(out)], env,
                           logs / f"adapt-{kind}-{name}.log")
                meta = json.loads((out / "edgetl.json").read_text())
                row[name] = {"val_accuracy_before": meta["from_run"]["val_accuracy_before"],
                             "val_accuracy_final": meta["metrics"]["val_accuracy"], "wall_seconds": wall}
                if name == "adapt_bn":
                    ad = meta["adapt"]
                    row[name].update({"val_accuracy_after_adapt_bn": ad.get("val_accuracy_after"),
                                      "method": ad.get("method"), "adapt_seconds": ad.get("seconds")})
            row["command"] = f"edgetl train SHIFTED({kind}) --from RUN --adapt-bn --out RUN2"
            result["adaptation"]["shifts"][kind] = row
            a = row["adapt_bn"]
            print(f"  {kind:<13} before {a['val_accuracy_before']:.3f}  after --adapt-bn (no labels) "
                  f"{a['val_accuracy_after_adapt_bn']:.3f}  + head training {a['val_accuracy_final']:.3f}  "
                  f"(no --adapt-bn, head training: {row['no_adapt']['val_accuracy_final']:.3f})", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

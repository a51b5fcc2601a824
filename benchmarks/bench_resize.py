"""Benchmark: which bilinear resize feeds the frozen base best, over both bundled sets and harder variants
built from them (not a timed test).

Two filters, everything else edgetl train's defaults:
  point      bilinear sampled at half-pixel centres (tf.image.resize's default, what Keras'
             image_dataset_from_directory feeds a model; the preprocessing spec's "antialias": false),
  antialias  Pillow's antialiased bilinear ("antialias": true).
Each case trains `edgetl train` in-process on DATA/train with the held-out folder as --test (val carved from
train, 20 %, by the seed), seeds 0-2, and records the test accuracy. flowers12's photos are 224 px, so only
its smaller input sizes resize them; hymenoptera's are about 500x375. The larger sets are those of
bench_train_large.py: 1,930 training images of both sets, as they are and enlarged to camera size.

Run under the CPU lock: flock /tmp/edgetl-cpu.lock python benchmarks/bench_resize.py
Writes benchmarks/results/resize.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import SHARED  # noqa: E402
from bench_train_large import make_set  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FILTERS = {"point": False, "antialias": True}  # name -> the spec's "antialias"


def subset(src: Path, dst: Path, per_class: int, classes: int | None = None) -> Path:
    """DATA/{train,<held-out>} with the first `per_class` training files of the first `classes` classes
    (symlinks; the held-out folder of those classes whole)."""
    for split in sorted(p for p in src.iterdir() if p.is_dir()):
        for k, cdir in enumerate(sorted(p for p in split.iterdir() if p.is_dir())):
            if classes is not None and k >= classes:
                break
            files = sorted(cdir.iterdir())
            out = dst / split.name / cdir.name
            out.mkdir(parents=True)
            for f in files[:per_class] if split.name == "train" else files:
                (out / f.name).symlink_to(f)
    return dst


CASES = [("hymenoptera", 0.35, 224), ("hymenoptera", 0.35, 160), ("hymenoptera", 0.35, 128), ("hymenoptera", 0.5, 224),
         ("hymenoptera", 0.5, 128), ("hy-40", 0.35, 224), ("hy-40", 0.5, 160), ("flowers12", 0.35, 96),
         ("flowers12", 0.35, 128), ("flowers12", 0.35, 160), ("flowers12", 0.5, 192), ("fl12-20", 0.35, 128),
         ("fl6-40", 0.5, 96), ("large", 0.35, 224), ("large-camera", 0.35, 224), ("large-camera", 0.5, 160)]


def data_set(name: str, tmp: Path) -> Path:
    """The folder of a case's data set (derived sets are built in tmp once)."""
    hy, fl = SHARED / "data/hymenoptera", SHARED / "data/flowers12"
    if name in ("hymenoptera", "flowers12"):
        return hy if name == "hymenoptera" else fl
    dst = tmp / name
    if not dst.exists():
        {"hy-40": lambda: subset(hy, dst, 40), "fl12-20": lambda: subset(fl, dst, 20),
         "fl6-40": lambda: subset(fl, dst, 40, 6), "large": lambda: make_set(dst),
         "large-camera": lambda: make_set(dst, 6)}[name]()
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cases", default=None, help="comma-separated data set names (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "resize.json")
    a = ap.parse_args()
    os.environ.setdefault("EDGETL_WEIGHTS_DIR", str(SHARED / "weights"))
    from rich.console import Console

    from edgetl.core import images
    from edgetl.train.config import TrainConfig
    from edgetl.train.stage import train

    seeds = [int(s) for s in a.seeds.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-resize-"))
    rows, summary = [], []
    try:
        for name, alpha, size in CASES:
            if a.cases and name not in a.cases.split(","):
                continue
            root = data_set(name, tmp)
            held_out = next(root / n for n in ("val", "test") if (root / n).is_dir())
            accs: dict = {}
            for fname, antialias in FILTERS.items():
                images.MOBILENET_V2_PREPROCESSING["antialias"] = antialias
                for seed in seeds:
                    cfg = TrainConfig(data=str(root / "train"), test=str(held_out), out=str(tmp / "run"),
                                      alpha=alpha, image_size=size, seed=seed, overwrite=True)
                    r = train(cfg, console=Console(file=io.StringIO()))
                    assert r.meta["preprocessing"]["antialias"] is antialias
                    acc = r.meta["metrics"]["test_accuracy"]
                    accs.setdefault(fname, []).append(acc)
                    rows.append({"case": name, "alpha": alpha, "size": size, "filter": fname, "seed": seed,
                                 "test_accuracy": acc, "n_test": r.meta["metrics"]["n_test"],
                                 "n_train_views": r.meta["metrics"]["n_train_views"]})
            m = {f: statistics.mean(v) for f, v in accs.items()}
            summary.append({"case": name, "alpha": alpha, "size": size, "n_test": rows[-1]["n_test"],
                            **{f"{f}_mean": round(v, 4) for f, v in m.items()},
                            "point_minus_antialias_points": round(100 * (m["point"] - m["antialias"]), 2)})
            print(f"{name:13s} a{alpha:<4g} {size:3d}px  point {m['point']:.4f}  antialias {m['antialias']:.4f}  "
                  f"{summary[-1]['point_minus_antialias_points']:+.2f} points", flush=True)
    finally:
        images.MOBILENET_V2_PREPROCESSING["antialias"] = False
        shutil.rmtree(tmp, ignore_errors=True)
    d = [s["point_minus_antialias_points"] for s in summary]
    res = {"seeds": seeds, "summary": summary, "rows": rows,
           "overall": {"cases": len(d), "mean_points": round(statistics.mean(d), 2),
                       "point_better": sum(x > 0 for x in d), "antialias_better": sum(x < 0 for x in d)},
           "machine": {"load_avg_end": os.getloadavg()}}
    print(json.dumps(res["overall"]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

"""Benchmark: the head's training settings against edgetl train's defaults, over both bundled sets and harder
variants built from them (not a timed test).

Each case computes its base features once through the learning session (model.session: every training
image and 2 augmented views of it, val carved from train by seed 0, the held-out folder as test), then
trains the head on them with the recipe's own loop (Session.fit_head: early stopping on val loss) once per
variant and seed, and scores it on the held-out images, which no choice sees. A variant changes one recipe
option (the softmax layer's start, augmented views, dropout, learning rate, patience, head); seeds 0-4 vary
the head's dropout masks and batch order (and its initial weights where they are random). The cases are
bench_resize.py's data sets; `large` is the 1,930-image set of bench_train_large.py.

Run under the CPU lock: flock /tmp/edgetl-cpu.lock python benchmarks/bench_head.py
Writes benchmarks/results/head.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_resize import data_set  # noqa: E402
from bench_train import SHARED  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_VIEWS = 2
CASES = [("hymenoptera", 0.35, 224), ("hymenoptera", 0.35, 128), ("hymenoptera", 0.5, 224), ("hy-40", 0.35, 224),
         ("flowers12", 0.35, 224), ("flowers12", 0.35, 160), ("flowers12", 0.35, 128), ("fl12-20", 0.35, 128),
         ("fl6-40", 0.5, 96), ("large", 0.35, 224)]
# name -> (recipe options changed, augmented views; None: as edgetl train picks them)
VARIANTS = {"defaults": ({}, None), "glorot start": ({"head_start": "glorot"}, None),
            "views 0": ({}, 0), "views 1": ({}, 1), "views 2": ({}, 2),
            "dropout 0.2": ({"dropout": 0.2}, None), "dropout 0": ({"dropout": 0.0}, None),
            "lr 3e-4": ({"lr": 3e-4}, None), "patience 20": ({"patience": 20}, None),
            "head dense128": ({"head": "dense128"}, None),
            "head dense128, glorot start": ({"head": "dense128", "head_start": "glorot"}, None)}


def case_features(root: Path, alpha: float, size: int, out: Path):
    """The learning session of one case with every feature computed (MAX_VIEWS augmented views)."""
    from rich.console import Console

    from edgetl.core import images
    from edgetl.model import backbone
    from edgetl.model.session import Session
    from edgetl.train.config import TrainConfig, validate

    held_out = next(root / n for n in ("val", "test") if (root / n).is_dir())
    cfg = TrainConfig(data=str(root / "train"), test=str(held_out), out=str(out), alpha=alpha, image_size=size,
                      augment=MAX_VIEWS, max_train_views=0, overwrite=True)
    p = validate(cfg)
    t = time.perf_counter()
    s = Session(cfg, p, Console(file=io.StringIO()), images.preprocessing_spec(size), t, t)
    s.weights = backbone.resolve_weights(cfg.weights, alpha, size)
    s.load()
    return s


def head_accuracy(s, base_cfg, options: dict, views: int, seed: int) -> tuple[float, int, float]:
    """(test accuracy, best epoch, seconds) of a head trained with the recipe's loop, base_cfg with `options`
    changed."""
    from edgetl.model.predict import evaluate_head
    from edgetl.model.session import fresh_keras

    s.cfg = dataclasses.replace(base_cfg, seed=seed, **options)
    fresh_keras(seed)
    head = s.new_head()
    t = time.perf_counter()
    hist = s.fit_head(head, *s.train_views(1 + views))
    return evaluate_head(head, s.f_te, s.te_y)[0], hist["best_epoch"], time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cases", default=None, help="comma-separated data set names (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "head.json")
    a = ap.parse_args()
    os.environ.setdefault("EDGETL_WEIGHTS_DIR", str(SHARED / "weights"))
    from edgetl.model.recipe import MAX_TRAIN_VIEWS, Recipe, views_used

    tmp = Path(tempfile.mkdtemp(prefix="edgetl-head-"))
    summary = []
    try:
        for name, alpha, size in CASES:
            if a.cases and name not in a.cases.split(","):
                continue
            s = case_features(data_set(name, tmp), alpha, size, tmp / "run")
            base_cfg, n_train = s.cfg, len(s.tr_y)
            default_views = views_used(Recipe.augment, n_train, MAX_TRAIN_VIEWS)
            means, per_seed = {}, {}
            for vname, (options, views) in VARIANTS.items():
                views = default_views if views is None else views
                runs = [head_accuracy(s, base_cfg, options, views, seed) for seed in range(a.seeds)]
                means[vname] = statistics.mean(acc for acc, _, _ in runs)
                per_seed[vname] = {"test_accuracy": [round(acc, 4) for acc, _, _ in runs],
                                   "best_epoch": [epoch for _, epoch, _ in runs],
                                   "head_seconds": [round(sec, 2) for _, _, sec in runs]}
            summary.append({"case": name, "alpha": alpha, "size": size, "n_train": n_train, "n_val": len(s.va_y),
                            "n_test": len(s.te_y), "default_views": default_views,
                            "defaults_mean": round(means["defaults"], 4),
                            "minus_defaults_points": {v: round(100 * (m - means["defaults"]), 2)
                                                      for v, m in means.items() if v != "defaults"},
                            "per_seed": per_seed})
            print(f"{name:12s} a{alpha:<4g} {size:3d}px defaults {means['defaults']:.4f} " +
                  " ".join(f"{v} {d:+.2f}" for v, d in summary[-1]["minus_defaults_points"].items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    overall = {}
    for v in VARIANTS:
        if v == "defaults":
            continue
        d = [c["minus_defaults_points"][v] for c in summary]
        overall[v] = {"mean_points": round(statistics.mean(d), 2), "better": sum(x > 0 for x in d),
                      "worse": sum(x < 0 for x in d), "cases": len(d)}
    res = {"seeds": a.seeds, "overall": overall, "summary": summary,
           "machine": {"load_avg_end": os.getloadavg()}}
    print(json.dumps(overall, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

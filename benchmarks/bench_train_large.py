"""Benchmark: `edgetl train` vs the seed recipe end to end on a ~2,000-image set built from the bundled photos
(not a timed test).

The set (generated in a temp dir, never committed): train = flowers12 train/ + hymenoptera train/ and a
mirrored copy of each (1,930 images, 14 classes); val = flowers12 test/ + hymenoptera val/ (393 images).
Contenders, each a whole process on the same data, weights, alpha 0.35 and 224 px:
  1. edgetl train with its defaults (on this many images no augmented views: --max-train-views),
  2. edgetl train --max-train-views 0 (the 2 augmented views of every image, as on small sets),
  3. edgetl train --augment 1 --max-train-views 0,
  4. the seed recipe (benchmarks/seed_recipe.py, 10 epochs).
Target: (1) >= 10x faster than (4) (medians over --seeds seeds) at >= its val accuracy (means over the same
seeds, with edgetl's dense128 head beside them); (2) and (3) show what the views cost and pay.

Run under the CPU lock: flock /tmp/edgetl-cpu.lock python benchmarks/bench_train_large.py [--upscale 6]
Writes benchmarks/results/train-large.json (with --upscale: train-large-photos.json, every photo enlarged to
camera size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import SHARED, edgetl_train, seed_train, upscaled, warm_cache, workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_set(dst: Path, scale: float = 1) -> dict:
    """The set in dst; scale > 1: every photo (and mirrored copy) enlarged that many times, at most 12 MP."""
    from PIL import Image, ImageOps

    parts = {"train": [SHARED / "data/flowers12/train", SHARED / "data/hymenoptera/train"],
             "val": [SHARED / "data/flowers12/test", SHARED / "data/hymenoptera/val"]}
    n: dict = {}
    for split, srcs in parts.items():
        for src in srcs:
            for cdir in sorted(p for p in src.iterdir() if p.is_dir()):
                out = dst / split / cdir.name
                out.mkdir(parents=True, exist_ok=True)
                for f in sorted(cdir.iterdir()):
                    if scale > 1:
                        try:
                            with Image.open(f) as im:
                                upscaled(ImageOps.exif_transpose(im).convert("RGB"), scale).save(
                                    out / f"{f.stem}.jpg", quality=92)
                        except OSError:  # the unreadable placeholder: left out
                            continue
                    else:
                        shutil.copy(f, out / f.name)
                    n[split] = n.get(split, 0) + 1
                    if split == "train":
                        with Image.open(f) as im:
                            upscaled(ImageOps.mirror(ImageOps.exif_transpose(im).convert("RGB")), scale).save(
                                out / f"{f.stem}_flip.jpg", quality=92 if scale > 1 else 90)
                        n[split] += 1
    return {"train_images": n["train"], "val_images": n["val"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("EDGETL_WEIGHTS_DIR", SHARED / "weights")))
    ap.add_argument("--seed-epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of edgetl's defaults, its dense128 head and the "
                                                         "seed recipe whose val accuracies are averaged")
    ap.add_argument("--upscale", type=float, default=1, help="enlarge every photo this many times (at most 12 MP): "
                                                              "camera-size photos")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/train-large.json, "
                                                          "train-large-photos.json with --upscale")
    a = ap.parse_args()
    if a.out is None:
        a.out = REPO / "benchmarks" / "results" / ("train-large-photos.json" if a.upscale > 1 else "train-large.json")
    from edgetl.model.backbone import keras_weights_name

    weights = a.weights_dir / keras_weights_name(0.35)
    tmp, env, logs, res = workspace("train-large", a.weights_dir)
    common = ["--alpha", "0.35", "--image-size", "224"]
    try:
        data = tmp / "data"
        res["data"] = {**make_set(data, a.upscale), "upscale": a.upscale}
        warm_cache(data)
        edgetl_train(data, tmp / "warmup", env, logs, "warmup", *common)  # makes the cached base (every later run)
        runs = {"edgetl": edgetl_train(data, tmp / "e", env, logs, "edgetl", *common),
                "edgetl_2_views": edgetl_train(data, tmp / "e2", env, logs, "edgetl2", *common,
                                               "--max-train-views", "0"),
                "edgetl_1_view": edgetl_train(data, tmp / "e1", env, logs, "edgetl1", *common, "--augment", "1",
                                              "--max-train-views", "0"),
                "seed": seed_train(data, tmp / "seed", env, logs, "seed", 0.35, 224, str(weights), a.seed_epochs)}
        for k in range(1, a.seeds):
            runs[f"edgetl_seed{k}"] = edgetl_train(data, tmp / f"e-{k}", env, logs, f"edgetl-{k}", *common,
                                                   "--seed", str(k))
            runs[f"seed_seed{k}"] = seed_train(data, tmp / f"seed-{k}", env, logs, f"seed-{k}", 0.35, 224,
                                               str(weights), a.seed_epochs, seed=k)
        for k in range(a.seeds):
            runs[f"edgetl_dense128_seed{k}"] = edgetl_train(data, tmp / f"d-{k}", env, logs, f"dense128-{k}", *common,
                                                            "--head", "dense128", "--seed", str(k))
        res.update(runs)
        s = runs["seed"]["wall_seconds"]
        res["summary"] = {k: {"wall_seconds": r["wall_seconds"], "val_accuracy": r.get("val_accuracy"),
                              "speedup_vs_seed": round(s / r["wall_seconds"], 2),
                              "n_train_views": r.get("n_train_views")} for k, r in runs.items()}
        def mean_acc(names):
            accs = [runs[n].get("val_accuracy") for n in names]
            return round(sum(accs) / len(accs), 4) if None not in accs else None

        seeds = range(1, a.seeds)
        edgetl_runs = ["edgetl", *(f"edgetl_seed{k}" for k in seeds)]
        seed_runs = ["seed", *(f"seed_seed{k}" for k in seeds)]
        res["mean_val_accuracy"] = {
            "edgetl": mean_acc(edgetl_runs),
            "edgetl_dense128": mean_acc([f"edgetl_dense128_seed{k}" for k in range(a.seeds)]),
            "seed": mean_acc(seed_runs), "seeds": a.seeds}
        res["median_speedup"] = round(statistics.median(runs[n]["wall_seconds"] for n in seed_runs) /
                                      statistics.median(runs[n]["wall_seconds"] for n in edgetl_runs), 2)
        res["target_10x_met"] = bool(res["median_speedup"] >= 10 and
                                     (res["mean_val_accuracy"]["edgetl"] or 0) >= (res["mean_val_accuracy"]["seed"] or 1))
        print(json.dumps(res["mean_val_accuracy"]), flush=True)
        res["machine"]["load_avg_end"] = os.getloadavg()
        print(json.dumps(res["summary"], indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

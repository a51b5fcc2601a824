"""Benchmark: held-out accuracy of `edgetl train` with its defaults, frozen and fine-tuned (not a timed test).

Each run is one whole subprocess (process start -> saved run) of edgetl's own `train` on:
  hymenoptera  DATA = hymenoptera/train/ (val carved from it, 20 % stratified, seeded), --test hymenoptera/val/
               (153 images, never used to choose)
  flowers12    DATA = flowers12/ (train/ + test/: val carved from train/, test/ = 240 images)
at 224 px, alpha 0.35 and 0.5, seeds 0-2; settings:
  frozen     the defaults (linear head, dropout 0.5, up to 100 epochs, patience 10, --augment 2)
  fine-tune  the defaults + --fine-tune on. On both sets `edgetl train --fine-tune on` skips fine-tuning
             (97 and 48 training images in the smallest class, under its 100), so this setting forces it
             (TrainConfig.fine_tune_any_size, the option tests use) to measure what it would do.
  fine-tune-long  fine-tune for 24 epochs instead of 8; not in the default run
  fine-tune-all  fine-tune with nearly the whole base trained (--fine-tune 146: all but the stem and the
             first block); not in the default run
  seed-recipe  benchmarks/seed_recipe.py (the seed project's recipe: Dense(128) head, 10 epochs) trained on
             the same images as edgetl at that seed, scored on the same held-out images
Seed 0 of every cell runs first, then seeds 1 and 2; finished runs are kept in the JSON and skipped when
the script is started again (so it can be stopped and resumed). Time per run: wall clock of the process
and its CPU seconds (user + system), one run at a time: compare ratios, not absolute times.

  PYTHONPATH=. .venv/bin/python benchmarks/bench_accuracy.py            # frozen, fine-tune, seed-recipe
  ... --seeds 0 --sets flowers12 --alphas 0.35 --settings frozen       # one cell
  ... --settings fine-tune-long,fine-tune-all --alphas 0.5              # longer, and the deepest, fine-tuning
  ... --settings seed-recipe                                            # the baseline

Writes benchmarks/results/accuracy.json and prints the markdown table (mean, min-max over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", "/work/shared"))
SETS = {
    "hymenoptera": {"data": SHARED / "data/hymenoptera/train", "test": SHARED / "data/hymenoptera/val"},
    "flowers12": {"data": SHARED / "data/flowers12", "test": None},
}
SETTINGS = {"frozen": {}, "fine-tune": {"fine_tune": "on", "fine_tune_any_size": True},
            "fine-tune-long": {"fine_tune": "on", "fine_tune_epochs": 24, "fine_tune_any_size": True},
            "fine-tune-all": {"fine_tune": "146", "fine_tune_any_size": True}, "seed-recipe": None}

ONE = """
import json, sys
from edgetl.train.config import TrainConfig
from edgetl.train.stage import train
res = train(TrainConfig(**json.loads(sys.argv[1])))
m = res.meta["metrics"]
ft = m.get("fine_tune") or {}
print("RESULT " + json.dumps({"test_accuracy": m.get("test_accuracy"), "val_accuracy": m["val_accuracy"],
      "head_val_accuracy": m["head"]["val_accuracy"], "n_train": m["n_train"], "n_val": m["n_val"],
      "n_test": m["n_test"], "head_epochs": len(res.meta["history"]["head"]["loss"]),
      "fine_tune_kept": ft.get("kept"), "fine_tune_best_epoch": ft.get("best_epoch"),
      "timings": res.meta["timings"]}))
"""


def seed_recipe_data(set_name: str, seed: int, tmp: Path) -> Path:
    """The seed recipe's DATA/{train,val}/<class>/ as symlinks: train = the images edgetl trains on at this
    seed (its own carve), val = the held-out images (the recipe trains a fixed 10 epochs and only reports
    its last epoch there, so nothing is chosen on them)."""
    from edgetl.core import data as datamod

    s = SETS[set_name]
    split = datamod.scan(s["data"], seed=seed, test=s["test"])  # edgetl's default val split
    root = tmp / "seed-data"
    for part, items in (("train", split.train), ("val", split.test)):
        for i, (path, label) in enumerate(items):
            link = root / part / split.classes[label] / f"{i:05d}{Path(path).suffix.lower()}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(path).resolve())
    return root


def _process(cmd: list[str], env: dict, what: str) -> tuple[str, float, float]:
    """(stdout, wall s, CPU s) of one whole subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_one(set_name: str, alpha: float, setting: str, seed: int, tmp: Path) -> dict:
    s = SETS[set_name]
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGETL_WEIGHTS_DIR": str(SHARED / "weights")}
    what = f"{set_name} {alpha} {setting} seed {seed}"
    if setting == "seed-recipe":
        from bench_train import seed_train

        from edgetl.model.backbone import keras_weights_name

        data = seed_recipe_data(set_name, seed, tmp)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = seed_train(data, tmp / "seed", env, tmp, "seed", alpha, 224,
                       str(SHARED / "weights" / keras_weights_name(alpha)), seed=seed)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.get("failed"):
            raise SystemExit(f"{what} failed:\n{r['log_tail']}")
        wall, cpu = r["wall_seconds"], (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        res = {"test_accuracy": r["val_accuracy"], "val_accuracy": None, "n_train": r["n_train_files"],
               "n_test": r["n_val_files"], "fine_tune_kept": None}
    else:
        cfg = {"data": str(s["data"]), "out": str(tmp / "run"), "alpha": alpha, "image_size": 224, "seed": seed,
               "overwrite": True, **({"test": str(s["test"])} if s["test"] else {}), **SETTINGS[setting]}
        out, wall, cpu = _process([sys.executable, "-c", ONE, json.dumps(cfg)], env, what)
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{what}: no result line")
        res = json.loads(line[len("RESULT "):])
    return {"set": set_name, "alpha": alpha, "setting": setting, "seed": seed, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), **res}


def _spread(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f} (1 seed)"
    return f"{statistics.mean(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def table(rows: list[dict]) -> str:
    out = ["| set | alpha | setting | held-out (test) accuracy | val accuracy | seeds | wall s | CPU s | "
           "fine-tuning kept |", "|---|---|---|---|---|---|---|---|---|"]
    order = list(SETTINGS)
    keys = sorted({(r["set"], r["alpha"], r["setting"]) for r in rows}, key=lambda k: (k[0], k[1], order.index(k[2])))
    for key in keys:
        rs = sorted((r for r in rows if (r["set"], r["alpha"], r["setting"]) == key), key=lambda r: r["seed"])
        kept = [r["fine_tune_kept"] for r in rs if r["fine_tune_kept"] is not None]
        out.append(f"| {key[0]} | {key[1]:g} | {key[2]} | {_spread([r['test_accuracy'] for r in rs])} | "
                   f"{_spread([r['val_accuracy'] for r in rs])} | {','.join(str(r['seed']) for r in rs)} | "
                   f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {statistics.mean(r['cpu_s'] for r in rs):.0f} | "
                   f"{f'{sum(kept)}/{len(kept)}' if kept else '-'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="hymenoptera,flowers12")
    ap.add_argument("--alphas", default="0.35,0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default="frozen,fine-tune,seed-recipe")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/accuracy.json"))
    a = ap.parse_args()
    out = Path(a.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["set"], r["alpha"], r["setting"], r["seed"]) for r in rows}
    for seed in (int(x) for x in a.seeds.split(",")):
        for set_name in a.sets.split(","):
            for alpha in (float(x) for x in a.alphas.split(",")):
                for setting in a.settings.split(","):
                    if (set_name, alpha, setting, seed) in done:
                        continue
                    tmp = Path(tempfile.mkdtemp(prefix="edgetl-acc-"))
                    try:
                        r = run_one(set_name, alpha, setting, seed, tmp)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
                    rows.append(r)
                    val = "" if r["val_accuracy"] is None else f" val {r['val_accuracy']:.3f}"
                    print(f"{set_name} a{alpha:g} {setting} seed {seed}: test {r['test_accuracy']:.3f}{val} "
                          f"in {r['wall_s']:.0f} s ({r['cpu_s']:.0f} CPU s)", flush=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

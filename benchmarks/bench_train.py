"""Benchmark: `edgetl train` end to end vs the seed recipe, side by side in one run (not a timed test).

Each contender runs as a whole subprocess (process start -> saved model), on the same data, weights,
alpha and image size:
  1. hymenoptera (398 images), alpha 0.35, 224 px: wall times, val accuracies, ratio (target >= 5x, equal or
     better accuracy). edgetl runs first with an empty base cache (the first run on a backbone converts its
     frozen base to TFLite, ~1 s; "cold"), then 3 times with it (every later run; "warm", median reported);
     the ratio is given for both, and for `--no-base-cache` (TensorFlow features, no cache at all);
  2. a larger folder: hymenoptera's training images repeated with augmentation (generated in a temp dir,
     never committed), same val images: the ratio should grow with data size;
  3. edgetl with alpha 0.5: frozen (target val >= 0.93) and with fine-tuning + augmentation (aim >= 0.95).

Run via `make bench-train` (under `flock /tmp/edgetl-cpu.lock` so timing runs never overlap).
Writes benchmarks/results/train.json.
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


def run(cmd: list[str], env: dict, log: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return round(time.perf_counter() - t0, 2), rc


def edgetl_train(data: Path, out: Path, env: dict, logdir: Path, name: str, *extra: str) -> dict:
    cmd = [str(BIN / "edgetl"), "train", str(data), "--out", str(out), "--overwrite", *extra]
    wall, rc = run(cmd, env, logdir / f"{name}.log")
    if rc != 0:
        tail = "\n".join((logdir / f"{name}.log").read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{name}: edgetl train failed (rc {rc}):\n{tail}")
    meta = json.loads((out / "edgetl.json").read_text())
    m = meta["metrics"]
    res = {"command": " ".join(cmd[1:]), "wall_seconds": wall, "val_accuracy": round(m["val_accuracy"], 4),
           "n_train": m["n_train"], "n_val": m["n_val"], "n_train_views": m["n_train_views"],
           "skipped": meta["skipped"], "timings": meta["timings"], "features": meta.get("features")}
    if "fine_tune" in m:
        res["val_accuracy_frozen_head"] = round(m["head"]["val_accuracy"], 4)
        res["fine_tune_kept"] = m["fine_tune"].get("kept", m["fine_tune"].get("skipped"))
        res["fine_tune_val_loss"] = {k: meta["history"].get("fine_tune", {}).get(k)
                                     for k in ("val_loss_before", "val_loss")}
    if m.get("test_accuracy") is not None:
        res["test_accuracy"] = round(m["test_accuracy"], 4)
    return res


def seed_train(data: Path, out: Path, env: dict, logdir: Path, name: str, alpha: float, size: int,
               weights: str, epochs: int = 10, seed: int = 0) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "seed_recipe.py"), str(data), str(out), "--alpha", str(alpha),
           "--size", str(size), "--weights", weights, "--epochs", str(epochs), "--seed", str(seed)]
    senv = dict(env)
    senv.pop("TF_USE_LEGACY_KERAS", None)  # the seed used TensorFlow's default tf.keras
    wall, rc = run(cmd, senv, logdir / f"{name}.log")
    lines = (logdir / f"{name}.log").read_text().splitlines()
    info = next((json.loads(ln) for ln in reversed(lines) if ln.startswith("{\"recipe\"")), None)
    if rc != 0 or info is None:
        tail = "\n".join(lines[-5:])
        return {"command": " ".join(cmd[1:]), "wall_seconds": wall, "failed": True, "rc": rc, "log_tail": tail}
    return {"command": " ".join(cmd[1:]), "wall_seconds": wall, **info}


def make_large(src: Path, dst: Path, repeats: int, seed: int = 0) -> dict:
    """hymenoptera's train images + `repeats` augmented copies each (flip, crop 80-100 %, brightness),
    written as JPEGs at their own resolution; val is the original val set."""
    import numpy as np
    from PIL import Image, ImageOps

    n = 0
    rng = np.random.default_rng(seed)
    for cls_dir in sorted((src / "train").iterdir()):
        out = dst / "train" / cls_dir.name
        out.mkdir(parents=True, exist_ok=True)
        for p in sorted(cls_dir.iterdir()):
            try:
                im = ImageOps.exif_transpose(Image.open(p)).convert("RGB")
            except Exception:
                continue
            stem = p.stem.replace(" ", "_")
            im.save(out / f"{stem}_0.jpg", quality=90)
            n += 1
            for k in range(1, repeats + 1):
                v = ImageOps.mirror(im) if rng.random() < 0.5 else im
                w, h = v.size
                s = rng.uniform(0.8, 1.0)
                cw, ch = int(w * s), int(h * s)
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                v = v.crop((x0, y0, x0 + cw, y0 + ch))
                arr = np.clip(np.asarray(v, np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(out / f"{stem}_{k}.jpg", quality=90)
                n += 1
    shutil.copytree(src / "val", dst / "val")
    return {"train_images": n, "repeats": repeats}


PHOTO_PIXELS = 12e6  # a 12 MP phone photo


def upscaled(im, scale: float):
    """A PIL image enlarged `scale` times (bicubic), to at most PHOTO_PIXELS: camera-size photos made from the
    bundled ones (decoding cost and resize behaviour of a phone photo, not its detail)."""
    from PIL import Image

    k = min(scale, (PHOTO_PIXELS / (im.width * im.height)) ** 0.5)
    return im.resize((round(im.width * k), round(im.height * k)), Image.BICUBIC) if k > 1 else im


def workspace(name: str, weights_dir: Path) -> tuple[Path, dict, Path, dict]:
    """(temp dir, environment of the timed processes, their log dir, the result document started) of a
    benchmark run. The environment's edgetl cache starts empty in the temp dir: the first edgetl run is a
    cold one; the logs are kept only for the run (failures quote their tail)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"edgetl-bench-{name}-"))
    env = {**os.environ, "EDGETL_WEIGHTS_DIR": str(weights_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
           "EDGETL_CACHE_DIR": str(tmp / "cache")}
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}}
    return tmp, env, logs, res


def warm_cache(data: Path) -> None:
    for p in data.rglob("*"):
        if p.is_file():
            p.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hymenoptera")
    ap.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("EDGETL_WEIGHTS_DIR", SHARED / "weights")))
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed-epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="augmented copies per image in the larger folder (0: skip)")
    ap.add_argument("--no-alpha05", action="store_true", help="skip the alpha 0.5 accuracy runs")
    ap.add_argument("--ft-args", default="--alpha 0.5 --fine-tune on",
                    help="edgetl options of the fine-tuning + augmentation run")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train.json")
    a = ap.parse_args()
    if not a.data.is_dir():
        raise SystemExit(f"--data {a.data}: no such folder")
    from edgetl.model.backbone import keras_weights_name

    weights = a.weights_dir / keras_weights_name(a.alpha)
    if not weights.is_file():
        raise SystemExit(f"--weights-dir {a.weights_dir}: no {weights.name}")
    tmp, env, logdir, res = workspace("train", a.weights_dir)
    common = ["--alpha", str(a.alpha), "--image-size", str(a.size)]
    res.update(data=str(a.data), alpha=a.alpha, image_size=a.size, weights=str(weights))
    try:
        warm_cache(a.data)
        cold = edgetl_train(a.data, tmp / "edgetl", env, logdir, "edgetl-hymenoptera-cold", *common)
        warm = [edgetl_train(a.data, tmp / "edgetl", env, logdir, f"edgetl-hymenoptera-warm{i}", *common)
                for i in range(3)]
        e = sorted(warm, key=lambda r: r["wall_seconds"])[1]  # the median run
        no_cache = edgetl_train(a.data, tmp / "edgetl", env, logdir, "edgetl-hymenoptera-no-cache", *common,
                                "--no-base-cache")
        s = seed_train(a.data, tmp / "seed", env, logdir, "seed-hymenoptera", a.alpha, a.size, str(weights),
                       a.seed_epochs)
        res["hymenoptera"] = _compare(e, s)
        res["hymenoptera"]["summary"].update({
            "edgetl_warm_seconds_all": [r["wall_seconds"] for r in warm],
            "edgetl_cold_seconds": cold["wall_seconds"],
            "speedup_cold": _compare(cold, s)["summary"]["speedup"],
            "edgetl_no_cache_seconds": no_cache["wall_seconds"],
            "speedup_no_cache": _compare(no_cache, s)["summary"]["speedup"],
            "val_accuracy_cold_warm_no_cache": [cold["val_accuracy"], e["val_accuracy"], no_cache["val_accuracy"]]})
        res["hymenoptera"]["edgetl_cold"] = cold
        res["hymenoptera"]["edgetl_no_cache"] = no_cache
        print(json.dumps(res["hymenoptera"]["summary"]), flush=True)
        if a.repeats:
            large = tmp / "large"
            res["large_data"] = make_large(a.data, large, a.repeats)
            warm_cache(large)
            e = edgetl_train(large, tmp / "edgetl-large", env, logdir, "edgetl-large", *common)
            s = seed_train(large, tmp / "seed-large", env, logdir, "seed-large", a.alpha, a.size, str(weights),
                           a.seed_epochs)
            res["large"] = _compare(e, s)
            res["ratio_grows_with_data"] = (res["large"]["summary"]["speedup"] or 0) > (
                res["hymenoptera"]["summary"]["speedup"] or 0)
            print(json.dumps(res["large"]["summary"]), flush=True)
        if not a.no_alpha05:
            res["alpha_0.5_frozen"] = edgetl_train(a.data, tmp / "a05", env, logdir, "edgetl-alpha05",
                                                   "--alpha", "0.5", "--image-size", str(a.size))
            res["alpha_0.5_frozen_augment"] = edgetl_train(a.data, tmp / "a05aug", env, logdir, "edgetl-alpha05-aug",
                                                           "--alpha", "0.5", "--image-size", str(a.size),
                                                           "--augment", "2")
            res["alpha_0.5_finetune_augment"] = edgetl_train(a.data, tmp / "a05ft", env, logdir, "edgetl-alpha05-ft",
                                                             "--image-size", str(a.size), *a.ft_args.split())
            for k in ("alpha_0.5_frozen", "alpha_0.5_frozen_augment", "alpha_0.5_finetune_augment"):
                print(k, res[k]["val_accuracy"], res[k]["wall_seconds"], "s", flush=True)
        res["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


def _compare(e: dict, s: dict) -> dict:
    ok = not s.get("failed")
    speed = round(s["wall_seconds"] / e["wall_seconds"], 2) if ok else None
    summary = {"edgetl_seconds": e["wall_seconds"], "seed_seconds": s["wall_seconds"], "speedup": speed,
               "edgetl_val_accuracy": e["val_accuracy"], "seed_val_accuracy": s.get("val_accuracy"),
               "target_5x_met": bool(speed and speed >= 5),
               "accuracy_equal_or_better": bool(ok and e["val_accuracy"] >= s["val_accuracy"] - 1e-9)}
    return {"summary": summary, "edgetl": e, "seed": s}


if __name__ == "__main__":
    main()

"""Benchmark: camera-size photos, decoded in full or at a reduced JPEG DCT scale (the preprocessing spec's
jpeg_draft), and `edgetl train` on them against the seed recipe (not a timed test).

The set (generated in a temp dir, never committed): every hymenoptera photo upscaled 6x (bicubic, JPEG quality
92; about 3000x2250 px, the pixel count of a phone photo; at most 12 MP), its train/ and val/ kept. Measured:
  1. decoding one val photo to 224 px on one thread, in full and with jpeg_draft 2 (ms per image), and how far
     the two decodes' pixels are apart;
  2. `edgetl train` with its defaults (jpeg_draft 2), `edgetl train` with every photo decoded in full
     (the spec's jpeg_draft set to 0 in that process), and the seed recipe (benchmarks/seed_recipe.py,
     10 epochs), each a whole process: wall time and val accuracy.

Run under the CPU lock: flock /tmp/edgetl-cpu.lock python benchmarks/bench_decode.py
Writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import BIN, SHARED, edgetl_train, run, seed_train, upscaled, warm_cache, workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCALE = 6
# `edgetl train` with the spec's jpeg_draft at 0: every photo decoded in full (the comparison arm)
FULL_DECODE = ("import sys; from edgetl.core import images; images.MOBILENET_V2_PREPROCESSING['jpeg_draft'] = 0; "
               "from edgetl.cli import main; sys.argv[0] = 'edgetl'; main()")


def make_photos(src: Path, dst: Path) -> dict:
    from PIL import Image, ImageOps

    n, sizes = 0, []
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / f.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(f) as im:
                im = upscaled(ImageOps.exif_transpose(im).convert("RGB"), SCALE)
                im.save(out, "JPEG", quality=92)
                sizes.append(im.size)
                n += 1
        except OSError:  # the set's unreadable placeholder: left out
            continue
    return {"photos": n, "median_size": sorted(sizes)[len(sizes) // 2], "bytes": sum(p.stat().st_size for p in
                                                                                    dst.rglob("*.jpg"))}


def decode_times(files: list[Path], size: int) -> dict:
    import numpy as np

    from edgetl.core.images import decoding_of, load_image, preprocessing_spec

    res: dict = {}
    pix = {}
    default = decoding_of(preprocessing_spec(size))
    for draft in (0, 2, 0, 2):  # alternated, each measured twice: the faster pass counts
        t = time.perf_counter()
        pix[draft] = [load_image(f, size, default._replace(jpeg_draft=draft)) for f in files]
        ms = (time.perf_counter() - t) / len(files) * 1e3
        res[f"ms_per_image_jpeg_draft_{draft}"] = round(min(ms, res.get(f"ms_per_image_jpeg_draft_{draft}", ms)), 2)
    diff = np.stack([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(pix[0], pix[2])])
    res["mean_abs_pixel_difference"] = round(float(diff.mean()), 3)
    res["speed_up"] = round(res["ms_per_image_jpeg_draft_0"] / res["ms_per_image_jpeg_draft_2"], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hymenoptera")
    ap.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("EDGETL_WEIGHTS_DIR", SHARED / "weights")))
    ap.add_argument("--seed-epochs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "decode.json")
    a = ap.parse_args()
    from edgetl.model.backbone import keras_weights_name

    tmp, env, logs, res = workspace("decode", a.weights_dir)
    common = ["--alpha", "0.35", "--image-size", "224"]
    try:
        data = tmp / "data"
        res["data"] = make_photos(a.data, data)
        warm_cache(data)
        res["decode_224"] = decode_times(sorted((data / "val").rglob("*.jpg"))[:60], 224)
        print(json.dumps(res["decode_224"]), flush=True)
        edgetl_train(data, tmp / "warmup", env, logs, "warmup", *common)  # makes the cached base (every later run)
        res["edgetl"] = edgetl_train(data, tmp / "e", env, logs, "edgetl", *common)
        cmd = [str(BIN / "python"), "-c", FULL_DECODE, "train", str(data), "--out", str(tmp / "f"), "--overwrite",
               *common]
        wall, rc = run(cmd, env, logs / "full.log")
        if rc != 0:
            raise SystemExit(f"full decode run failed (rc {rc}): see {logs / 'full.log'}")
        meta = json.loads((tmp / "f" / "edgetl.json").read_text())
        assert meta["preprocessing"]["jpeg_draft"] == 0
        res["edgetl_full_decode"] = {"wall_seconds": wall, "val_accuracy": round(meta["metrics"]["val_accuracy"], 4),
                                     "timings": meta["timings"]}
        print(json.dumps({k: res[k]["wall_seconds"] for k in ("edgetl", "edgetl_full_decode")}), flush=True)
        res["seed"] = seed_train(data, tmp / "seed", env, logs, "seed", 0.35, 224,
                                 str(a.weights_dir / keras_weights_name(0.35)), a.seed_epochs)
        res["speed_up"] = round(res["seed"]["wall_seconds"] / res["edgetl"]["wall_seconds"], 2)
        res["machine"]["load_avg_end"] = os.getloadavg()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps({k: res[k] for k in ("data", "decode_224", "speed_up")}))
        for k in ("edgetl", "edgetl_full_decode", "seed"):
            print(k, res[k]["wall_seconds"], res[k].get("val_accuracy"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

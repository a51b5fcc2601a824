"""Where int8 beats fp32 on this CPU: TFLite and ONNX, int8 against fp32, over MobileNetV2 widths and input
sizes, 1 and 2 threads.

Each model is MobileNetV2 with a 2-class head, converted by edgetl's own converters (ONNX int8:
export.convert.onnx_from_tflite, with its weight encoding), given minimal edgetl metadata, and timed by
`edgetl bench`'s worker: a fresh process per file and thread count, batch 1, p50 latency, `--amx auto`.
TFLite files of every width have random weights (XNNPACK runs every op in int8 whatever the values; int8
ranges are calibrated on random inputs). ONNX files are made only for the widths whose ImageNet weights
are in EDGETL_WEIGHTS_DIR (../shared/weights: alpha 0.35 and 0.5): with random weights onnxruntime left
13 of the 52 convs of the alpha 0.35 int8 file in float, none of a trained model's, so a random-weight
ONNX int8 time says nothing about a real file. Conversions are cached in --cache; the timed part holds
/tmp/edgetl-cpu.lock (as `flock /tmp/edgetl-cpu.lock` does).

    python benchmarks/bench_int8_sweep.py [--alphas 0.35,0.5,0.75,1.0] [--sizes 96,160,224] [--threads 1,2]
        [--json benchmarks/results/int8_sweep.json]

Prints a Markdown table (docs/quantization.md) of int8 speed / fp32 speed (> 1: int8 faster).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
FILES = {"tflite-fp32": "model-fp32.tflite", "tflite-int8": "model-int8.tflite",
         "onnx-fp32": "model-fp32.onnx", "onnx-int8": "model-int8.onnx"}
SPEC = {"color": "RGB", "layout": "NHWC", "name": "mobilenet_v2", "offset": -1.0, "range": [-1.0, 1.0],
        "resize": "bilinear", "scale": 1 / 127.5}


def weights_file(alpha: float) -> Path | None:
    from edgetl.model.backbone import keras_weights_name

    p = Path(os.environ.get("EDGETL_WEIGHTS_DIR", REPO.parent / "shared" / "weights")) / keras_weights_name(alpha)
    return p if p.is_file() else None


def build(alpha: float, size: int, folder: Path) -> None:
    """The files of MobileNetV2 (alpha, size) with a 2-class head in `folder`: TFLite with random weights,
    ONNX with ImageNet weights where the weights file exists."""
    import numpy as np

    from edgetl.core import artifact
    from edgetl.core.formats import FORMATS
    from edgetl.core.runtime import INT8_WEIGHTS
    from edgetl.export import convert
    from edgetl.model.backbone import build_base
    from edgetl.model.tfenv import set_seed, tf_and_keras

    _, keras = tf_and_keras()
    calib = np.random.default_rng(0).uniform(-1, 1, (16, size, size, 3)).astype(np.float32)
    ctxs = {}
    for weights in ("random", "imagenet"):
        path = weights_file(alpha) if weights == "imagenet" else None
        if weights == "imagenet" and path is None:
            continue
        set_seed(0)
        model = keras.Sequential([build_base(alpha, size, str(path) if path else None),
                                  keras.layers.Dense(2, activation="softmax")])
        # export's context as the converters read it; bias values change no latency
        ctxs[weights] = SimpleNamespace(model=model, float_model=model, size=size, qat_graph=None, cache={},
                                        calibration_inputs=lambda: calib, float_ops=(),
                                        onnx_weights=INT8_WEIGHTS, correct_biases=False)
    folder.mkdir(parents=True, exist_ok=True)
    for name, fn in FILES.items():
        fmt = FORMATS[name]
        if fmt.suffix == ".onnx" and "imagenet" not in ctxs:
            continue
        ctx = ctxs["random" if fmt.suffix == ".tflite" else "imagenet"]
        raw = fmt.convert(ctx)
        meta = {"format": name, "classes": ["a", "b"], "preprocessing": {**SPEC, "size": [size, size]},
                "source": {"alpha": alpha, "image_size": size,
                           "weights": "random" if fmt.suffix == ".tflite" else "imagenet"}}
        if name == "onnx-int8":
            meta["int8_weights"] = INT8_WEIGHTS
        if fmt.suffix == ".tflite":
            out = artifact.embed_tflite(raw, meta)
        else:
            import onnx

            proto = onnx.load_from_string(raw)
            artifact.embed_onnx(proto, meta)
            out = proto.SerializeToString()
        (folder / fn).write_bytes(out)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", default="0.35,0.5,0.75,1.0")
    ap.add_argument("--sizes", default="96,160,224")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=0.7)
    ap.add_argument("--min-runs", type=int, default=30)
    ap.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "edgetl-int8-sweep"))
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "int8_sweep.json"))
    a = ap.parse_args()
    alphas = [float(x) for x in a.alphas.split(",")]
    sizes = [int(x) for x in a.sizes.split(",")]
    threads = [int(x) for x in a.threads.split(",")]
    cache = Path(a.cache)

    for alpha in alphas:  # conversions first (TensorFlow), never while timing
        for size in sizes:
            folder = cache / f"a{alpha}-{size}"
            want = [f for n, f in FILES.items() if n.startswith("tflite") or weights_file(alpha)]
            if not all((folder / f).is_file() for f in want):
                print(f"converting alpha {alpha}, {size} px", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, __file__, "--build-one", str(alpha), str(size), str(folder)],
                               check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

    from edgetl.bench.worker import run_worker
    from edgetl.core import amx, cpu

    rows = []
    with open("/tmp/edgetl-cpu.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the same lock `flock /tmp/edgetl-cpu.lock` takes
        for alpha in alphas:
            for size in sizes:
                for n in threads:
                    for name, fn in FILES.items():
                        path = cache / f"a{alpha}-{size}" / fn
                        if not path.is_file():
                            continue
                        res = run_worker({"path": str(path), "threads": n, "min_time": a.min_time,
                                          "min_runs": a.min_runs, "amx": "auto"})
                        lat = res.get("latency_ms") or {}
                        rows.append({"alpha": alpha, "size": size, "threads": n, "format": name,
                                     "weights": "random" if name.startswith("tflite") else "imagenet",
                                     "status": res["status"], "p50_ms": lat.get("p50"), "min_ms": lat.get("min"),
                                     "cpu_p50_ms": (res.get("cpu_ms") or {}).get("p50"), "runs": lat.get("runs"),
                                     "amx": res.get("amx"), "session": res.get("session")})
                        print(f"a{alpha} {size}px x{n} {name}: {res['status']} p50 {lat.get('p50')}",
                              file=sys.stderr, flush=True)
    ratios = []
    by = {(r["alpha"], r["size"], r["threads"], r["format"]): r for r in rows}
    for alpha in alphas:
        for size in sizes:
            for n in threads:
                row = {"alpha": alpha, "size": size, "threads": n}
                for rt in ("tflite", "onnx"):
                    f, i = by.get((alpha, size, n, f"{rt}-fp32")), by.get((alpha, size, n, f"{rt}-int8"))
                    if f and i and f["p50_ms"] and i["p50_ms"]:
                        row[f"{rt}_fp32_ms"], row[f"{rt}_int8_ms"] = f["p50_ms"], i["p50_ms"]
                        row[f"{rt}_int8_speed_vs_fp32"] = f["p50_ms"] / i["p50_ms"]
                ratios.append(row)
    feat = cpu.features()
    flags = sorted(set((cpu.cpuinfo().get("flags") or "").split()) &
                   {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"})
    out = {"benchmark": "int8_sweep", "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "commit": git_commit(), "host": {"cpu": feat.get("model"), "class": feat.get("class"), "flags": flags,
                                            "cores": os.cpu_count(), "amx_present": amx.present(feat)},
           "settings": {"min_time_s": a.min_time, "min_runs": a.min_runs, "batch": 1, "amx": "auto"},
           "command": "python " + " ".join(sys.argv), "rows": rows, "ratios": ratios}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"| α | px | thr | tflite fp32 ms | tflite int8 ms | int8 speed | onnx fp32 ms | onnx int8 ms | int8 speed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ratios:
        cells = [str(r["alpha"]), str(r["size"]), str(r["threads"])]
        for rt in ("tflite", "onnx"):
            if f"{rt}_int8_speed_vs_fp32" in r:
                cells += [f"{r[f'{rt}_fp32_ms']:.2f}", f"{r[f'{rt}_int8_ms']:.2f}",
                          f"{r[f'{rt}_int8_speed_vs_fp32']:.2f}×"]
            else:
                cells += ["–"] * 3
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--build-one":
        sys.path.insert(0, str(REPO))
        build(float(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())

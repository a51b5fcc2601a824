"""Calibration variants for post-training int8, against the converter's min/max ranges on 200 images:
fewer and more calibration images, MSE-optimal activation ranges (all activations, or only those
that can be negative: the linear bottleneck outputs and residual sums), and the 200-image file with its
conv biases corrected (model.bias: export's plain file). Plain int8 TFLite files (no op in float, float
I/O), scored on each run's test split (val where it has none): drop (Keras accuracy minus the file's, points) and
top-1 agreement with the Keras model.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_calibration.py RUN [RUN ...] [--json PATH]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_calibration.py --table   # the table of the last run

MSE ranges: each activation's calibrated (min, max) is scaled by the factor in 0.30-0.99 (24 steps) or 1
whose 8-bit quantization of the tensor's values (4,000 samples per calibration image) has the least
squared error. Hand-written: the converter offers min/max only, so the ranges are edited in the
calibrated file (its tensors' min/max) before it is quantized.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

FACTORS = (1.0, *(round(0.30 + 0.03 * i, 2) for i in range(24)))  # 1, then 0.30 ... 0.99


def _samples(calibrated: bytes, xs, per_image: int = 4000) -> tuple:
    """(ModelT of the calibrated file, {tensor index: sampled values}) for its activations with a range."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgetl.core.flatbuffer import load_model

    m = load_model(calibrated)
    tensors = m.subgraphs[0].tensors
    idx = [i for i, t in enumerate(tensors)
           if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1]
    it = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    rng = np.random.default_rng(0)
    got: dict = {i: [] for i in idx}
    for x in xs:
        it.set_tensor(inp, x[None].astype(np.float32))
        it.invoke()
        for i in idx:
            v = it.get_tensor(i).ravel()
            got[i].append(v[rng.integers(0, v.size, per_image)] if v.size > per_image else v.copy())
    return m, {i: np.concatenate(v) for i, v in got.items()}


def _mse(v, lo: float, hi: float) -> float:
    import numpy as np

    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255.0
    if s == 0:
        return 0.0
    z = np.round(-lo / s)
    q = np.clip(np.round(v / s) + z, 0, 255)
    return float((((q - z) * s - v) ** 2).mean())


def mse_ranges(calibrated: bytes, xs, negative_only: bool) -> tuple[bytes, int]:
    from edgetl.core.flatbuffer import pack_tflite

    m, samples = _samples(calibrated, xs)
    tensors, changed = m.subgraphs[0].tensors, 0
    for i, v in samples.items():
        q = tensors[i].quantization
        lo, hi = float(q.min[0]), float(q.max[0])
        if negative_only and lo >= 0:
            continue
        f = min(FACTORS, key=lambda f: _mse(v, lo * f, hi * f))
        if f < 1.0:
            q.min, q.max, changed = [lo * f], [hi * f], changed + 1
    return pack_tflite(m), changed


def measure(run_path: Path) -> dict:
    from edgetl.core.formats import FORMATS
    from edgetl.core.rundir import Run
    from edgetl.core.runtime import TFLiteRunner
    from edgetl.export.context import build_context
    from edgetl.export.convert import calibrated, tflite_int8_bytes
    from edgetl.export.parity import _test_set
    from edgetl.model.convert import quantize_calibrated
    from edgetl.model.predict import predict

    run = Run(run_path)
    out: dict = {"run": str(run_path)}
    base = None
    for n in (100, 200, 1000):
        ctx = build_context(run, run.split_items("train"), run.split_items("val"), n)
        test = _test_set(ctx)
        x, y = test if test is not None else (ctx.val_x, ctx.val_y)
        out["scored_on"] = "test" if test is not None else "val"
        k = predict(ctx.model, x).argmax(1)

        def score(tfl: bytes) -> dict:
            p = TFLiteRunner(tfl, FORMATS["tflite-int8"]).outputs(x).argmax(1)
            return {"drop": round(100 * float((k == y).mean() - (p == y).mean()), 2),
                    "agreement": round(float((p == k).mean()), 4)}

        cal = calibrated(ctx)
        out[f"minmax-{len(ctx.calibration_inputs())}"] = score(quantize_calibrated(cal, "float32"))
        if n == 200:
            base = (ctx, cal, score)
            out["bias-corrected"] = score(tflite_int8_bytes(ctx, "float32"))
    ctx, cal, score = base
    for name, neg in (("mse-all", False), ("mse-negative", True)):
        tfl, changed = mse_ranges(cal, ctx.calibration_inputs(), neg)
        out[name] = {**score(quantize_calibrated(tfl, "float32")), "tensors_changed": changed}
    print(json.dumps(out), flush=True)
    return out


def table(rows: list[dict]) -> str:
    """Markdown: one line per case (runs named CASE-SEED), means over its seeds."""
    import re
    from collections import defaultdict

    groups: dict = defaultdict(list)
    for r in rows:
        groups[re.sub(r"-\d+$", "", Path(r["run"]).name)].append(r)
    cols = ("min/max, 100 images", "min/max, 200", "min/max, all training images", "MSE ranges, all",
            "MSE ranges, negative ones", "min/max, 200, biases corrected (default)")
    out = ["| case | scored on | seeds | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for case, rs in sorted(groups.items()):
        cells = []
        for pick in (lambda r: r.get("minmax-100") or _largest(r), lambda r: r.get("minmax-200") or _largest(r),
                     _largest, lambda r: r["mse-all"], lambda r: r["mse-negative"], lambda r: r["bias-corrected"]):
            v = [pick(r) for r in rs]
            drop, agreement = sum(x["drop"] for x in v) / len(v), 100 * sum(x["agreement"] for x in v) / len(v)
            cells.append(f"{drop:.2f} / {agreement:.1f} %")
        out.append(f"| {case} | {rs[0]['scored_on']} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _largest(r: dict) -> dict:
    return r[max((k for k in r if k.startswith("minmax-")), key=lambda k: int(k.split("-")[1]))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/calibration.json"))
    ap.add_argument("--table", action="store_true", help="print the markdown table of --json and stop")
    a = ap.parse_args()
    if a.table:
        print(table(json.loads(a.json.read_text())["rows"]))
        return
    rows = [measure(r) for r in a.runs]
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {a.json}")
    print(table(rows))


if __name__ == "__main__":
    main()

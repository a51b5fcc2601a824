"""Export benchmark: accuracy and size of every format, for a PTQ run and a QAT run, plus the
ONNX-int8 paths side by side. Not a timed test. Writes benchmarks/results/export.json.

    make bench-export            # hymenoptera, alpha 0.35, 224 px (flock /tmp/edgetl-cpu.lock)
    python benchmarks/bench_export.py --size 128 --out /tmp/x.json   # quicker look

Targets: int8 PTQ within 1.0 point of Keras float, QAT int8 within 0.5 point, ONNX int8 within 1.5 points,
int8 files <= 30 % of the fp32 size (export's default --size-budget 30; each int8 entry also records the
converter's per-channel file it started from). Sizes are those of the written files, after the exporter's lossless
post-processing (applied to every format); `converter_bytes` is the converter's own output, before
compaction and before the edgetl metadata is embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("EDGETL_SHARED", REPO.parent / "shared"))


def onnx_int8_ort(ctx, fmt, calibrate_method: str = "MinMax", extra_options: dict | None = None) -> bytes:
    """onnxruntime's static QDQ quantization of the exporter's float ONNX graph, calibrated on the same
    images, weights then stored as u8 like the exporter's (the comparison the exporter's path won)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from edgetl.core.formats import FORMATS
    from edgetl.export.convert import INPUT_NAME, converted
    from edgetl.export.onnx_int8 import unsigned_weights

    fp32 = converted(ctx, FORMATS["onnx-fp32"])
    x = ctx.calibration_inputs()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(range(len(x)))

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {INPUT_NAME: x[i:i + 1]}

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=fmt.options.get("per_channel", True), activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, calibrate_method),
                        extra_options=extra_options or {})
        proto = onnx.load(str(dst))
    unsigned_weights(proto)
    return proto.SerializeToString()


def onnx_paths(run_dir: Path, calib: int) -> dict:
    """Accuracy of each ONNX-int8 path on the run's validation images (the exporter uses 'tflite')."""
    from edgetl.core.formats import FORMATS
    from edgetl.core.rundir import Run
    from edgetl.export.artifacts import compact
    from edgetl.export.context import build_context
    from edgetl.export.convert import onnx_int8

    run = Run(run_dir)
    ctx = build_context(run, run.split_items("train"), run.split_items("val"), calib, seed=0)
    x, y, kp = ctx.val_x, ctx.val_y, ctx.keras_probs
    fmt = FORMATS["onnx-int8"]
    keras_acc = float((kp.argmax(1) == y).mean())
    paths = {"tflite": lambda: onnx_int8(ctx, fmt)}
    if not ctx.qat:  # ORT's calibrators need calibration images; a QAT run's point is not to calibrate
        paths.update({
            "ort-minmax": lambda: onnx_int8_ort(ctx, fmt, "MinMax"),
            "ort-percentile-99.99": lambda: onnx_int8_ort(ctx, fmt, "Percentile", {"CalibPercentile": 99.99}),
            "ort-minmax-explicit-asym-act-sym-weights": lambda: onnx_int8_ort(
                ctx, fmt, "MinMax", {"ActivationSymmetric": False, "WeightSymmetric": True}),
        })
    out = {}
    for name, make in paths.items():
        t0 = time.perf_counter()
        try:
            blob = compact(fmt, make())  # the exporter's lossless post-processing, as for written files
            probs = fmt.runner_class()(blob, fmt).outputs(x)  # the default session, as export's parity
            acc = float((probs.argmax(1) == y).mean())
            out[name] = {"accuracy": acc, "drop_points": round(100 * (keras_acc - acc), 2), "bytes": len(blob),
                         "agreement": float((probs.argmax(1) == kp.argmax(1)).mean()),
                         "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # a path that cannot run is a result too
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        print(f"  onnx-int8 path {name}: {out[name]}", flush=True)
    return out


def tflite_bytes_breakdown(path: Path) -> dict:
    """Where the bytes of a TFLite file go: constant data by role, quantization vectors as written
    (the exporter's compaction shares identical ones), metadata entries, and the rest (tables, names, padding)."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as S

    buf = path.read_bytes()
    m = S.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    out = {"file": len(buf), "weights": 0, "biases": 0, "scales": 0, "bias_scales": 0, "zero_points": 0,
           "metadata": sum(len(m.buffers[e.buffer].data) for e in m.metadata or [])}
    seen_s, seen_z = set(), set()
    for sg in m.subgraphs:
        bias = {int(op.inputs[2]) for op in sg.operators if len(op.inputs) >= 3 and op.inputs[2] >= 0}
        for i, t in enumerate(sg.tensors):
            d = m.buffers[t.buffer].data
            if d is not None and len(d):
                out["biases" if i in bias else "weights"] += len(d)
            q = t.quantization
            if q is not None and q.scale is not None and len(q.scale):
                if i in bias:
                    out["bias_scales"] += 4 * len(q.scale)
                for key, arr, seen in (("scales", q.scale, seen_s), ("zero_points", q.zeroPoint, seen_z)):
                    b = np.asarray(arr).tobytes()
                    if b not in seen:
                        seen.add(b)
                        out[key] += len(b) + 4
    out["other"] = out["file"] - sum(out[k] for k in ("weights", "biases", "scales", "zero_points", "metadata"))
    return out


def format_row(run: Path, name: str, art: dict, fp32_bytes: int | None, converter_bytes: int | None) -> dict:
    """One manifest entry as a benchmark row: accuracy, size against the family's fp32 file, and what the
    size budget did."""
    p = art["parity"]
    row = {"accuracy": p["accuracy"], "agreement": p["agreement"], "drop_points_vs_reference": p["drop_points"],
           "bytes": art["bytes"], "size_vs_fp32": round(art["bytes"] / fp32_bytes, 3) if fp32_bytes else None,
           "converter_bytes": converter_bytes, "max_abs_diff": p["max_abs_diff"]}
    b = art.get("size_budget")
    if b:  # --size-budget (default 30 %): the converter's per-channel file, and what was done
        row["size_budget"] = {
            "met": b["met"], "reason": b.get("reason"),
            "per_tensor_layers": [L["layer"] for L in b["per_tensor_layers"]],
            "per_channel_bytes": b["per_channel_bytes"],
            "per_channel_size_vs_fp32": round(b["per_channel_bytes"] / b["fp32_bytes"], 4),
            "per_channel_accuracy": (b.get("per_channel_parity") or p)["accuracy"]}
        row["size_vs_fp32"] = round(art["bytes"] / fp32_bytes, 4) if fp32_bytes else None
    if name == "tflite-int8":
        row["bytes_breakdown"] = tflite_bytes_breakdown(run / art["file"])
    return row


def run_row(run: Path, manifest: dict, converter_bytes: dict, seconds: dict) -> dict:
    """A trained and exported run as a benchmark row: every format, and the Keras references."""
    meta = json.loads((run / "edgetl.json").read_text())
    arts = manifest["artifacts"]
    fp32 = {"tflite": arts.get("tflite-fp32", {}).get("bytes"), "onnx": arts.get("onnx-fp32", {}).get("bytes")}
    row = {"keras_accuracy": None, "keras_float_accuracy": None, "formats": {}, "qat_info": meta.get("qat_info"),
           "train_seconds": seconds["train"], "export_seconds": seconds["export"],
           "keras_bytes": (run / "model.keras").stat().st_size}
    for name, art in arts.items():
        if art.get("status") != "ok":
            row["formats"][name] = {"status": art.get("status"), "reason": art.get("reason")}
            continue
        p = art["parity"]
        row["keras_accuracy" if p.get("max_drop") is not None else "keras_float_accuracy"] = p["keras_accuracy"]
        row["formats"][name] = format_row(run, name, art, fp32["tflite" if name.startswith("tflite") else "onnx"],
                                          converter_bytes.get(name))
    return row


def targets(ptq: dict, qat: dict) -> dict:
    """The targets, measured against the float Keras model of the PTQ run (same seed, same float phases)."""
    fl = ptq["keras_float_accuracy"]

    def pts(r, n):
        f = r["formats"].get(n, {})
        return None if "accuracy" not in f else round(100 * (fl - f["accuracy"]), 2)

    return {
        "keras_float_accuracy": fl,
        "ptq_tflite_int8_drop_points (<= 1.0)": pts(ptq, "tflite-int8"),
        "qat_tflite_int8_drop_points (<= 0.5)": pts(qat, "tflite-int8"),
        "ptq_onnx_int8_drop_points (<= 1.5)": pts(ptq, "onnx-int8"),
        "qat_onnx_int8_drop_points (<= 1.5)": pts(qat, "onnx-int8"),
        "int8_size_vs_fp32 (<= 0.30)": {f"{k} {n}": r["formats"].get(n, {}).get("size_vs_fp32")
                                        for k, r in (("ptq", ptq), ("qat", qat)) for n in ("tflite-int8", "onnx-int8")},
    }


def record_converter_bytes() -> dict[str, int]:
    """Converter output sizes before compaction (the exporter's lossless post-processing), by format: the
    exporter's compact() is wrapped to note the size of what it is given."""
    from edgetl.export import artifacts, budget

    converter_bytes: dict[str, int] = {}
    real_compact = artifacts.compact

    def recording_compact(fmt, raw):
        converter_bytes[fmt.name] = len(raw)
        return real_compact(fmt, raw)

    artifacts.compact = budget.compact = recording_compact  # both modules call it by their own name
    return converter_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--qat-epochs", type=int, default=None, help="default: edgetl train's")
    ap.add_argument("--work", default="/tmp/edgetl-bench-export")  # model files stay out of the repo
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "export.json"))
    a = ap.parse_args()
    os.environ.setdefault("EDGETL_WEIGHTS_DIR", str(SHARED / "weights"))
    from rich.console import Console

    from edgetl.export.stage import export_run
    from edgetl.train.config import TrainConfig
    from edgetl.train.stage import train

    if a.qat_epochs is None:
        a.qat_epochs = TrainConfig.qat_epochs
    converter_bytes = record_converter_bytes()
    console = Console()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"config": vars(a), "runs": {}}
    for kind in ("ptq", "qat"):
        run = work / kind
        t0 = time.perf_counter()
        if run.exists():
            shutil.rmtree(run)
        console.rule(f"{kind}: train")
        train(TrainConfig(data=str(SHARED / "data" / "hymenoptera"), out=str(run), alpha=a.alpha,
                          image_size=a.size, seed=0, qat=kind == "qat", qat_epochs=a.qat_epochs), console=console)
        seconds = {"train": round(time.perf_counter() - t0, 1)}
        console.rule(f"{kind}: export --int8")
        converter_bytes.clear()
        t0 = time.perf_counter()
        try:
            manifest = export_run(run, int8=True, calib=a.calib, keep_going=True, console=console)
        except Exception as e:  # failures are recorded in the manifest; keep benchmarking
            print(f"export reported: {e}")
            manifest = json.loads((run / "manifest.json").read_text())
        seconds["export"] = round(time.perf_counter() - t0, 1)
        row = run_row(run, manifest, converter_bytes, seconds)
        console.rule(f"{kind}: ONNX int8 paths")
        row["onnx_int8_paths"] = onnx_paths(run, a.calib)
        results["runs"][kind] = row
    results["targets"] = targets(results["runs"]["ptq"], results["runs"]["qat"])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print_json(json.dumps(results["targets"]))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""int8 accuracy control: the plain post-training int8 file against the controlled one, per run.

For each run directory: both files of both families (TFLite int8, ONNX int8), made by export's own code
(build_context + make_artifact, size budget on), scored on val (what export checks) and on the run's test
split (held out: never used by any choice), with top-1 agreement with the Keras model, size and a quick
latency ratio. The plain file is the ladder's first rung alone (targets set to 0, --max-drop 100, so it
is recorded even where export would refuse it: `passes_max_drop` says whether it passes the default).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_int8_control.py RUN [RUN ...] [--json PATH]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_int8_control.py --table   # the table of the last run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def measure(run_path: Path) -> dict:
    import numpy as np

    from edgetl.core import cpu
    from edgetl.core.formats import FORMATS
    from edgetl.core.rundir import Run
    from edgetl.export import control
    from edgetl.export.context import build_context
    from edgetl.export.parity import _test_set
    from edgetl.export.stage import make_artifact

    run = Run(run_path)
    out = {"run": str(run_path), "alpha": run.meta.get("alpha"), "size": run.image_size,
           "classes": len(run.classes), "cpu": cpu.features().get("class")}
    for mode in ("plain", "controlled"):
        ctx = build_context(run, run.split_items("train"), run.split_items("val"), 200)
        test = _test_set(ctx)
        saved = control.TARGET_AGREEMENT, control.VAL_AGREEMENT, control.NOISE_CUT
        if mode == "plain":
            control.TARGET_AGREEMENT, control.VAL_AGREEMENT, control.NOISE_CUT = 0.0, 0.0, 0.0
        try:
            results: dict = {}
            for name in ("tflite-int8", "onnx-int8"):
                fmt = FORMATS[name]
                t0 = time.perf_counter()
                blob, meta, par, budget, ctl = make_artifact(ctx, fmt, 100.0 if mode == "plain" else None, 30.0,
                                                             results)
                row = {"bytes": len(blob), "seconds": round(time.perf_counter() - t0, 1),
                       "val_drop": par["drop_points"], "val_agreement": par["agreement"],
                       "float_ops": (ctl or {}).get("float_ops"), "result": (ctl or {}).get("result"),
                       "latency_ratio": (ctl or {}).get("latency_ratio"),
                       "budget_met": (budget or {}).get("met"),
                       "passes_max_drop": par["drop_points"] <= fmt.tolerance}
                if test is not None:
                    from edgetl.model.predict import predict

                    x, y = test
                    p = fmt.runner_class()(blob, fmt).outputs(x).argmax(1)
                    k = predict(ctx.model, x).argmax(1)
                    row.update(test_n=int(len(y)), test_acc=float((p == y).mean()),
                               keras_test_acc=float((k == y).mean()), test_drop=100 * float((k == y).mean() - (p == y).mean()),
                               test_agreement=float((p == k).mean()))
                out[f"{mode}/{name}"] = row
                print(run_path.name, mode, name, json.dumps(row), flush=True)
        finally:
            control.TARGET_AGREEMENT, control.VAL_AGREEMENT, control.NOISE_CUT = saved
    return out


def table(rows: list[dict]) -> str:
    """Markdown: one line per (case, family), means over the seeds found for each case; drop and agreement on
    the test split, or on val (marked) for a case without one."""
    import re
    from collections import defaultdict

    groups: dict = defaultdict(list)
    for r in rows:
        case = re.sub(r"-\d+$", "", Path(r["run"]).name)
        groups[case].append(r)
    out = ["| case | file | seeds | drop (points) plain -> controlled | agreement plain -> controlled | "
           "plain fails --max-drop 2 | ops in float | size vs plain | latency vs plain |",
           "|---|---|---|---|---|---|---|---|---|"]

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    for case, rs in sorted(groups.items()):
        for fam in ("tflite-int8", "onnx-int8"):
            p = [r[f"plain/{fam}"] for r in rs]
            c = [r[f"controlled/{fam}"] for r in rs]
            has_test = all("test_drop" in x for x in p + c)
            dk, ak, tag = ("test_drop", "test_agreement", "") if has_test else ("val_drop", "val_agreement", " (val)")
            drop = f"{mean([x[dk] for x in p]):.2f} -> {mean([x[dk] for x in c]):.2f}{tag}"
            agr = f"{100 * mean([x[ak] for x in p]):.1f} % -> {100 * mean([x[ak] for x in c]):.1f} %{tag}"
            fails = sum(not x["passes_max_drop"] for x in p)
            ops = "/".join(str(len(x["float_ops"] or [])) for x in c)
            size = mean([x["bytes"] / y["bytes"] for x, y in zip(c, p)])
            lat = [x["latency_ratio"] for x in c if x["latency_ratio"] is not None]
            out.append(f"| {case} | {fam} | {len(rs)} | {drop} | {agr} | {fails} of {len(rs)} | {ops} | "
                       f"{100 * (size - 1):+.1f} % | {('x%.2f' % mean(lat)) if lat else '-'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/int8_control.json"))
    ap.add_argument("--table", action="store_true", help="print the markdown table of --json and stop")
    a = ap.parse_args()
    if a.table:
        print(table(json.loads(a.json.read_text())["rows"]))
        return
    a.json.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in a.runs:  # written after each run: a long study can be read while it runs
        rows.append(measure(r))
        a.json.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {a.json}")
    print(table(rows))


if __name__ == "__main__":
    main()

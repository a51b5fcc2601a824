"""`edgetl export RUN`: TFLite and ONNX artifacts (float and int8), each parity-checked and self-describing.

Flow: validate everything (run, model file, formats, calibration/validation images) before any work ->
load the Keras model and the run's validation images -> per format: convert to bytes in memory, compact,
embed edgetl metadata (with the file's sealed sha256) and read it back, run the parity check through the
deployment runtime -> only then write the file atomically, its manifest entry with it (export.manifest:
the manifest always matches the disk) -> result table. A file that fails its check is never written (and
a stale file of that format is removed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..core import cpu
from ..core.console import native_logs_aside, progress
from ..core.errors import ArtifactCheckError, EdgetlError, describe, no_space
from ..core.formats import FORMATS, FP32_OF, Format
from ..core.rundir import MANIFEST_FILE, META_FILE
from ..core.runtime import INT8_WEIGHTS
from . import control as control_mod
from . import manifest as manifest_file
from .artifacts import compact_checked, embed
from .budget import fit_size_budget
from .config import ExportConfig, check_inputs
from .context import ExportContext, build_context
from .convert import bias_record, converted, tflite_int8_bytes
from .parity import drop_message, parity


def export_run(run_path, formats: str | None = None, int8: bool = False, calib: int = ExportConfig.calib,
               max_drop: float | None = None, keep_going: bool = False, seed: int | None = None,
               console=None, size_budget: float = ExportConfig.size_budget, verbose: bool = False) -> dict:
    """Export, check and write the chosen formats; returns the manifest. max_drop None: each int8 row's
    registry tolerance. Raises on the first failure (ArtifactCheckError, exit 3) unless keep_going, in
    which case it raises after all formats finished. verbose: TensorFlow's native log lines stay on stderr."""
    from rich.console import Console

    console = console or Console()
    run, fmts, calib_items, val_items = check_inputs(run_path, formats, int8, calib, max_drop, size_budget)
    missing_val = [p for p, _ in run.split_items("val") if not os.path.isfile(p)]
    t_start = time.perf_counter()
    int8 = any(f.precision == "int8" for f in fmts)
    with native_logs_aside(console, verbose):
        with progress(console) as bar:
            ctx = build_context(run, calib_items, val_items, calib, seed, bar, int8=int8)
            for note in manifest_file.begin(run):
                console.print(f"[yellow]note[/]: {note}", highlight=False, soft_wrap=True)
            if missing_val:
                console.print(f"[yellow]note[/]: {len(missing_val)} of {len(missing_val) + len(val_items)} validation "
                              f"images in {META_FILE} are missing on disk ({_names(missing_val)}); the parity "
                              f"checks ran on the other {len(val_items)} (all listed in {MANIFEST_FILE} under "
                              "missing_val)", highlight=False, soft_wrap=True)
            results, failures = _export_all(ctx, fmts, bar, max_drop, size_budget, keep_going)
    source = {}
    if int8:
        source["int8_source"] = {"source": "qat" if ctx.qat else "ptq", "model": ctx.int8_file,
                                 "calibration_images": None if ctx.qat_graph else ctx.calib_used}
    manifest = manifest_file.finish(run, skipped_val=ctx.skipped_val, missing_val=missing_val,
                                    checked_on=cpu.features(), seconds=round(time.perf_counter() - t_start, 1),
                                    **source)
    _print_table(console, ctx, results)
    if int8 and run.meta.get("qat") and not ctx.qat_graph:
        console.print(f"int8 files from {ctx.int8_file} ("
                      + ("quantization-aware training" if ctx.qat else
                         "post-training quantization: the QAT model did not beat it on val in `edgetl train`") + ")",
                      highlight=False)
    if failures:
        for f in failures:
            console.print(f"[red]failed[/]: {f}", highlight=False)
        raise ArtifactCheckError(f"{len(failures)} of {len(fmts)} formats failed (see above); "
                                 f"the others are in {run.path / MANIFEST_FILE}")
    console.print(f"next: [bold]edgetl bench {run.path}[/]", highlight=False)
    return manifest


def _names(paths: list[str], limit: int = 3) -> str:
    return ", ".join(Path(p).name for p in paths[:limit]) + (", ..." if len(paths) > limit else "")


def _export_all(ctx: ExportContext, fmts: list[Format], bar, max_drop, size_budget,
                keep_going: bool) -> tuple[dict, list[str]]:
    """Each format in turn: a checked file written with its manifest entry, or a failure with its reason
    and no file. Without keep_going the first failure is recorded in the manifest and raised."""
    results: dict[str, dict] = {}
    failures: list[str] = []
    task = bar.add_task("export", total=len(fmts))
    for fmt in fmts:
        bar.update(task, description=f"export {fmt.name}")
        t0 = time.perf_counter()
        try:
            blob, meta, par, budget, control = make_artifact(
                ctx, fmt, max_drop, size_budget, results,
                on_budget=lambda: bar.update(task, description=f"export {fmt.name} (size budget)"))
        except Exception as e:  # a check failure, or a converter crash: one line, never a traceback
            if no_space(e) is not None:  # not this format's fault: the CLI names the place, nothing half-written
                raise
            reason, shown = _failure(fmt, e)
            results[fmt.name] = manifest_file.put_failure(ctx.run, fmt.name, reason)
            failures.append(reason)
            if not keep_going:
                raise ArtifactCheckError(shown) from None
        else:
            entry = {"status": "ok", "parity": par, "seconds": round(time.perf_counter() - t0, 2),
                     "input_dtype": meta["input"]["dtype"], **({"size_budget": budget} if budget is not None else {}),
                     **({"int8_control": control} if control is not None else {})}
            results[fmt.name] = manifest_file.put_file(ctx.run, fmt.name, blob, entry)
        bar.advance(task)
    return results, failures


def make_artifact(ctx: ExportContext, fmt: Format, max_drop: float | None, size_budget: float, results: dict,
                  on_budget=None):
    """One format's file, checked and not yet written: (bytes, metadata, parity, size-budget info or None,
    int8 accuracy-control record or None). Raises on a failed check. int8 files come from the accuracy
    control's ladder (export.control); a failure of the size-budget step keeps the checked per-channel file."""
    control = None
    if fmt.precision == "int8" and not ctx.qat_graph:
        blob, meta, par, control = _controlled(ctx, fmt, max_drop)
    else:
        blob, meta = embed(ctx, fmt, compact_checked(ctx, fmt, converted(ctx, fmt)))
        par = parity(ctx, fmt, blob, max_drop)
    budget = None
    if fmt.precision == "int8" and size_budget:
        if on_budget is not None:
            on_budget()
        try:
            small = fit_size_budget(ctx, fmt, blob, meta, par, size_budget, max_drop, results)
            blob, meta, par, budget = _keep_control(ctx, control, (blob, meta, par), small)
        except Exception as e:  # the per-channel file is checked and good: keep it, say why
            budget = {"percent": size_budget, "met": False, "per_tensor_layers": [],
                      "reason": f"the size-budget step failed ({describe(e)})"}
    return blob, meta, par, budget, control


ONNX_WEIGHTS = (INT8_WEIGHTS, "u8")  # the fast encoding first; exact u8 where s8 pairs cost accuracy
# estimated agreement the exact u8 file must gain over the s8 file when neither meets the target (u8 has no
# VNNI kernel: about 2x slower on an AVX-512 VNNI CPU, docs/quantization.md)
ENCODING_MARGIN = 0.005


def _controlled(ctx: ExportContext, fmt: Format, max_drop: float | None):
    """The int8 file of the accuracy-control ladder (export.control), its metadata, parity and the ladder's
    record; ArtifactCheckError when no rung passes --max-drop. An ONNX file whose ladder misses the target
    with s8 weights in bounded pairs (coarser steps where pairs would saturate) climbs again with exact u8
    weights, and the better of the two ships: the one that meets the target, else the s8 file unless the
    u8 file's estimated agreement is ENCODING_MARGIN higher."""
    if fmt.suffix != ".onnx":
        return _ladder(ctx, fmt, max_drop)
    results, failure = [], None
    for weights in ONNX_WEIGHTS:
        ctx.onnx_weights = weights
        try:
            out = _ladder(ctx, fmt, max_drop)
        except ArtifactCheckError as e:
            failure = failure or e
            continue
        out[3]["onnx_weights"] = weights
        results.append((weights, ctx.float_ops, out))
        if out[3]["result"] == "target met":
            break
    if not results:
        raise failure
    weights, ops, out = max(results, key=lambda r: (r[2][3]["result"] == "target met",
                                                    (r[2][3]["estimated_agreement"] or 0.0)
                                                    - (ENCODING_MARGIN if r[0] != ONNX_WEIGHTS[0] else 0.0)))
    ctx.onnx_weights, ctx.float_ops = weights, ops
    if len(results) > 1 or weights != ONNX_WEIGHTS[0]:
        out[3]["onnx_weights_tried"] = [r[0] for r in results]
        out[3]["onnx_weights_estimates"] = {r[0]: r[2][3]["estimated_agreement"] for r in results}
    return out


def _ladder(ctx: ExportContext, fmt: Format, max_drop: float | None):
    """One climb of the ladder for fmt with the context's encoding."""
    made: dict = {}

    def quantize(ops):
        ctx.float_ops = tuple(ops)
        return tflite_int8_bytes(ctx, "float32")

    def check(ops):
        ctx.float_ops = tuple(ops)
        blob, meta = embed(ctx, fmt, compact_checked(ctx, fmt, converted(ctx, fmt)))
        made[ops] = (blob, meta, parity(ctx, fmt, blob, max_drop, check=False))
        return made[ops][2]

    def latency(ops):
        plain = made.get(())
        return control_mod.latency_ratio(fmt, plain[0], made[ops][0]) if plain else None

    chosen, record = control_mod.run_ladder(ctx, fmt, quantize, check, latency)
    record["bias_correction"] = bias_record(ctx)
    if chosen is None:
        ctx.float_ops = ()
        first = made.get(())
        why = drop_message(fmt, first[2]) if first else f"{fmt.name}: {record['rungs'][0].get('error')}"
        raise ArtifactCheckError(f"{why}; no rung of the accuracy control passed (up to "
                                 f"{max(len(r['float_ops']) for r in record['rungs'])} ops in float"
                                 + (", s8 and u8 weights" if fmt.suffix == ".onnx" else "")
                                 + "): try `edgetl train --qat`, more training images, or a higher --max-drop")
    ctx.float_ops = chosen.float_ops
    blob, meta, par = made[chosen.float_ops]
    if chosen.float_ops:
        plain = made.get(())
        record["bytes_added"] = len(blob) - len(plain[0]) if plain else None
        record["latency_ratio"] = chosen.latency
    return blob, meta, par, record


def _keep_control(ctx: ExportContext, control: dict | None, per_channel: tuple, small: tuple) -> tuple:
    """The size budget's file, unless it gives up the accuracy control's estimated agreement (more than
    control.BUDGET_SLACK below the chosen rung's TFLite file, which both families' budget files come
    from, where that rung is under the target): then the per-channel file with the budget marked not met."""
    blob, meta, par, budget = small
    if control is None or not budget or not budget.get("per_tensor_layers"):
        return small
    est, rung = control_mod.budget_estimate(ctx, [L["layer"] for L in budget["per_tensor_layers"]])
    floor = min(control_mod.TARGET_AGREEMENT, rung) - control_mod.BUDGET_SLACK
    budget["estimated_agreement"] = round(est, 4)
    if est >= floor:
        return small
    budget.update(met=False, per_tensor_layers=[],
                  reason=f"per-tensor scales lower the estimated agreement to {100 * est:.1f}% "
                         f"(at least {100 * floor:.1f}% needed)")
    return (*per_channel, budget)


def _failure(fmt: Format, e: Exception) -> tuple[str, str]:
    """(reason for the manifest, line for the user) of a format that failed."""
    if isinstance(e, EdgetlError):
        return str(e), f"{e} (file not written)"
    reason = f"{fmt.name}: conversion failed ({describe(e)})"
    return reason, reason


def _print_table(console, ctx: ExportContext, results: dict) -> None:
    from rich.table import Table

    tab = Table(title=f"edgetl export {ctx.run.path}")
    # file names come from the registry (FORMATS[name].filename); manifest.json lists them with sha256
    ok = [r["parity"] for r in results.values() if r["status"] == "ok"]
    test = [f"test acc ({ok[0]['test_n']})"] if ok and "test_accuracy" in ok[0] else []
    for c in ("format", "size", "of fp32", f"val acc ({len(ctx.val_y)})", *test, "agreement", "max |Δp|", "status"):
        tab.add_column(c, justify="left" if c in ("format", "status") else "right", no_wrap=True)
    y = ctx.val_y
    kt = {k: f"{100 * ctx.cache[f'test-keras-{k}']:.1f}%" if f"test-keras-{k}" in ctx.cache else "-"
          for k in ("int8", "float")}
    tab.add_row("keras", _mb(ctx.run.model_path.stat().st_size), "-",
                f"{100 * float((ctx.keras_probs.argmax(1) == y).mean()):.1f}%",
                *([kt["int8"] if ctx.qat_graph or kt["float"] == "-" else kt["float"]] if test else []), "-", "-",
                "QAT ref" if ctx.qat_graph else "ref")
    if ctx.qat_graph:
        tab.add_row("keras float", "-", "-", f"{100 * float((ctx.float_probs.argmax(1) == y).mean()):.1f}%",
                    *([kt["float"]] if test else []), "-", "-", "float")
    notes = []
    for name, r in results.items():
        if r["status"] != "ok":
            tab.add_row(name, "-", "-", "-", *(["-"] if test else []), "-", "-", "[red]failed[/]")
            continue
        p, b = r["parity"], r.get("size_budget") or {}
        ref = results.get(FP32_OF[FORMATS[name].suffix], {}).get("bytes") or b.get("fp32_bytes")
        tab.add_row(name, _mb(r["bytes"]), f"{100 * r['bytes'] / ref:.1f}%" if ref else "-",
                    f"{100 * p['accuracy']:.1f}%", *([f"{100 * p['test_accuracy']:.1f}%"] if test else []),
                    f"{100 * p['agreement']:.1f}%", f"{p['max_abs_diff']:.2g}", "[green]ok[/]")
        if r.get("int8_control"):
            notes += _control_note(name, r["int8_control"])
        if b:
            notes += _budget_note(name, b)
    console.print(tab)
    for n in notes:
        console.print(n, highlight=False, soft_wrap=True)


def _control_note(name: str, c: dict) -> list[str]:
    """What the accuracy control kept in float, what it cost and whether the target was met."""
    if c["float_ops"] is None:
        return []
    est = c["estimated_agreement"]
    said = f"estimated agreement with the model on unseen images {100 * est:.1f}%" if est is not None else ""
    limit = c["target"].get("max_latency_ratio")
    slow = [r for r in c["rungs"] if limit and (r.get("latency_ratio") or 0) > limit]
    if slow:
        said += (f"; {len(slow[-1]['float_ops'])} ops in float would cost latency x{slow[-1]['latency_ratio']:.2f}, "
                 f"over the x{limit:.2f} limit")
    enc = _encoding_note(c)
    tail = f"; {enc}" if enc else ""
    if not c["float_ops"] and c["result"] == "target met":
        return [f"{name}: {enc}"] if enc else []
    if not c["float_ops"]:
        return [f"{name}: accuracy-control target missed ({said}); "
                + ("no op kept in float helped" if not slow else "kept fully int8") + tail]
    k = len(c["float_ops"])
    cost = []
    if c.get("bytes_added") is not None:
        cost.append(f"{c['bytes_added'] / 1e3:+.1f} kB")
    if c.get("latency_ratio") is not None:
        cost.append(f"latency x{c['latency_ratio']:.2f}")
    missed = "" if c["result"] == "target met" else \
        f" (target {100 * c['target']['estimated_agreement']:.0f}% missed)"
    return [f"{name}: {k} op{'s' if k > 1 else ''} kept in float ({', '.join(c['float_ops'])}): {said}{missed}"
            + (f", {', '.join(cost)}" if cost else "") + tail]


def _encoding_note(c: dict) -> str:
    """Why an ONNX int8 file ships with exact u8 weights, which onnxruntime runs without VNNI kernels."""
    if c.get("onnx_weights", ONNX_WEIGHTS[0]) == ONNX_WEIGHTS[0]:
        return ""
    est = c.get("onnx_weights_estimates") or {}
    fast = est.get(ONNX_WEIGHTS[0])
    than = f" ({100 * fast:.1f}% with s8 weights in bounded pairs)" if fast is not None else ""
    return (f"u8 weights, for their higher estimated agreement{than}: exact on every CPU, but onnxruntime "
            "has no VNNI kernel for them (about 2x slower than s8 weights on a VNNI CPU)")


def _budget_note(name: str, b: dict) -> list[str]:
    """What the size budget did to a file, when it did anything: the layers it changed, or why not."""
    if b.get("per_tensor_layers"):
        k = len(b["per_tensor_layers"])
        return [f"{name}: {k} layer{' uses' if k == 1 else 's use'} per-tensor weight scales to fit "
                f"--size-budget {b['percent']:g}% (per-channel file: "
                f"{100 * b['per_channel_bytes'] / b['fp32_bytes']:.1f}% of fp32, "
                f"{100 * b['per_channel_parity']['accuracy']:.1f}% accuracy)"]
    if not b["met"]:
        return [f"{name}: --size-budget {b['percent']:g}% not met, per-channel file kept: {b['reason']}"]
    return []


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"

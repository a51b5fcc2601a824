"""The checks every exported file passes before it is written: its predictions on the run's validation
images against Keras (float files: probabilities within the registry row's tolerance; int8 files:
accuracy within --max-drop points, by default the row's tolerance), and for int8 ONNX files (rows with a
session_tolerance) the same answers on every CPU. When the run has a test split, each file's test accuracy
(and Keras') is recorded beside: reported, never checked against (the checks and choices stay on val)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import Format
from ..core.images import decode_all, decoding_of, preprocess
from ..model.predict import predict
from .context import ExportContext
from .onnx_int8 import saturation_risks


def parity(ctx: ExportContext, fmt: Format, model: bytes, max_drop: float | None = None, check: bool = True) -> dict:
    """The file's predictions (through its registry runner) against the Keras reference; raises
    ArtifactCheckError when they are off (check=False: says so in res["ok"] instead, for int8 files).
    max_drop: int8 accuracy points, None for the row's tolerance."""
    t0 = time.perf_counter()
    probs = fmt.runner_class()(model, fmt).outputs(ctx.val_x)
    int8 = fmt.precision == "int8"
    # float files are checked against the float graph; int8 files against the run's model (QAT or float)
    y, kp = ctx.val_y, (ctx.keras_probs if int8 else ctx.float_probs)
    acc = float((probs.argmax(1) == y).mean())
    kacc = float((kp.argmax(1) == y).mean())
    res = {
        "n": int(len(y)),
        "accuracy": round(acc, 6),
        "keras_accuracy": round(kacc, 6),
        "agreement": round(float((probs.argmax(1) == kp.argmax(1)).mean()), 6),
        "max_abs_diff": float(np.abs(probs - kp).max()),
        "mean_abs_diff": float(np.abs(probs - kp).mean()),
        "drop_points": round(100.0 * (kacc - acc), 3),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    res.update(test_scores(ctx, fmt, model, int8))
    if "session_tolerance" in fmt.options:
        res["sessions"] = check_onnx_sessions(fmt, model, probs, ctx.val_x)
    if int8:
        _check_drop(fmt, res, fmt.tolerance if max_drop is None else max_drop, check)
    else:
        _check_probabilities(fmt, res, acc, kacc)
    return res


def _test_set(ctx: ExportContext):
    """(preprocessed test images, labels) of the run's test split still on this machine, decoded once per
    export; None without any."""
    if "test-set" not in ctx.cache:
        items = [(p, y) for p, y in ctx.run.split_items("test") if Path(p).is_file()]
        pix, y, _, _ = decode_all(items, ctx.size, decoding=decoding_of(ctx.spec))
        ctx.cache["test-set"] = (preprocess(pix, ctx.spec), y) if len(y) else None
    return ctx.cache["test-set"]


def test_scores(ctx: ExportContext, fmt: Format, model: bytes, int8: bool) -> dict:
    """{"test_n", "test_accuracy", "keras_test_accuracy"} of a file on the run's test split ({} without one);
    Keras' reference as for the val check (the run's model for int8 files, the float graph for float)."""
    test = _test_set(ctx)
    if test is None:
        return {}
    x, y = test
    key = "test-keras-int8" if int8 else "test-keras-float"
    if key not in ctx.cache:
        ref = ctx.model if int8 and ctx.qat_graph else ctx.float_model  # the model val checks compare against
        ctx.cache[key] = float((predict(ref, x).argmax(1) == y).mean())
    probs = fmt.runner_class()(model, fmt).outputs(x)
    return {"test_n": int(len(y)), "test_accuracy": round(float((probs.argmax(1) == y).mean()), 6),
            "keras_test_accuracy": round(ctx.cache[key], 6)}


def _check_drop(fmt: Format, res: dict, max_drop: float, check: bool = True) -> None:
    res["max_drop"] = max_drop
    res["ok"] = res["drop_points"] <= max_drop
    if not res["ok"] and check:
        raise ArtifactCheckError(drop_message(fmt, res))


def drop_message(fmt: Format, res: dict) -> str:
    """One line on an int8 file that loses more than --max-drop."""
    acc, kacc = res["accuracy"], res["keras_accuracy"]
    return (f"{fmt.name}: accuracy {100 * acc:.1f}% vs Keras {100 * kacc:.1f}% on {res['n']} validation images "
            f"(drop {res['drop_points']:.1f} points > --max-drop {res['max_drop']:g}; top-1 agreement "
            f"{100 * res['agreement']:.1f}%)")


def _check_probabilities(fmt: Format, res: dict, acc: float, kacc: float) -> None:
    tol = fmt.tolerance
    res["tolerance"] = tol
    res["ok"] = res["max_abs_diff"] <= tol
    if not res["ok"]:
        raise ArtifactCheckError(
            f"{fmt.name}: differs from Keras by up to {res['max_abs_diff']:.2g} in probability (tolerance {tol:g}); "
            f"top-1 agreement {100 * res['agreement']:.1f}%, accuracy {100 * acc:.1f}% vs {100 * kacc:.1f}%")


def check_onnx_sessions(fmt: Format, model: bytes, probs: np.ndarray, x: np.ndarray) -> dict:
    """An int8 ONNX file must give the same answers wherever it runs. From the file: no GEMM-lowered
    layer may hold s8 weights that a non-VNNI x86 CPU can saturate. On this CPU: the default session
    (`probs`) and one with session.x64quantprecision=1 must agree within the row's session_tolerance
    (on a non-VNNI x86 a difference is the saturation signature; elsewhere both run the same kernels)."""
    import onnx

    risks = saturation_risks(onnx.load_from_string(model))
    if risks:
        raise ArtifactCheckError(f"{fmt.name}: {len(risks)} GEMM layer(s) hold s8 weight pairs over |w1| + |w2| <= 128 "
                                 f"that CPUs without VNNI can saturate (first: {risks[0]})")
    try:
        precise = fmt.runner_class()(model, fmt, precise=True).outputs(x)
    except EdgetlError as e:  # onnxruntime rejects the file with the option set: not portable either
        raise ArtifactCheckError(str(e)) from None
    tol = float(fmt.options["session_tolerance"])
    diff = float(np.abs(probs - precise).max()) if len(x) else 0.0
    agree = float((probs.argmax(1) == precise.argmax(1)).mean()) if len(x) else 1.0
    if diff > tol:
        raise ArtifactCheckError(f"{fmt.name}: the default session and session.x64quantprecision=1 disagree by up "
                                 f"to {diff:.2g} in probability (top-1 agreement {100 * agree:.1f}%): int8 "
                                 "sums saturate on this CPU")
    return {"x64quantprecision_max_abs_diff": diff, "x64quantprecision_agreement": agree, "tolerance": tol,
            "saturation_risks": 0}

"""int8 size budget (`edgetl export --size-budget`): per-tensor weight scales (export.requantize) for the
fewest layers that make an int8 file fit in a given share of its fp32 file.

The exporter checks the smaller file like any int8 file (parity, --max-drop), and keeps it only if it
gives up at most MAX_EXTRA_DROP points (1.0 for PTQ runs, 0.5 for QAT runs) against the per-channel file;
otherwise the per-channel file stays and the manifest says why.
"""

from __future__ import annotations

import bisect

from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import FORMATS, FP32_OF, Format
from .artifacts import compact, compact_checked, embed
from .context import ExportContext
from .convert import converted, onnx_from_tflite, tflite_int8_bytes
from .parity import parity
from .requantize import MAX_ERROR, by_weight_error, candidates, per_tensor, rank

# accuracy points the smaller file may lose against the per-channel one: the int8 accuracy targets for
# each kind of run (PTQ within 1.0 point of float, QAT within 0.5). Measured on five QAT seeds, the
# budget cost one val image in three of them, so a QAT run keeps its per-channel file then.
MAX_EXTRA_DROP = {"ptq": 1.0, "qat": 0.5}
BUDGET_RANK_IMAGES = 48  # calibration images on which each candidate layer's output change is measured


def smallest_fit(n: int, build, size, limit: int, hint: int | None = None):
    """Smallest k in 1..n whose build(k) has size(build(k)) <= limit, by bisection (file size falls
    as k grows). Returns (k, result) or (None, None) when even k = n does not fit. `hint`: a k worth
    trying first (the other family's answer), which often settles the search in one or two builds."""
    cache: dict = {}

    def fits(k: int) -> bool:
        if k not in cache:
            cache[k] = build(k)
        return size(cache[k]) <= limit

    if n < 1:
        return None, None
    lo, hi = 1, n
    if hint is not None and 1 <= hint <= n:
        if not fits(hint):
            lo = hint + 1
        elif hint == 1 or not fits(hint - 1):
            return hint, cache[hint]
        else:
            hi = hint - 1
    if lo > hi or not fits(hi):
        return None, None
    k = lo + bisect.bisect_left(range(lo, hi), True, key=fits)  # fits(hi): the answer is in lo..hi
    return k, cache[k]


def fp32_bytes(ctx: ExportContext, fmt: Format, results: dict) -> int:
    """Size of the fp32 file of fmt's family as this export writes it (made here if not selected)."""
    name = FP32_OF[fmt.suffix]
    r = results.get(name)
    if r and r.get("status") == "ok":
        return int(r["bytes"])
    key = f"{name}-bytes"
    if key not in ctx.cache:
        f = FORMATS[name]
        ctx.cache[key] = len(embed(ctx, f, compact(f, converted(ctx, f)))[0])
    return ctx.cache[key]


def ranked_layers(ctx: ExportContext) -> list:
    """The candidate layers, cheapest first; one ranking for both families (layer indices are the same)."""
    key = ("budget-layers", ctx.float_ops)
    if key not in ctx.cache:
        model = tflite_int8_bytes(ctx, "float32")
        cands = candidates(model)
        try:
            x = ctx.calibration_inputs()[:BUDGET_RANK_IMAGES]
        except EdgetlError:  # a QAT run whose training images are gone: rank by weight error alone
            ctx.cache[key] = by_weight_error(cands)
        else:
            fmt = FORMATS["tflite-int8"]
            ctx.cache[key] = rank(model, cands, lambda m, xs: fmt.runner_class()(m, fmt).outputs(xs), x)
    return ctx.cache[key]


def fit_size_budget(ctx: ExportContext, fmt: Format, blob: bytes, meta: dict, par: dict, percent: float,
                    max_drop: float | None, results: dict):
    """If the int8 file is larger than `percent` % of its fp32 file, give per-tensor weight scales to the
    fewest layers that make it fit. The smaller file is kept only if it passes the parity check and
    loses at most MAX_EXTRA_DROP points against the per-channel file; otherwise the per-channel file
    stays, and the reason is reported. Returns (blob, meta, parity, info)."""
    ref = fp32_bytes(ctx, fmt, results)
    limit = int(ref * percent / 100)
    info = {"percent": percent, "fp32_bytes": ref, "limit_bytes": limit, "per_channel_bytes": len(blob),
            "per_tensor_layers": []}
    if len(blob) <= limit:
        info["met"] = True
        return blob, meta, par, info

    def not_met(reason: str):
        info.update(met=False, reason=reason)
        return blob, meta, par, info

    layers = ranked_layers(ctx)
    k, built = smallest_fit(len(layers), _builder(ctx, fmt, layers, percent), lambda r: len(r[0]), limit,
                            hint=ctx.cache.get("budget-k"))
    if k is None:
        return not_met(f"{len(layers)} layers can take per-tensor scales (weight error <= {MAX_ERROR:g}); "
                       f"with all of them the file is still above {percent:g} % of fp32")
    small, meta2, raw = built
    compact_checked(ctx, fmt, raw)  # the same lossless-compaction proof as the per-channel file had
    try:
        par2 = parity(ctx, fmt, small, max_drop)
    except ArtifactCheckError as e:
        return not_met(f"with {k} layers per-tensor: {e}")
    lost = 100 * (par["accuracy"] - par2["accuracy"])
    allowed = MAX_EXTRA_DROP["qat" if ctx.qat else "ptq"]
    if lost > allowed:
        return not_met(f"with {k} layers per-tensor the accuracy falls {lost:.1f} points below the per-channel "
                       f"file's (at most {allowed:g} allowed for a {'QAT' if ctx.qat else 'PTQ'} run)")
    ctx.cache["budget-k"] = k
    info.update(met=True, per_tensor_layers=[L.asdict() for L in layers[:k]], per_channel_parity=par)
    return small, meta2, par2, info


def _builder(ctx: ExportContext, fmt: Format, layers: list, percent: float):
    """build(k): fmt's file with the first k layers per-tensor -> (embedded bytes, metadata, converter bytes)."""
    src = tflite_int8_bytes(ctx, fmt.options.get("io", "int8") if fmt.suffix == ".tflite" else "float32")
    wq_rule = f"per-channel weights; per-tensor where it fits the size budget ({percent:g} % of fp32)"

    def build(k: int):
        tfl = per_tensor(src, [L.index for L in layers[:k]])
        raw = tfl if fmt.suffix == ".tflite" else onnx_from_tflite(tfl, fmt, ctx.onnx_weights)
        return embed(ctx, fmt, compact(fmt, raw), {"per_tensor_layers": k, "rule": wq_rule}) + (raw,)

    return build

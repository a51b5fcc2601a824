"""Accuracy-controlled int8 (`edgetl export --int8`): the fewest ops kept in float that make the int8 file
agree with the model it comes from, on images it has not seen.

Why a control and not one recipe: how much post-training int8 loses depends on the data and the head.
Measured on harder variants of the bundled sets (docs/quantization.md), the int8 error at the pooled
features is not spread evenly: one to three early ops (the first depthwise and 1x1 convolutions, at the
highest resolution and with the fewest channels) carry 25-45 % of it, and keeping them in float costs a
few kB. 16-bit activations and keeping the head in float recovered nothing there.

The ladder, for TFLite and ONNX alike (ONNX int8 files are converted from the TFLite file of the same
rung):
1. The converter calibrates once (min/max over the calibration images); each rung quantizes those ranges
   with a set of ops kept in float (`model.convert.quantize_calibrated`).
2. Ops are ranked by measured sensitivity: how much of the int8 noise at the pooled features (mean
   squared error against the float model on RANK_IMAGES calibration images) disappears when that op
   alone is kept in float. Ops whose share is at least DOMINANT_SHARE are the dominant ones.
3. A rung passes when its file loses at most --max-drop points on val (the check every int8 file gets),
   agrees with the model on at least VAL_AGREEMENT of val, and its estimated agreement on unseen images
   is at least TARGET_AGREEMENT. The estimate resamples the int8 noise measured at the pooled features
   (calibration and val images) onto the val images' float features and counts how often the top-1 class
   flips: label-free, and with many more samples than a small val split has images.
4. Rungs are tried in order: the plain file; when it misses the target, the dominant ops in float, then
   one more ranked op at a time (at most MAX_FLOAT_OPS). The first rung that passes ships. When none
   does, the rung with the dominant ops in float ships if it passes --max-drop (the missed target is
   said), else the first rung that passes --max-drop; exit 3 only when no rung does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.flatbuffer import op_list, short_name
from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import FORMATS
from ..core.runtime import TFLiteRunner
from ..model.graph import cut_layer, top_model
from ..model.predict import predict
from .context import ExportContext
from .convert import calibrated, tflite_int8_bytes

TARGET_AGREEMENT = 0.985  # estimated top-1 agreement with the model on unseen images
VAL_AGREEMENT = 0.97  # measured top-1 agreement on val
DOMINANT_SHARE = 0.10  # an op that alone carries this share of the int8 noise at the features
MAX_FLOAT_OPS = 8
RANK_IMAGES = 32  # calibration images the ranking measures the noise on
ESTIMATE_NOISE = 200  # noise samples (calibration + val images) the estimate resamples
ESTIMATE_VAL = 300  # val images the estimate resamples onto
BUDGET_SLACK = 0.002  # estimated agreement the size budget's per-tensor scales may give up
LATENCY_CALLS = 30  # batch-1 calls per file when the cost of the float ops is timed
HEAD_OPS = ("MEAN", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE")  # after the pooled features: not ranked


@dataclass
class Rung:
    float_ops: tuple  # names of the ops kept in float
    labels: list  # their short names, for people
    parity: dict | None = None
    estimate: float | None = None
    error: str | None = None  # why the file could not be made or checked
    extra: dict = field(default_factory=dict)

    @property
    def passes_drop(self) -> bool:
        return self.parity is not None and bool(self.parity.get("ok"))

    @property
    def meets_target(self) -> bool:
        return (self.passes_drop and self.parity["agreement"] >= VAL_AGREEMENT
                and self.estimate is not None and self.estimate >= TARGET_AGREEMENT)


class _Features:
    """The float model's pooled features (the cut the head reads) and the int8 file's, to measure noise."""

    def __init__(self, ctx: ExportContext):
        self.model = ctx.model
        self.cut = cut_layer(ctx.model)
        from ..model.tfenv import tf_and_keras

        _, keras = tf_and_keras()
        bottom = keras.Model(ctx.model.input, ctx.model.get_layer(self.cut).output)
        self.top = top_model(ctx.model, self.cut)
        cx = ctx.calibration_inputs()
        self.rank_x = cx[:RANK_IMAGES]
        n_cal = max(0, ESTIMATE_NOISE - min(len(ctx.val_x), ESTIMATE_NOISE // 2))
        self.noise_x = np.concatenate([cx[:n_cal], ctx.val_x[:ESTIMATE_NOISE - min(n_cal, len(cx))]])
        self.val_x = ctx.val_x[:ESTIMATE_VAL]
        self.f_rank = _flat(predict(bottom, self.rank_x))
        self.f_noise = _flat(predict(bottom, self.noise_x))
        self.f_val = _flat(predict(bottom, self.val_x))
        self.top_val = predict(self.top, self.f_val.reshape(len(self.f_val), *self.top.input_shape[1:])).argmax(1)

    def int8(self, tfl: bytes, x: np.ndarray, named: bytes | None = None) -> np.ndarray:
        """The int8 file's features at the cut for x. named: a file of the same graph whose tensors still
        have the converter's names (a compacted file's are short; tensor indices stay the same)."""
        r = TFLiteRunner(tfl, FORMATS["tflite-int8"], keep_tensors=True)
        index = TFLiteRunner(named, FORMATS["tflite-int8"]).tensor(f"{self.model.name}/{self.cut}")["index"] \
            if named is not None else r.tensor(f"{self.model.name}/{self.cut}")["index"]
        return _flat(r.tensor_values(x, next(d for d in r.interp.get_tensor_details() if d["index"] == index)))

    def noise(self, tfl: bytes) -> float:
        """Mean squared int8 error at the features on the ranking images."""
        return float(((self.int8(tfl, self.rank_x) - self.f_rank) ** 2).mean())

    def estimate(self, tfl: bytes, named: bytes | None = None, chunk: int = 20) -> float:
        """Estimated top-1 agreement of the int8 file with the model on unseen images: every noise sample
        (int8 minus float features of one image) added to every val image's float features, through the
        model's own head."""
        e = self.int8(tfl, self.noise_x, named) - self.f_noise
        shape = self.top.input_shape[1:]
        flips = 0
        for j in range(0, len(e), chunk):
            z = (self.f_val[:, None, :] + e[None, j:j + chunk, :]).reshape(-1, *shape)
            top1 = predict(self.top, z, batch_size=1024).argmax(1).reshape(len(self.f_val), -1)
            flips += int((top1 != self.top_val[:, None]).sum())
        return 1.0 - flips / float(len(self.f_val) * len(e))


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1)


def features(ctx: ExportContext) -> _Features:
    if "control-features" not in ctx.cache:
        ctx.cache["control-features"] = _Features(ctx)
    return ctx.cache["control-features"]


def ranking(ctx: ExportContext, quantize) -> list[tuple[str, float]]:
    """(op name, share of the plain file's feature noise that keeping it alone in float removes), most
    sensitive first; ops after the pooled features are not ranked. quantize(float_ops) -> TFLite bytes."""
    if "control-ranking" not in ctx.cache:
        feats = features(ctx)
        plain = feats.noise(quantize(()))
        ops = op_list(calibrated(ctx))
        cut = f"{ctx.model.name}/{feats.cut}"
        body = []
        for kind, name in ops:
            if name.split(";")[0].startswith(cut) or kind in HEAD_OPS:
                break
            if kind != "PAD":
                body.append(name)
        shares = [(name, (plain - feats.noise(quantize((name,)))) / plain if plain > 0 else 0.0) for name in body]
        ctx.cache["control-ranking"] = sorted(shares, key=lambda s: -s[1])
    return ctx.cache["control-ranking"]


def rungs(ranked: list[tuple[str, float]]) -> list[tuple]:
    """Float-op sets to try in order: none, then the top 1, 2, ... ranked ops with a positive share."""
    useful = [name for name, share in ranked if share > 0][:MAX_FLOAT_OPS]
    return [()] + [tuple(useful[:k]) for k in range(1, len(useful) + 1)]


def dominant(ranked: list[tuple[str, float]]) -> int:
    return sum(1 for _, share in ranked[:MAX_FLOAT_OPS] if share >= DOMINANT_SHARE)


def choose(tried: list[Rung], n_dominant: int) -> tuple[Rung | None, str]:
    """The rung that ships and why: the first that meets the target; else the one with every dominant op
    in float, or the first, that passes --max-drop; None when no rung does."""
    for r in tried:
        if r.meets_target:
            return r, "target met"
    fallback = [r for r in tried if r.passes_drop and len(r.float_ops) == n_dominant] or \
        [r for r in tried if r.passes_drop]
    if fallback:
        return fallback[0], "target missed"
    return None, "no rung passes --max-drop"


def describe(r: Rung) -> dict:
    """A rung as the manifest records it."""
    out = {"float_ops": list(r.labels), "estimated_agreement": None if r.estimate is None else round(r.estimate, 4)}
    if r.parity is not None:
        out.update(accuracy=r.parity["accuracy"], agreement=r.parity["agreement"],
                   drop_points=r.parity["drop_points"], ok=bool(r.parity.get("ok")))
    if r.error:
        out["error"] = r.error
    return out


def run_ladder(ctx: ExportContext, quantize, check) -> tuple[Rung | None, dict]:
    """Try the rungs in order. quantize(float_ops) -> the TFLite bytes the estimate reads; check(float_ops)
    -> the candidate file's parity (its 'ok' says whether it passes --max-drop; raises ArtifactCheckError
    when the file cannot be made or checked). Returns (chosen rung or None, the record for the manifest)."""
    feats = features(ctx)
    tried: list[Rung] = []
    ranked: list = []
    ladder = [()]
    i = 0
    while i < len(ladder):
        ops = ladder[i]
        r = Rung(ops, [short_name(n) for n in ops])
        try:
            r.parity = check(ops)
            r.estimate = feats.estimate(quantize(ops))
        except (ArtifactCheckError, EdgetlError) as e:
            r.error = str(e)
        tried.append(r)
        if r.meets_target:
            break
        if i == 0:  # the plain file misses the target: rank the ops, then climb from the dominant ones
            ranked = ranking(ctx, quantize)
            ladder = [()] + [r for r in rungs(ranked)[1:] if len(r) >= dominant(ranked)]
        i += 1
    chosen, why = choose(tried, dominant(ranked)) if ranked else (tried[0] if tried[0].passes_drop else None,
                                                                    "target met")
    record = {"target": {"estimated_agreement": TARGET_AGREEMENT, "val_agreement": VAL_AGREEMENT},
              "result": why, "rungs": [describe(r) for r in tried],
              "float_ops": list(chosen.labels) if chosen else None}
    if ranked:
        record["ranking"] = [{"op": short_name(n), "share": round(s, 4)} for n, s in ranked[:MAX_FLOAT_OPS]]
    return chosen, record


def budget_estimate(ctx: ExportContext, layers: list[int]) -> float:
    """Estimated agreement of the current rung's file with per-tensor weight scales in `layers`
    (export.requantize), the size budget's rewrite."""
    from .requantize import per_tensor

    src = tflite_int8_bytes(ctx, "float32")
    return features(ctx).estimate(per_tensor(src, layers), named=src)


def latency_ratio(fmt, plain: bytes, chosen: bytes) -> float:
    """p50 batch-1 latency of the chosen file over the plain int8 file's, one thread, timed alternately in
    this process (a quick figure for the export summary; `edgetl bench` measures properly)."""
    import time

    runners = [fmt.runner_class()(b, fmt) for b in (plain, chosen)]
    x = np.zeros((1, *runners[0].io()["in_shape"][1:]), np.float32)
    xs = [r.to_input(x) for r in runners]
    times: list[list[float]] = [[], []]
    for _ in range(LATENCY_CALLS):
        for i, r in enumerate(runners):
            t0 = time.perf_counter()
            r.run(xs[i])
            times[i].append(time.perf_counter() - t0)
    return round(float(np.median(times[1]) / np.median(times[0])), 3)

"""Accuracy-controlled int8 (`edgetl export --int8`): the fewest ops kept in float that make the int8 file
agree with the model it comes from on images it has not seen.

Why a control and not one recipe: how much post-training int8 loses depends on the data and the head.
Measured on harder variants of the bundled sets (docs/quantization.md), the error is not spread evenly:
one to three early ops (the first depthwise and 1x1 convolutions, at the highest resolution and with the
fewest channels) often carry a third of it, and keeping them in float costs a few kB. 16-bit activations
and keeping the head in float recovered nothing there.

The ladder, for TFLite and ONNX alike (an ONNX int8 file is converted from the TFLite file of its rung):
1. The converter calibrates once (min/max over the calibration images); each rung quantizes those ranges
   with a set of ops kept in float (`model.convert.quantize_calibrated`), and its int8 convs get the
   bias shifts measured once on the plain file (`model.bias`).
2. What counts is int8 noise as the head sees it: the change of the head's logits when the float model's
   pooled features are replaced by the int8 file's (noise in directions the head ignores does not move an
   answer). Ops are ranked by the share of that noise, on RANK_IMAGES calibration images, that keeping the
   op alone in float removes.
3. A rung meets the target when its file passes --max-drop on val (the check every int8 file gets),
   agrees with the model on at least VAL_AGREEMENT of val, and either its estimated agreement on unseen
   images is at least TARGET_AGREEMENT or it removes at least NOISE_CUT of the plain file's head noise
   (on calibration and val images). The estimate adds every measured noise sample (int8 minus float
   features of a calibration or val image, read from the candidate file itself: an ONNX file's s8 weight
   pairs add noise its TFLite twin does not have) to every val image's float features and counts how
   often the head's top-1 class flips: label-free, with far more samples than a small val split has
   images. It is
   what decides whether the plain file is enough; near-ties set a floor under it that no op in float
   lifts much, so the ladder's own goal is the share of head noise removed.
4. Rungs are tried in order: the plain file, then each of the top MAX_FLOAT_OPS ranked ops added to the
   best rung so far, which keeps it only if the rung's measured head noise fell (`climb`: shares measured
   one op at a time need not add up); the first rung that meets the target ships. Without one, the rung
   that passes --max-drop and removes the most head noise ships (k ops in float only if they remove at
   least min_cut(k)) and the missed target is said; exit 3 only when no rung passes --max-drop. A file
   whose ops in float make it more than MAX_LATENCY slower than the plain file (timed here, alternately)
   is passed over for the next choice: int8 is for speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.flatbuffer import op_list, short_name
from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import FORMATS
from ..core.runtime import ONNXRunner, TFLiteRunner
from ..model.graph import cut_layer, top_model
from ..model.predict import predict
from .context import ExportContext
from .convert import calibrated, converted, tflite_int8_bytes

TARGET_AGREEMENT = 0.99  # estimated top-1 agreement with the model on unseen images
VAL_AGREEMENT = 0.97  # measured top-1 agreement on val
NOISE_CUT = 0.45  # share of the plain file's head noise whose removal meets the target
# when the target is out of reach, k ops in float must remove at least max(MIN_CUT, k x MIN_CUT_PER_OP) of the
# head noise (where the noise is spread thin, 8 ops remove 20 % and move the estimate by 0.1 point)
MIN_CUT = 0.10
MIN_CUT_PER_OP = 0.05
MAX_FLOAT_OPS = 8
RANK_IMAGES = 64  # calibration images the ranking measures the noise on
ESTIMATE_NOISE = 200  # noise samples (calibration + val images) the estimate resamples
ESTIMATE_VAL = 300  # val images the estimate resamples onto
BUDGET_SLACK = 0.01  # estimated agreement the size budget's per-tensor scales may give up
MAX_LATENCY = 1.10  # a file with ops in float may be this much slower than the plain int8 file
LATENCY_CALLS = 60  # batch-1 calls per file when the cost of the float ops is timed
HEAD_OPS = ("MEAN", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE")  # after the pooled features: not ranked


@dataclass
class Rung:
    float_ops: tuple  # names of the ops kept in float
    labels: list  # their short names, for people
    parity: dict | None = None
    estimate: float | None = None
    noise: float | None = None  # mean squared change of the head's logits (estimate's samples)
    cut: float = 0.0  # share of the plain file's head noise this rung removes
    error: str | None = None  # why the file could not be made or checked
    latency: float | None = None  # p50 latency over the plain file's, where measured

    @property
    def passes_drop(self) -> bool:
        return self.parity is not None and bool(self.parity.get("ok"))

    @property
    def meets_target(self) -> bool:
        return (self.passes_drop and self.parity["agreement"] >= VAL_AGREEMENT and self.estimate is not None
                and (self.estimate >= TARGET_AGREEMENT or self.cut >= NOISE_CUT))


class _Features:
    """The model's pooled features (the cut the head reads) against the int8 file's, seen through the
    model's own head: int8 noise matters only where it moves the head's logits."""

    def __init__(self, ctx: ExportContext):
        from ..model.tfenv import tf_and_keras

        _, keras = tf_and_keras()
        self.model = ctx.model
        self.cut = cut_layer(ctx.model)
        bottom = keras.Model(ctx.model.input, ctx.model.get_layer(self.cut).output)
        self.top = top_model(ctx.model, self.cut, logits=True)
        self.shape = tuple(self.top.input_shape[1:])
        cx = ctx.calibration_inputs()
        n_val = min(len(ctx.val_x), ESTIMATE_NOISE // 2)
        self.rank_x = cx[:RANK_IMAGES]
        self.noise_x = np.concatenate([cx[:ESTIMATE_NOISE - n_val], ctx.val_x[:n_val]])
        self.val_x = ctx.val_x[:ESTIMATE_VAL]
        self.f_rank = _flat(predict(bottom, self.rank_x))
        self.f_noise = _flat(predict(bottom, self.noise_x))
        self.f_val = _flat(predict(bottom, self.val_x))
        self.z_rank = self.logits(self.f_rank)
        self.z_noise = self.logits(self.f_noise)
        self.top_val = self.logits(self.f_val).argmax(1)

    def logits(self, f: np.ndarray) -> np.ndarray:
        return predict(self.top, f.reshape(len(f), *self.shape), batch_size=1024)

    def int8(self, tfl: bytes, x: np.ndarray, named: bytes | None = None) -> np.ndarray:
        """The int8 file's features at the cut for x. named: a file of the same graph whose tensors still
        have the converter's names (a compacted file's are short; tensor indices stay the same)."""
        prefix = f"{self.model.name}/{self.cut}"
        r = TFLiteRunner(tfl, FORMATS["tflite-int8"], keep_tensors=True)
        index = (TFLiteRunner(named, FORMATS["tflite-int8"]) if named is not None else r).tensor(prefix)["index"]
        return _flat(r.tensor_values(x, next(d for d in r.interp.get_tensor_details() if d["index"] == index)))

    def onnx_int8(self, blob: bytes, x: np.ndarray) -> np.ndarray:
        """An ONNX int8 file's features at the cut for x (the DequantizeLinear named after the cut made an
        output of the converter's file), in the session every ONNX file gets (core.runtime.ONNXRunner)."""
        import onnx
        from onnx import TensorProto, helper

        proto = onnx.load_from_string(blob)
        prefix = f"{self.model.name}/{self.cut}"
        names = [n.output[0] for n in proto.graph.node
                 if n.op_type == "DequantizeLinear" and n.output[0].startswith(prefix)]
        if not names:
            raise ArtifactCheckError(f"onnx-int8: no tensor named after {prefix} to read the features from")
        proto.graph.output.append(helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, None))
        r = ONNXRunner(proto.SerializeToString(), FORMATS["onnx-int8"])
        return _flat(np.concatenate([r.sess.run([names[-1]], {r.in_name: r.to_input(x[i:i + 1])})[0]
                                     for i in range(len(x))]))

    def noise(self, tfl: bytes) -> float:
        """Mean squared change of the head's logits (centred per image) that the int8 features cause, on
        the ranking images."""
        d = self.logits(self.int8(tfl, self.rank_x)) - self.z_rank
        return float(((d - d.mean(1, keepdims=True)) ** 2).mean())

    def estimate(self, int8_features, chunk: int = 20) -> tuple[float, float]:
        """(estimated top-1 agreement of an int8 file with the model on unseen images, its head noise), from
        int8_features(x), the file's features at the cut. The estimate adds every noise sample (int8 minus
        float features of one image) to every val image's float features and runs the model's own head;
        the head noise is `noise()` on the same samples."""
        e = int8_features(self.noise_x) - self.f_noise
        d = self.logits(self.f_noise + e) - self.z_noise
        head_noise = float(((d - d.mean(1, keepdims=True)) ** 2).mean())
        flips = 0
        for j in range(0, len(e), chunk):
            z = (self.f_val[:, None, :] + e[None, j:j + chunk, :]).reshape(-1, self.f_val.shape[1])
            top1 = self.logits(z).argmax(1).reshape(len(self.f_val), -1)
            flips += int((top1 != self.top_val[:, None]).sum())
        return 1.0 - flips / float(len(self.f_val) * len(e)), head_noise


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1)


def features(ctx: ExportContext) -> _Features:
    if "control-features" not in ctx.cache:
        ctx.cache["control-features"] = _Features(ctx)
    return ctx.cache["control-features"]


def ranking(ctx: ExportContext, quantize) -> list[tuple[str, float]]:
    """(op name, share of the plain file's head noise (`_Features.noise`) that keeping it alone in float
    removes), most sensitive first; ops after the pooled features are not ranked. quantize(float_ops) -> TFLite bytes."""
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


def candidates(ranked: list[tuple[str, float]]) -> list[str]:
    """The ops the ladder tries to add, in order: the top MAX_FLOAT_OPS ranked ops with a positive share."""
    return [name for name, share in ranked if share > 0][:MAX_FLOAT_OPS]


def climb(base: Rung, tried: Rung) -> Rung:
    """The rung the next one builds on once `tried` (base's ops plus one) was measured: tried when its head
    noise is below base's, else base (also when either file failed). Each op's share is measured alone;
    together, ops need not add up (keeping one in float changes what its neighbours see), so a rung keeps
    only the ops that lowered the noise of the rungs before it."""
    usable = tried.error is None and base.error is None and None not in (tried.noise, base.noise)
    return tried if usable and tried.noise < base.noise else base


def min_cut(k: int) -> float:
    """The share of head noise k ops kept in float must remove to ship when the target is missed."""
    return max(MIN_CUT, k * MIN_CUT_PER_OP)


def choose(tried: list[Rung], latency=None) -> tuple[Rung | None, str]:
    """The rung that ships and why: the first that meets the target; else, of those that pass --max-drop,
    the one that removes the most head noise (k ops in float only if that is at least min_cut(k) and the
    file agrees with the model on val as often as the plain one); None when no
    rung passes --max-drop. latency(rung) -> its file's latency over the plain file's: a rung with ops in
    float slower than MAX_LATENCY is passed over for the next choice (it gives up what the int8 file is
    for), unless every passing rung is."""
    def fast(r: Rung) -> bool:
        if not r.float_ops or latency is None:
            return True
        if r.latency is None:
            r.latency = latency(r)
        return r.latency is None or r.latency <= MAX_LATENCY

    met = next((r for r in tried if r.meets_target), None)
    if met is not None and fast(met):
        return met, "target met"
    passing = [r for r in tried if r.passes_drop]
    if not passing:
        return None, "no rung passes --max-drop"
    plain = next((p for p in passing if not p.float_ops), None)
    for r in sorted(passing, key=lambda r: (-r.cut, len(r.float_ops))):
        if r.float_ops and plain is not None and (r.cut < min_cut(len(r.float_ops))
                                                  or r.parity["agreement"] < plain.parity["agreement"]):
            continue
        if fast(r):  # a target-meeting rung seen here was already found too slow
            return r, "target missed"
    return min(passing, key=lambda r: len(r.float_ops)), "target missed"


def describe(r: Rung) -> dict:
    """A rung as the manifest records it."""
    out = {"float_ops": list(r.labels), "estimated_agreement": None if r.estimate is None else round(r.estimate, 4),
           "noise_cut": round(r.cut, 4)}
    if r.parity is not None:
        out.update(accuracy=r.parity["accuracy"], agreement=r.parity["agreement"],
                   drop_points=r.parity["drop_points"], ok=bool(r.parity.get("ok")))
    if r.latency is not None:
        out["latency_ratio"] = r.latency
    if r.error:
        out["error"] = r.error
    return out


def rung_estimate(ctx: ExportContext, fmt, ops: tuple, quantize) -> tuple[float, float]:
    """(estimated agreement, head noise) of fmt's file with `ops` in float, measured on that file itself:
    the TFLite file of the rung (quantize(ops)), or for ONNX the converter's file in the context's weight
    encoding (whose s8 pairs add noise of their own). Made once per export."""
    onnx = fmt.suffix == ".onnx"
    key = ("control-estimate", ctx.onnx_weights if onnx else "tflite", ops)
    if key not in ctx.cache:
        feats = features(ctx)
        if onnx:
            ctx.float_ops = tuple(ops)
            blob = converted(ctx, fmt)
            ctx.cache[key] = feats.estimate(lambda x: feats.onnx_int8(blob, x))
        else:
            tfl = quantize(ops)
            ctx.cache[key] = feats.estimate(lambda x: feats.int8(tfl, x))
    return ctx.cache[key]


def run_ladder(ctx: ExportContext, fmt, quantize, check, latency=None) -> tuple[Rung | None, dict]:
    """Try fmt's rungs in order. quantize(float_ops) -> the rung's TFLite bytes (ranking reads them);
    check(float_ops) -> the candidate file's parity (its 'ok' says whether it passes --max-drop; raises
    ArtifactCheckError when the file cannot be made or checked); latency(float_ops) -> the candidate
    file's latency over the plain file's (`choose`). Returns (chosen rung or None, the record for the
    manifest)."""
    tried: list[Rung] = []
    ranked: list = []

    def attempt(ops: tuple) -> Rung:
        r = Rung(ops, [short_name(n) for n in ops])
        try:
            r.parity = check(ops)
            r.estimate, r.noise = rung_estimate(ctx, fmt, ops, quantize)
            if tried and tried[0].noise:
                r.cut = 1.0 - r.noise / tried[0].noise
        except (ArtifactCheckError, EdgetlError) as e:
            r.error = str(e)
        tried.append(r)
        return r

    base = attempt(())
    if not base.meets_target:  # the plain file misses the target: rank the ops, then climb
        ranked = ranking(ctx, quantize)
        for op in candidates(ranked):
            r = attempt(base.float_ops + (op,))
            if r.meets_target:
                break
            base = climb(base, r)
    chosen, why = choose(tried, None if latency is None else lambda r: latency(r.float_ops))
    record = {"target": {"estimated_agreement": TARGET_AGREEMENT, "noise_cut": NOISE_CUT,
                         "val_agreement": VAL_AGREEMENT, "max_latency_ratio": MAX_LATENCY},
              "result": why, "rungs": [describe(r) for r in tried],
              "float_ops": list(chosen.labels) if chosen else None,
              "estimated_agreement": describe(chosen)["estimated_agreement"] if chosen else None}
    if ranked:
        record["ranking"] = [{"op": short_name(n), "share": round(s, 4)} for n, s in ranked[:MAX_FLOAT_OPS]]
    return chosen, record


def budget_estimate(ctx: ExportContext, layers: list[int]) -> tuple[float, float]:
    """(estimated agreement of the current rung's TFLite file with per-tensor weight scales in `layers`
    (export.requantize, the size budget's rewrite), the same file's without): both families' budget
    files come from that TFLite file."""
    from .requantize import per_tensor

    src = tflite_int8_bytes(ctx, "float32")
    small, feats = per_tensor(src, layers), features(ctx)
    rung = rung_estimate(ctx, FORMATS["tflite-int8"], ctx.float_ops, lambda ops: src)[0]
    return feats.estimate(lambda x: feats.int8(small, x, named=src))[0], rung


def latency_ratio(fmt, plain: bytes, chosen: bytes) -> float:
    """p50 batch-1 latency of the chosen file over the plain int8 file's, one thread, timed alternately in
    this process (a quick figure for the export summary; `edgetl bench` measures properly)."""
    import time

    runners = [fmt.runner_class()(b, fmt) for b in (plain, chosen)]
    x = np.zeros((1, *runners[0].io()["in_shape"][1:]), np.float32)
    xs = [r.to_input(x) for r in runners]
    for r, xi in zip(runners, xs):  # warm-up: first calls pay for allocations
        r.run(xi)
    times: list[list[float]] = [[], []]
    for _ in range(LATENCY_CALLS):
        for i, r in enumerate(runners):
            t0 = time.perf_counter()
            r.run(xs[i])
            times[i].append(time.perf_counter() - t0)
    return round(float(np.median(times[1]) / np.median(times[0])), 3)

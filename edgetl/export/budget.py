"""int8 size budget (`edgetl export --size-budget`): per-tensor weight scales for the layers
that lose least by it, until an int8 file fits in a given share of its fp32 file.

Why: the TFLite converter quantizes every conv weight per output channel. Each such layer then stores a
float32 scale per channel for its weights and another for its int32 bias (the bias scale is input scale
x weight scale, which the format requires). At alpha 0.35 that is 3.6 % of the fp32 file size. Along
with the int64 zero points and the graph, it puts a lossless int8 file at 32 % of fp32 (see
edgetl.compact).
One scale for a whole layer removes both vectors. For a layer whose channels have similar weight ranges,
this costs little: at alpha 0.35 the 1280-channel Conv_1 alone saves 20 kB with no change in a single
validation prediction. Depthwise convs are the counter-example (all of them per-tensor: 0.53 accuracy),
so only layers whose weights per-tensor scales change little (MAX_ERROR) take part, ranked by how much
their per-tensor version alone changes the model's outputs on calibration images, per byte saved.

Hand-written because no converter offers it: the TFLite converter's switch
(`_experimental_disable_per_channel`) is all-or-nothing, and its debugger can only turn layers back to
float. The rewrite acts on the converter's int8 file (ai_edge_litert's schema bindings):
- weights: q' = round(q * s_c / S), S = max_c s_c. This requantizes the dequantized weights, and adds at
  most S/2 per weight, which is the usual per-tensor rounding bound.
- bias: b' = round(b * s_c / S) at scale s_in * S. The bias error this adds is below half an
  accumulator step.
The exporter then checks the result like any int8 file (parity, --max-drop), and keeps it only if it
gives up at most MAX_EXTRA_DROP points (1.0 for PTQ runs, 0.5 for QAT runs) against the per-channel file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core import flatbuffer
from ..core.errors import ArtifactCheckError, EdgetlError
from ..core.formats import FORMATS, FP32_OF, Format
from ..core.runtime import TFLiteRunner
from .artifacts import compact, compact_checked, embed
from .context import ExportContext
from .convert import converted, onnx_from_tflite, tflite_int8_bytes
from .parity import parity

MAX_ERROR = 0.03  # rms over channels of |w - w_per_tensor| / |w|, per channel
# accuracy points the smaller file may lose against the per-channel one: the int8 accuracy targets for
# each kind of run (PTQ within 1.0 point of float, QAT within 0.5). Measured on five QAT seeds, the
# budget cost one val image in three of them, so a QAT run keeps its per-channel file then.
MAX_EXTRA_DROP = {"ptq": 1.0, "qat": 0.5}
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class Layer:
    index: int  # position among the per-channel weight layers (the same in the int8-I/O and float-I/O files)
    kind: str
    channels: int
    error: float  # rms over channels of the relative weight error per-tensor scales would add
    saved: int  # float32 scale bytes removed (weights + bias)
    sensitivity: float = 0.0  # mean |change of output probabilities| on calibration images, alone

    def asdict(self) -> dict:
        return {"layer": self.index, "kind": self.kind, "channels": self.channels, "error": round(self.error, 5),
                "sensitivity": round(self.sensitivity, 6)}


def _weight_ops(m):
    """(op index, kind, input, weight, bias tensors) of per-channel int8 conv/dense ops of subgraph 0."""
    names, types = flatbuffer.op_names(), flatbuffer.schema().TensorType
    sg = m.subgraphs[0]
    for k, op in enumerate(sg.operators or []):
        code = m.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        if kind not in WEIGHT_OPS or op.inputs is None or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (sg.tensors[i] for i in op.inputs[:3])
        q, bq = w.quantization, b.quantization
        if (w.type != types.INT8 or b.type != types.INT32 or q is None
                or bq is None or q.scale is None or len(q.scale) < 2 or bq.scale is None
                or len(bq.scale) != len(q.scale) or x.quantization is None or x.quantization.scale is None
                or len(x.quantization.scale) != 1 or m.buffers[w.buffer].data is None
                or m.buffers[b.buffer].data is None
                or any(q.zeroPoint if q.zeroPoint is not None else [1])  # symmetric weights only
                or any(bq.zeroPoint if bq.zeroPoint is not None else [1])):
            continue
        yield k, kind, x, w, b


def _channels_first(m, w) -> np.ndarray:
    q = w.quantization
    a = np.frombuffer(bytes(m.buffers[w.buffer].data), np.int8).reshape(w.shape)
    return np.moveaxis(a, q.quantizedDimension, 0).reshape(len(q.scale), -1)


def candidates(model: bytes, max_error: float = MAX_ERROR) -> list[Layer]:
    """Layers whose weights per-tensor scales would change by at most max_error (rms, relative)."""
    m = flatbuffer.load_model(model)
    out = []
    for i, (_, kind, _, w, _) in enumerate(_weight_ops(m)):
        s = np.asarray(w.quantization.scale, np.float64)
        deq = _channels_first(m, w).astype(np.float64) * s[:, None]
        big = s.max()
        e = deq - np.clip(np.round(deq / big), -127, 127) * big
        norm = (deq ** 2).sum(1)
        rel = np.sqrt((e ** 2).sum(1) / np.where(norm > 0, norm, 1.0))
        err = float(np.sqrt((rel ** 2).mean()))
        if err <= max_error:
            out.append(Layer(i, kind, len(s), err, 8 * len(s)))
    return out


def rank(model: bytes, layers: list[Layer], predict, x: np.ndarray) -> list[Layer]:
    """Cheapest first: each layer's measured output change on calibration images x (that layer alone
    per-tensor, predict(model_bytes, x) -> probabilities), per byte it saves. Measured rather than
    taken from the weight error, which misses how much a layer's output matters downstream."""
    ref = predict(model, x)
    out = [replace(L, sensitivity=float(np.abs(predict(per_tensor(model, [L.index]), x) - ref).mean()))
           for L in layers]
    return sorted(out, key=lambda L: (L.sensitivity / L.saved, L.index))


def per_tensor(model: bytes, layers) -> bytes:
    """The TFLite file with the weights of the given layers (Layer.index) requantized per-tensor."""
    m = flatbuffer.load_model(model)
    todo = set(int(i) for i in layers)
    for i, (_, _, x, w, b) in enumerate(_weight_ops(m)):
        if i not in todo:
            continue
        todo.discard(i)
        q, bq = w.quantization, b.quantization
        s = np.asarray(q.scale, np.float32)
        big = np.float32(s.max())
        qd = q.quantizedDimension
        shape = [1] * len(w.shape)
        shape[qd] = -1
        a = np.frombuffer(bytes(m.buffers[w.buffer].data), np.int8).reshape(w.shape).astype(np.float64)
        q2 = np.clip(np.round(a * (s.astype(np.float64) / float(big)).reshape(shape)), -127, 127).astype(np.int8)
        m.buffers[w.buffer].data = np.frombuffer(q2.tobytes(), np.uint8).copy()
        q.scale, q.zeroPoint, q.quantizedDimension = [float(big)], [0], 0
        bs = np.float32(np.float32(x.quantization.scale[0]) * big)  # the format's rule: s_in * s_w
        bd = np.frombuffer(bytes(m.buffers[b.buffer].data), np.int32).astype(np.float64)
        b2 = np.round(bd * np.asarray(bq.scale, np.float64) / float(bs)).astype(np.int32)
        m.buffers[b.buffer].data = np.frombuffer(b2.tobytes(), np.uint8).copy()
        bq.scale, bq.zeroPoint, bq.quantizedDimension = [float(bs)], [0], 0
    if todo:
        raise ValueError(f"layers {sorted(todo)}: no such per-channel int8 weight layer")
    flatbuffer.compact_tflite_model(m)
    return flatbuffer.pack_tflite(m, len(model) + 4096)


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
    if hint is not None and 1 <= hint <= n and fits(hint):
        hi = hint
        if hint == 1 or not fits(hint - 1):
            return hint, cache[hint]
        hi = hint - 1
    elif hint is not None and 1 <= hint <= n:
        lo = hint + 1
    if not fits(hi):
        return None, None
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi, cache[hi]


BUDGET_RANK_IMAGES = 48  # calibration images on which each candidate layer's output change is measured


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


def fit_size_budget(ctx: ExportContext, fmt: Format, blob: bytes, meta: dict, par: dict, percent: float,
                    max_drop: float, results: dict):
    """If the int8 file is larger than `percent` % of its fp32 file, give per-tensor weight scales to the
    fewest layers that make it fit (edgetl.budget). The smaller file is kept only if it passes the
    parity check and loses at most budget.MAX_EXTRA_DROP points (PTQ 1.0, QAT 0.5) against the per-channel file; otherwise
    the per-channel file stays, and the reason is reported. Returns (blob, meta, parity, info)."""
    ref = fp32_bytes(ctx, fmt, results)
    limit = int(ref * percent / 100)
    info = {"percent": percent, "fp32_bytes": ref, "limit_bytes": limit, "per_channel_bytes": len(blob),
            "per_tensor_layers": []}
    if len(blob) <= limit:
        info["met"] = True
        return blob, meta, par, info
    src = tflite_int8_bytes(ctx, fmt.options.get("io", "int8") if fmt.suffix == ".tflite" else "float32")
    if "budget-layers" not in ctx.cache:  # one ranking for both families (layer indices are the same)
        ranked = tflite_int8_bytes(ctx, "float32")
        try:
            x = ctx.calibration_inputs()[:BUDGET_RANK_IMAGES]
        except EdgetlError:  # a QAT run whose training images are gone: rank by weight error alone
            x = None
        cands = candidates(ranked)
        ctx.cache["budget-layers"] = (rank(ranked, cands, lambda m, x: TFLiteRunner(m).outputs(x), x) if x is not None
                                      else sorted(cands, key=lambda L: (L.error / L.saved, L.index)))
    layers = ctx.cache["budget-layers"]

    def build(k: int):
        tfl = per_tensor(src, [L.index for L in layers[:k]])
        raw = tfl if fmt.suffix == ".tflite" else onnx_from_tflite(tfl, fmt)
        wq = {"per_tensor_layers": k, "rule": "per-channel weights; per-tensor where it fits the size budget "
                                               f"({percent:g} % of fp32)"}
        return embed(ctx, fmt, compact(fmt, raw), wq) + (raw,)

    def not_met(reason: str):
        info.update(met=False, reason=reason)
        return blob, meta, par, info

    k, built = smallest_fit(len(layers), build, lambda r: len(r[0]), limit, hint=ctx.cache.get("budget-k"))
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

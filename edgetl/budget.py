"""int8 size budget (`edgetl export --size-budget`, issue 3): per-tensor weight scales for the layers
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

from .artifact import _schema  # ai_edge_litert's kept schema bindings

MAX_ERROR = 0.03  # rms over channels of |w - w_per_tensor| / |w|, per channel
# accuracy points the smaller file may lose against the per-channel one: the int8 margins issue 3 sets
# for each kind of run (PTQ within 1.0 point of float, QAT within 0.5). Measured on five QAT seeds, the
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


def _op_names() -> dict:
    return {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}


def _load(model: bytes):
    return _schema().ModelT.InitFromPackedBuf(bytearray(model), 0)


def _weight_ops(m):
    """(op index, kind, input, weight, bias tensors) of per-channel int8 conv/dense ops of subgraph 0."""
    names, types = _op_names(), _schema().TensorType
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
    m = _load(model)
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
    from .compact import compact_tflite_model, pack_tflite

    m = _load(model)
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
    compact_tflite_model(m)
    return pack_tflite(m, len(model) + 4096)


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

"""Per-tensor weight scales for chosen layers of an int8 TFLite file: the rewrite behind
`edgetl export --size-budget` (export.budget decides which layers).

Why: the TFLite converter quantizes every conv weight per output channel. Each such layer then stores a
float32 scale per channel for its weights and another for its int32 bias (the bias scale is input scale
x weight scale, which the format requires). At alpha 0.35 that is 3.6 % of the fp32 file size. Along
with the int64 zero points and the graph, it puts a lossless int8 file at 32 % of fp32 (see
core.flatbuffer).
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
No TensorFlow here: numpy and the flatbuffer schema only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core import flatbuffer

MAX_ERROR = 0.03  # rms over channels of |w - w_per_tensor| / |w|, per channel
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


def _per_channel(m, x, w, b) -> bool:
    """A conv/dense op with symmetric per-channel int8 weights, an int32 bias of the same channels and a
    per-tensor input scale: the ops the rewrite applies to."""
    types = flatbuffer.schema().TensorType
    q, bq, xq = w.quantization, b.quantization, x.quantization
    return (w.type == types.INT8 and b.type == types.INT32 and q is not None and bq is not None
            and q.scale is not None and len(q.scale) >= 2 and bq.scale is not None
            and len(bq.scale) == len(q.scale) and xq is not None and xq.scale is not None and len(xq.scale) == 1
            and m.buffers[w.buffer].data is not None and m.buffers[b.buffer].data is not None
            and not any(q.zeroPoint if q.zeroPoint is not None else [1])  # symmetric weights only
            and not any(bq.zeroPoint if bq.zeroPoint is not None else [1]))


def _weight_ops(m):
    """(op index, kind, input, weight, bias tensors) of per-channel int8 conv/dense ops of subgraph 0."""
    names = flatbuffer.op_names()
    sg = m.subgraphs[0]
    for k, op in enumerate(sg.operators or []):
        code = m.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        if kind not in WEIGHT_OPS or op.inputs is None or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (sg.tensors[i] for i in op.inputs[:3])
        if _per_channel(m, x, w, b):
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


def by_weight_error(layers: list[Layer]) -> list[Layer]:
    """The ranking without calibration images: by weight error per byte saved."""
    return sorted(layers, key=lambda L: (L.error / L.saved, L.index))


def per_tensor(model: bytes, layers) -> bytes:
    """The TFLite file with the weights of the given layers (Layer.index) requantized per-tensor."""
    m = flatbuffer.load_model(model)
    todo = set(int(i) for i in layers)
    for i, (_, _, x, w, b) in enumerate(_weight_ops(m)):
        if i in todo:
            todo.discard(i)
            _requantize(m, x, w, b)
    if todo:
        raise ValueError(f"layers {sorted(todo)}: no such per-channel int8 weight layer")
    flatbuffer.compact_tflite_model(m)
    return flatbuffer.pack_tflite(m, len(model) + 4096)


def _requantize(m, x, w, b) -> None:
    """One layer's weights to the largest channel scale S, its bias to s_in * S (in place)."""
    q, bq = w.quantization, b.quantization
    s = np.asarray(q.scale, np.float32)
    big = np.float32(s.max())
    shape = [1] * len(w.shape)
    shape[q.quantizedDimension] = -1
    a = np.frombuffer(bytes(m.buffers[w.buffer].data), np.int8).reshape(w.shape).astype(np.float64)
    q2 = np.clip(np.round(a * (s.astype(np.float64) / float(big)).reshape(shape)), -127, 127).astype(np.int8)
    m.buffers[w.buffer].data = np.frombuffer(q2.tobytes(), np.uint8).copy()
    q.scale, q.zeroPoint, q.quantizedDimension = [float(big)], [0], 0
    bs = np.float32(np.float32(x.quantization.scale[0]) * big)  # the format's rule: s_in * s_w
    bd = np.frombuffer(bytes(m.buffers[b.buffer].data), np.int32).astype(np.float64)
    b2 = np.round(bd * np.asarray(bq.scale, np.float64) / float(bs)).astype(np.int32)
    m.buffers[b.buffer].data = np.frombuffer(b2.tobytes(), np.uint8).copy()
    bq.scale, bq.zeroPoint, bq.quantizedDimension = [float(bs)], [0], 0

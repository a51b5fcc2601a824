"""Lossless size reductions of tf2onnx's output: same graph, same numbers, fewer bytes.

- shorten_onnx_names: internal tensor names become one or two characters (converted from TFLite,
  every tensor carries the chain of TF op names it was fused from: ~150 kB of a 640 kB int8 file at
  alpha 0.35); graph input/output names are kept;
- DequantizeLinear zero points that are all zero are dropped (except those of s8 weights) (the input is optional and defaults to
  zero of x's type, ONNX spec), and initializers nothing uses any more are removed;
- node names are cleared (an optional field; names are tensor names, which stay);
- a bias DequantizeLinear's per-channel scale that is exactly float32(input scale) * weight scales (the
  QDQ rule for int32 biases; checked bit for bit, else left alone) is computed by a Mul of those two
  initializers instead of being stored: 28 kB at alpha 0.35. onnxruntime constant-folds it at session
  creation (same QLinearConv fusion, bit-identical outputs); a runtime without constant folding
  computes the same float32 product once per run.
"""

from __future__ import annotations

import numpy as np


def compact_onnx(proto, derive_bias_scales: bool = True) -> None:
    """Drop all-zero DequantizeLinear zero points, derivable bias scales, unused initializers and node
    names (in place)."""
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    if derive_bias_scales:
        _derive_bias_scales(g)
    inits = {t.name: t for t in g.initializer}
    overridable = {v.name for v in g.input}  # an initializer listed as graph input may be fed at run time
    zero: dict[str, bool] = {}

    def is_zero(name: str) -> bool:
        if name not in zero:
            t = inits.get(name)
            zero[name] = t is not None and name not in overridable and not np.any(numpy_helper.to_array(t))
        return zero[name]

    def is_int8_weight(name: str) -> bool:
        """s8 weight tensors keep their zero point: onnxruntime's session.x64quantprecision=1 needs it to
        convert them (export.onnx_int8.bounded_pairs)."""
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.INT8 and len(t.dims) >= 2

    for n in g.node:
        if _is_dq(n) and len(n.input) == 3 and is_zero(n.input[2]) and not is_int8_weight(n.input[0]):
            del n.input[2]
        n.name = ""
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    for sub in _subgraph_inputs(g):
        used |= sub
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
        gin = [v for v in g.input if v.name in used or v.name not in inits]
        del g.input[:]
        g.input.extend(gin)


_NAME_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _short_name(i: int) -> str:
    """0 -> "0", 61 -> "Z", 62 -> "10": one or two characters for the few hundred tensors of a model."""
    s = ""
    while True:
        i, r = divmod(i, len(_NAME_CHARS))
        s = _NAME_CHARS[r] + s
        if i == 0:
            return s


def shorten_onnx_names(proto) -> None:
    """Short internal tensor names (in place); graph input/output names are kept. Separate from
    compact_onnx, which keeps names (so its changes can be traced by name)."""
    import itertools

    g = proto.graph
    if _subgraph_inputs(g):  # a nested graph may read outer names: leave them as they are
        return
    keep = {v.name for v in list(g.input) + list(g.output)}
    names: dict[str, str] = {}
    counter = itertools.count()

    def short(n: str) -> str:
        if not n or n in keep:
            return n
        if n not in names:
            s = _short_name(next(counter))
            while s in keep:
                s = _short_name(next(counter))
            names[n] = s
        return names[n]

    for t in g.initializer:
        t.name = short(t.name)
    for v in g.value_info:
        v.name = short(v.name)
    for n in g.node:
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]


def _subgraph_inputs(g) -> list[set]:
    """Names read by nested graphs (If/Loop bodies): an initializer they use is not unused."""
    from onnx import AttributeProto

    out = []
    for n in g.node:
        for a in n.attribute:
            subs = ([a.g] if a.type == AttributeProto.GRAPH else
                    list(a.graphs) if a.type == AttributeProto.GRAPHS else [])
            for s in subs:
                out.append({x for m in s.node for x in m.input})
                out.extend(_subgraph_inputs(s))
    return out


def _is_dq(n) -> bool:
    return n is not None and n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx")


def _derive_bias_scales(g) -> int:
    """Replace stored bias scales of QDQ Conv/Gemm by Mul(input scale, weight scales) where that product
    is bit-identical; returns how many. The Mul nodes go first (their inputs are initializers)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    io = {v.name for v in list(g.input) + list(g.output)}
    arrays: dict = {}

    def arr(name):
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name]) if name in inits else None
        return arrays[name]

    muls, drop = [], set()
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or n.domain not in ("", "ai.onnx") or len(n.input) < 3:
            continue
        dx, dw, db = (producer.get(x) for x in n.input[:3])
        if not (_is_dq(dx) and _is_dq(dw) and _is_dq(db)) or min(len(dx.input), len(dw.input), len(db.input)) < 2:
            continue
        xs, ws, bs = arr(dx.input[1]), arr(dw.input[1]), arr(db.input[1])
        name = db.input[1]
        if xs is None or ws is None or bs is None or name in drop or name in io or readers.get(name) != 1:
            continue
        if xs.dtype != np.float32 or ws.dtype != np.float32 or bs.dtype != np.float32 or xs.size != 1 \
                or bs.size < 2:
            continue
        with np.errstate(all="ignore"):
            prod = np.multiply(xs, ws, dtype=np.float32)
        if prod.shape != bs.shape or not np.array_equal(prod.view(np.uint32), bs.view(np.uint32)):
            continue
        muls.append(helper.make_node("Mul", [dx.input[1], dw.input[1]], [name]))
        drop.add(name)
    if muls:
        keep = [t for t in g.initializer if t.name not in drop]
        del g.initializer[:]
        g.initializer.extend(keep)
        nodes = muls + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    return len(muls)

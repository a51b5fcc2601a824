"""Lossless size reductions of converter output (issue 3): same graph, same numbers, fewer bytes.

Applied by `edgetl export` to every file of a family (fp32 too, so size ratios stay fair), before the
edgetl metadata is embedded; the exporter then checks that the compacted file gives bit-identical
outputs to the converter's raw file. No TensorFlow import here (artifact.py packs TFLite through it).

TFLite (int8, alpha 0.35, 224 px: 621 kB, of which 113 kB are int64 zero-point vectors, all zero
for the per-channel weights and biases, 17 kB tensor names):
- internal tensor names become short ("t12"); subgraph inputs/outputs and tensors named by a
  SignatureDef keep theirs (edgetl.runtime and the metadata record them);
- every constant-free tensor points at the schema's empty sentinel buffer 0; buffers that nothing
  references any more are dropped (indices remapped);
- identical vectors (zero points, scales, shapes, operator index lists, strings) are written once and
  referenced by every table that holds them, which the FlatBuffers format allows (a table field is an
  offset to a vector; nothing says two fields may not hold the same offset);
- Buffer.data honours the schema's `force_align: 16` (the generated Python packer aligns it to 1).

ONNX (QDQ from tf2onnx):
- shorten_onnx_names: internal tensor names become one or two characters (converted from TFLite,
  every tensor carries the chain of TF op names it was fused from: ~150 kB of a 640 kB int8 file at
  alpha 0.35); graph input/output names are kept;
- DequantizeLinear zero points that are all zero are dropped (the input is optional and defaults to
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

from .artifact import TFLITE_IDENT, _schema  # ai_edge_litert's kept schema bindings

SENTINEL_BUFFER = 0


# ---------------------------------------------------------------------------------------------- TFLite
def compact_tflite_model(m) -> None:
    """Shorten internal names and drop unused/empty buffers of a schema.ModelT, in place."""
    if m.buffers is None:
        m.buffers = []
    for sg in m.subgraphs or []:
        keep = set(int(i) for i in list(sg.inputs if sg.inputs is not None else [])
                   + list(sg.outputs if sg.outputs is not None else []))
        for sd in m.signatureDefs or []:
            if sd.subgraphIndex == m.subgraphs.index(sg):
                keep.update(int(t.tensorIndex) for t in list(sd.inputs or []) + list(sd.outputs or []))
        for i, t in enumerate(sg.tensors or []):
            if i not in keep:
                t.name = f"t{i}"
    drop_unused_buffers(m)


def drop_unused_buffers(m) -> None:
    """Constant-free tensors share the empty sentinel buffer 0; buffers nothing references (the
    converter's one empty buffer per activation, a replaced metadata entry's) are dropped and the
    indices remapped. In place on a schema.ModelT."""
    def empty(b) -> bool:
        return (b.data is None or len(b.data) == 0) and not b.offset and not b.size

    if not m.buffers or not empty(m.buffers[SENTINEL_BUFFER]):
        return  # not the usual layout (buffer 0 holding data): leave the buffer table alone
    for sg in m.subgraphs or []:
        for t in sg.tensors or []:
            if not t.isVariable and 0 <= t.buffer < len(m.buffers) and empty(m.buffers[t.buffer]):
                t.buffer = SENTINEL_BUFFER
    used = {SENTINEL_BUFFER}
    for sg in m.subgraphs or []:
        used.update(int(t.buffer) for t in sg.tensors or [])
    used.update(int(e.buffer) for e in m.metadata or [])
    if m.metadataBuffer is not None:
        used.update(int(i) for i in m.metadataBuffer)
    order = [i for i in range(len(m.buffers)) if i in used]
    if len(order) == len(m.buffers):
        return
    remap = {old: new for new, old in enumerate(order)}
    m.buffers = [m.buffers[i] for i in order]
    for sg in m.subgraphs or []:
        for t in sg.tensors or []:
            t.buffer = remap[int(t.buffer)]
    for e in m.metadata or []:
        e.buffer = remap[int(e.buffer)]
    if m.metadataBuffer is not None:
        m.metadataBuffer = [remap[int(i)] for i in m.metadataBuffer]


def pack_tflite(m, size_hint: int = 1 << 20) -> bytes:
    """Serialize a schema.ModelT, writing identical vectors and strings once.

    Hand-written around the generated object API because that packer writes every vector anew (113 kB
    of identical all-zero int64 zero-point vectors at alpha 0.35) and aligns Buffer.data to 1 byte
    although the schema asks for `force_align: 16`; flatbuffers' Python Builder only shares strings.
    """
    import flatbuffers

    schema = _schema()

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, n):
            super().__init__(n)
            self._vectors: dict = {}

        def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
            x = np.ascontiguousarray(x)
            key = (x.dtype.str, x.tobytes())
            off = self._vectors.get(key)
            if off is None:
                off = self._vectors[key] = super().CreateNumpyVector(x)
            return off

        def CreateString(self, s, encoding="utf-8", errors="strict"):  # noqa: N802
            return self.CreateSharedString(s, encoding, errors)

        def CreateSharedString(self, s, encoding="utf-8", errors="strict"):  # noqa: N802
            key = s.encode(encoding, errors) if isinstance(s, str) else bytes(s)
            off = self._vectors.get(("str", key))
            if off is None:
                off = self._vectors[("str", key)] = flatbuffers.Builder.CreateString(self, key)
            return off

        def AlignedBytes(self, data, alignment: int = 16):  # noqa: N802
            data = np.ascontiguousarray(data, dtype=np.uint8)
            key = ("buf", alignment, data.tobytes())
            off = self._vectors.get(key)
            if off is None:
                self.StartVector(1, len(data), alignment)
                self.head -= len(data)
                self.Bytes[self.head:self.head + len(data)] = key[2]
                off = self._vectors[key] = self.EndVector()
            return off

    class AlignedBuffer:
        """Stands in for a schema.BufferT inside ModelT.Pack: same fields, 16-byte aligned data."""

        def __init__(self, b):
            self.b = b

        def Pack(self, builder):  # noqa: N802
            data = builder.AlignedBytes(self.b.data) if self.b.data is not None and len(self.b.data) else None
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            if self.b.offset:
                schema.BufferAddOffset(builder, self.b.offset)
            if self.b.size:
                schema.BufferAddSize(builder, self.b.size)
            return schema.BufferEnd(builder)

    bufs = m.buffers
    m.buffers = [AlignedBuffer(b) for b in bufs] if bufs is not None else None
    try:
        b = SharingBuilder(size_hint)
        b.Finish(m.Pack(b), file_identifier=TFLITE_IDENT)
    finally:
        m.buffers = bufs
    return bytes(b.Output())


def compact_tflite(model: bytes) -> bytes:
    """A TFLite flatbuffer with the same graph and constants, in fewer bytes (see module docstring)."""
    schema = _schema()
    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    if any(b.offset or b.size for b in m.buffers or []):
        return model  # constants stored after the flatbuffer (>2 GB layout): repacking would move them
    compact_tflite_model(m)
    return pack_tflite(m, len(model) + 4096)


# ---------------------------------------------------------------------------------------------- ONNX
def compact_onnx(proto, derive_bias_scales: bool = True) -> None:
    """Drop all-zero DequantizeLinear zero points, derivable bias scales, unused initializers and node
    names (in place)."""
    from onnx import numpy_helper

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

    for n in g.node:
        if _is_dq(n) and len(n.input) == 3 and is_zero(n.input[2]):
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
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
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

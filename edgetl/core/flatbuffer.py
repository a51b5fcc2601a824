"""TFLite flatbuffers without TensorFlow: the schema bindings ai-edge-litert ships, and lossless size
reductions of a converter's output (same graph, same numbers, fewer bytes).

Applied by `edgetl export` to every TFLite file (fp32 too, so size ratios stay fair) before edgetl's
metadata is embedded; the exporter then checks that the compacted file gives bit-identical outputs.
At alpha 0.35, 224 px, an int8 file is 621 kB, of which 113 kB are int64 zero-point vectors (all zero
for the per-channel weights and biases) and 17 kB tensor names:
- internal tensor names become short ("t12"); subgraph inputs/outputs and tensors named by a
  SignatureDef keep theirs;
- every constant-free tensor points at the schema's empty sentinel buffer 0; buffers that nothing
  references any more are dropped (indices remapped);
- identical vectors (zero points, scales, shapes, operator index lists, strings) are written once and
  referenced by every table that holds them, which the FlatBuffers format allows (a table field is an
  offset to a vector; nothing says two fields may not hold the same offset);
- Buffer.data honours the schema's `force_align: 16` (the generated Python packer aligns it to 1).
"""

from __future__ import annotations

import numpy as np


TFLITE_IDENT = b"TFL3"
SENTINEL_BUFFER = 0


def schema():
    """ai_edge_litert's generated schema bindings (kept with the runtime: no hand-written parser)."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def is_tflite(buf: bytes) -> bool:
    return len(buf) >= 8 and buf[4:8] == TFLITE_IDENT


def load_model(buf: bytes):
    """A schema.ModelT (the object API) of a TFLite flatbuffer."""
    return schema().ModelT.InitFromPackedBuf(bytearray(buf), 0)


def op_names() -> dict:
    """Builtin operator code -> name ("CONV_2D", ...)."""
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


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

    sch = schema()

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
            sch.BufferStart(builder)
            if data is not None:
                sch.BufferAddData(builder, data)
            if self.b.offset:
                sch.BufferAddOffset(builder, self.b.offset)
            if self.b.size:
                sch.BufferAddSize(builder, self.b.size)
            return sch.BufferEnd(builder)

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
    m = load_model(model)
    if any(b.offset or b.size for b in m.buffers or []):
        return model  # constants stored after the flatbuffer (>2 GB layout): repacking would move them
    compact_tflite_model(m)
    return pack_tflite(m, len(model) + 4096)


def op_list(tfl: bytes) -> list[tuple[str, str]]:
    """(kind, name) of every op of subgraph 0, in order; an op's name is its first output tensor's."""
    m = load_model(tfl)
    names = op_names()
    sg = m.subgraphs[0]
    out = []
    for op in sg.operators or []:
        code = m.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        out.append((kind, sg.tensors[op.outputs[0]].name.decode()))
    return out


def short_name(name: str) -> str:
    """'edgetl_mobilenetv2/block_1_expand_relu/Relu6;...' -> 'block_1_expand_relu'."""
    first = name.split(";")[0].split("/")
    return first[1] if len(first) > 1 else first[0]

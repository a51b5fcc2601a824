"""Self-describing artifacts: edgetl's metadata (labels, input, preprocessing, quantization) inside the file.

TFLite: a named entry in the flatbuffer's `metadata` table (the schema's own extension point, which
TFLite Support uses too), read and written with the schema bindings that ship with ai-edge-litert.
ONNX: `metadata_props` of the ModelProto, read back through onnxruntime's model metadata.
No TensorFlow import here: this runs on a Pi with the light install.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import flatbuffer
from .errors import EdgetlError, first_line

META_KEY = "edgetl"


def embed_tflite(model: bytes, meta: dict) -> bytes:
    """Return the TFLite flatbuffer with `meta` stored as metadata entry "edgetl" (replacing any old one).
    Packed with edgetl's packer (identical vectors written once, Buffer.data 16-byte aligned); a
    replaced entry's old buffer is dropped rather than left orphaned."""
    import numpy as np

    sch = flatbuffer.schema()
    m = flatbuffer.load_model(model)
    m.metadata = [e for e in (m.metadata or []) if (e.name or b"") not in (META_KEY, META_KEY.encode())]
    buf = sch.BufferT()
    buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    m.buffers.append(buf)
    entry = sch.MetadataT()
    entry.name = META_KEY
    entry.buffer = len(m.buffers) - 1
    m.metadata.append(entry)
    flatbuffer.drop_unused_buffers(m)
    return flatbuffer.pack_tflite(m, len(model) + 4096)


def read_tflite_meta(buf: bytes) -> dict | None:
    model = flatbuffer.schema().Model.GetRootAs(buf, 0)
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        name = md.Name()
        if name in (META_KEY.encode(), META_KEY):
            data = model.Buffers(md.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return None


def embed_onnx(model_proto, meta: dict) -> None:
    """Store `meta` in an onnx ModelProto's metadata_props (in place), plus flat keys other tools read."""
    flat = {
        META_KEY: json.dumps(meta, sort_keys=True),
        "labels": json.dumps(meta.get("classes", [])),
        "preprocessing": json.dumps(meta.get("preprocessing", {}), sort_keys=True),
    }
    keep = [p for p in model_proto.metadata_props if p.key not in flat]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for k, v in flat.items():
        p = model_proto.metadata_props.add()
        p.key, p.value = k, v


def read_onnx_meta_from_session(session) -> dict | None:
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    return json.loads(raw) if raw else None


def sniff(path: str | Path) -> str:
    """'tflite' | 'onnx' from the file's bytes (not its name); clear error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise EdgetlError(f"{p}: no such model file")
    with open(p, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise EdgetlError(f"{p}: file is empty or truncated ({p.stat().st_size} bytes), not a TFLite or ONNX model")
    if flatbuffer.is_tflite(head):
        return "tflite"
    # ONNX is a protobuf ModelProto; field 1 (ir_version, varint) comes first -> tag byte 0x08
    if head[0] == 0x08:
        return "onnx"
    raise EdgetlError(f"{p}: neither a TFLite flatbuffer nor an ONNX model")


def read_meta(path: str | Path) -> dict:
    """edgetl metadata stored inside an artifact file (clear error when it is missing or the file is bad)."""
    p = Path(path)
    kind = sniff(p)
    if kind == "tflite":
        try:
            meta = read_tflite_meta(p.read_bytes())
        except Exception as e:  # flatbuffer parse errors are arbitrary exceptions
            raise EdgetlError(f"{p}: corrupt or truncated TFLite file ({type(e).__name__})") from None
    else:
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgetlError(f"{p}: corrupt or truncated ONNX file ({first_line(e, 120)})") from None
        meta = read_onnx_meta_from_session(sess)
    if not meta:
        raise EdgetlError(f"{p}: has no edgetl metadata (labels, preprocessing); export it with `edgetl export`")
    return meta

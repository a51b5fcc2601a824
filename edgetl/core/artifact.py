"""Self-describing artifacts: edgetl's metadata (labels, input, preprocessing, quantization) inside the file.

TFLite: a named entry in the flatbuffer's `metadata` table (the schema's own extension point, which
TFLite Support uses too), read and written with the schema bindings that ship with ai-edge-litert.
ONNX: `metadata_props` of the ModelProto, read back through onnxruntime's model metadata.
No TensorFlow import here: this runs on a Pi with the light install.

Integrity: the metadata carries the file's own sha256 (SEAL_KEY). Export embeds a 64-character
placeholder, hashes the finished file, and writes the digest over the placeholder (same length: the
flatbuffer or protobuf stays valid). `verify` blanks it again and re-hashes: no TFLite/ONNX parsing, the
same for both formats. A file beside a manifest.json that lists it is checked against the manifest instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import flatbuffer
from .errors import EdgetlError, first_line
from .rundir import MANIFEST_FILE, sha256_file

META_KEY = "edgetl"
SEAL_KEY = "content_sha256"
SEAL_PLACEHOLDER = "0" * 64
_SEAL_PREFIX = f'"{SEAL_KEY}": "'.encode()  # as json.dumps writes it inside the embedded metadata


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


# ---- integrity -------------------------------------------------------------------------------------------
def _seal_at(buf: bytes) -> int | None:
    """Offset of the 64 hex digits of the file's one embedded seal, or None when it has none."""
    i = buf.find(_SEAL_PREFIX)
    if i < 0 or buf.find(_SEAL_PREFIX, i + 1) >= 0:
        return None
    i += len(_SEAL_PREFIX)
    digest = buf[i:i + 64]
    if len(digest) != 64 or buf[i + 64:i + 65] != b'"' or digest.strip(b"0123456789abcdef"):
        return None
    return i


def _unsealed_sha256(buf: bytes, at: int) -> str:
    """sha256 of the file with its seal blanked back to the placeholder (no copy of the buffer)."""
    h = hashlib.sha256()
    view = memoryview(buf)
    h.update(view[:at])
    h.update(SEAL_PLACEHOLDER.encode())
    h.update(view[at + 64:])
    return h.hexdigest()


def sealed_intact(buf: bytes) -> bool:
    """The file carries one seal and its content still hashes to it."""
    at = _seal_at(buf)
    return at is not None and _unsealed_sha256(buf, at) == buf[at:at + 64].decode()


def embedded_field(buf: bytes, key: str) -> str | None:
    """A string value of the embedded metadata, found in the file's bytes as json.dumps writes it (no
    TFLite/ONNX parsing, like the seal); None when the key is absent or appears more than once."""
    import re

    found = re.findall(rb'"' + re.escape(key.encode()) + rb'": "([^"\\]{0,200})"', buf)
    return found[0].decode(errors="replace") if len(found) == 1 else None


def seal(buf: bytes) -> bytes:
    """Write the file's sha256 over the placeholder its metadata holds (SEAL_KEY: SEAL_PLACEHOLDER)."""
    at = _seal_at(buf)
    if at is None or buf[at:at + 64] != SEAL_PLACEHOLDER.encode():
        raise ValueError("no seal placeholder in the embedded metadata")
    return buf[:at] + _unsealed_sha256(buf, at).encode() + buf[at + 64:]


def verify(path: str | Path) -> str:
    """Check an artifact file before it is used: against manifest.json beside it when that lists the file
    (size and sha256), else against the sha256 sealed inside it at export. Returns how it was checked
    ("manifest", "embedded" or "unverified": no manifest entry and no seal); raises EdgetlError naming
    the file when it differs."""
    p = Path(path)
    name, entry = _manifest_entry(p)
    redo = "re-export it with `edgetl export`"
    if entry is not None:
        if p.stat().st_size != entry.get("bytes", p.stat().st_size) or sha256_file(p) != entry.get("sha256"):
            raise EdgetlError(f"{p}: differs from the sha256 in {p.parent / MANIFEST_FILE} (damaged or changed "
                              f"since export); re-export it with `edgetl export {p.parent} --format {name}` "
                              "(or pass --no-verify)")
        return "manifest"
    buf = p.read_bytes()
    at = _seal_at(buf)
    if at is None:
        return "unverified"
    if _unsealed_sha256(buf, at) != buf[at:at + 64].decode():
        raise EdgetlError(f"{p}: its content differs from the sha256 sealed in it at export (damaged or "
                          f"changed); {redo} (or pass --no-verify)")
    return "embedded"


def _manifest_entry(p: Path) -> tuple[str | None, dict | None]:
    """(format, ok entry) of manifest.json (beside the file) that names this file; (None, None) if none."""
    try:
        arts = json.loads((p.parent / MANIFEST_FILE).read_text())["artifacts"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    return next(((n, a) for n, a in arts if isinstance(a, dict) and a.get("file") == p.name
                 and a.get("status") == "ok"), (None, None))

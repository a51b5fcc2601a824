"""Artifacts are checked before use: against manifest.json beside them, else against the sha256 sealed in
their own metadata at export (the same bytes-level check for TFLite and ONNX). Real exported files:
tests/tf/test_reliability.py."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgetl.core import artifact
from edgetl.core.errors import EdgetlError


def sealed_file(path, body: bytes = b"weights " * 500) -> bytes:
    meta = json.dumps({"classes": ["a", "b"], artifact.SEAL_KEY: artifact.SEAL_PLACEHOLDER}, sort_keys=True)
    buf = artifact.seal(b"HEAD" + body + meta.encode() + b"TAIL")
    path.write_bytes(buf)
    return buf


def flip(path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x55
    path.write_bytes(bytes(b))


def test_the_seal_is_the_sha256_of_the_file_with_the_placeholder(tmp_path):
    p = tmp_path / "m.onnx"
    buf = sealed_file(p)
    at = buf.index(b'"content_sha256": "') + len(b'"content_sha256": "')
    unsealed = buf[:at] + artifact.SEAL_PLACEHOLDER.encode() + buf[at + 64:]
    assert buf[at:at + 64].decode() == hashlib.sha256(unsealed).hexdigest()
    assert len(buf) == len(unsealed)  # written in place: the container's offsets stay valid
    assert artifact.verify(p) == "embedded"


@pytest.mark.parametrize("where", ["body", "seal", "head"])
def test_any_changed_byte_is_refused(tmp_path, where):
    p = tmp_path / "m.tflite"
    buf = sealed_file(p)
    at = {"body": 100, "head": 0, "seal": buf.index(b'"content_sha256": "') + 30}[where]
    flip(p, at)
    with pytest.raises(EdgetlError) as e:
        artifact.verify(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: its content differs from the sha256 sealed in it at export")
    assert "re-export it" in msg and "--no-verify" in msg and "\n" not in msg


def test_files_without_a_seal_are_unverified_and_sealing_needs_the_placeholder(tmp_path):
    p = tmp_path / "other.onnx"
    p.write_bytes(b"a file some other tool wrote")
    assert artifact.verify(p) == "unverified"
    with pytest.raises(ValueError, match="no seal placeholder"):
        artifact.seal(p.read_bytes())


def test_a_manifest_beside_the_file_is_the_reference(tmp_path):
    p = tmp_path / "model-fp32.onnx"
    sealed_file(p)
    entry = {"file": p.name, "bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
             "status": "ok"}
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {"onnx-fp32": entry}}))
    assert artifact.verify(p) == "manifest"
    flip(p, 10)
    with pytest.raises(EdgetlError) as e:
        artifact.verify(p)
    assert str(e.value) == (f"{p}: differs from the sha256 in {tmp_path / 'manifest.json'} (damaged or changed since "
                            f"export); re-export it with `edgetl export {tmp_path} --format onnx-fp32` (or pass "
                            "--no-verify)")
    # an entry for another file, a failed entry or an unreadable manifest: the seal decides
    for doc in ({"artifacts": {"tflite-fp32": {**entry, "file": "model-fp32.tflite"}}},
                {"artifacts": {"onnx-fp32": {"file": p.name, "status": "failed"}}}, "{broken"):
        (tmp_path / "manifest.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
        with pytest.raises(EdgetlError, match="sealed in it at export"):
            artifact.verify(p)

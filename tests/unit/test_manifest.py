"""manifest.json is always true: every "ok" entry names a file that exists with the listed size and sha256,
after any kill (SIGINT, SIGTERM, SIGKILL) at any step of a write; concurrent exports never lose each
other's entries (one lock per run); the next export removes files no entry lists and names them."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time

import pytest

from edgetl.core.formats import FORMATS
from edgetl.core.rundir import MANIFEST_FILE, Run, sha256_file, umask
from edgetl.export import manifest
from factory import RUN_META, start_paused, wait_reached

WRITER = """
import sys
from edgetl.cli import sigterm_as_interrupt
from edgetl.core.rundir import Run
from edgetl.export import manifest
run = Run(sys.argv[1])
with sigterm_as_interrupt():
    for i in range(int(sys.argv[3])):
        for name in sys.argv[4:]:
            manifest.put_file(run, name, (sys.argv[2] + str(i)).encode() * 999, {"status": "ok", "parity": {}})
"""


@pytest.fixture
def run(tmp_path) -> Run:
    path = tmp_path / "run"
    path.mkdir()
    (path / "edgetl.json").write_text(json.dumps(RUN_META))
    (path / "model.keras").write_bytes(b"keras")
    return Run(path)


def on_disk(run: Run) -> dict:
    return json.loads((run.path / MANIFEST_FILE).read_text())["artifacts"]


def assert_manifest_true(run: Run) -> None:
    """Every ok entry: its file, with its size and sha256."""
    for name, a in on_disk(run).items():
        if a["status"] == "ok":
            p = run.path / a["file"]
            assert p.is_file() and p.stat().st_size == a["bytes"] and sha256_file(p) == a["sha256"], name


def artifact_files(run: Run) -> set[str]:
    return {p.name for p in run.path.iterdir() if p.suffix in (".tflite", ".onnx")}


def writer(run: Run, tag: str, names: list[str], times: int = 1) -> list[str]:
    return [sys.executable, "-c", WRITER, str(run.path), tag, str(times), *names]


def test_put_file_and_put_failure_keep_the_record_in_registry_order(run):
    manifest.begin(run)
    e = manifest.put_file(run, "onnx-fp32", b"onnx", {"status": "ok"})
    manifest.put_file(run, "tflite-fp32", b"tflite", {"status": "ok"})
    assert e == {"file": "model-fp32.onnx", "bytes": 4, "sha256": sha256_file(run.path / "model-fp32.onnx"),
                 "status": "ok"}
    assert list(on_disk(run)) == [n for n in FORMATS if n in ("onnx-fp32", "tflite-fp32")]
    manifest.put_failure(run, "onnx-fp32", "onnx-fp32: differs")  # the file that passed earlier stays
    assert on_disk(run)["onnx-fp32"]["status"] == "ok" and artifact_files(run) == {"model-fp32.tflite", "model-fp32.onnx"}
    assert on_disk(run)["onnx-fp32"]["last_failure"]["reason"] == "onnx-fp32: differs"
    (run.path / "model-fp32.onnx").write_bytes(b"changed")  # no longer the file that passed: it goes
    manifest.put_failure(run, "onnx-fp32", "onnx-fp32: differs")
    assert on_disk(run)["onnx-fp32"] == {"file": "model-fp32.onnx", "status": "failed", "reason": "onnx-fp32: differs"}
    assert artifact_files(run) == {"model-fp32.tflite"}
    m = manifest.finish(run, seconds=1.0)
    assert m["seconds"] == 1.0 and m["model_sha256"] == sha256_file(run.model_path)
    assert stat.S_IMODE((run.path / MANIFEST_FILE).stat().st_mode) == 0o666 & ~umask()
    assert_manifest_true(run)


def test_begin_makes_disk_and_manifest_agree(run):
    manifest.begin(run)
    for name in ("tflite-fp32", "tflite-fp16", "onnx-fp32"):
        manifest.put_file(run, name, name.encode(), {"status": "ok"})
    with open(run.path / "model-fp16.tflite", "ab") as f:  # changed since its export
        f.write(b"!")
    (run.path / "model-fp32.onnx").unlink()  # gone
    (run.path / "model-int8.onnx").write_bytes(b"left by a killed export")
    (run.path / ".model-int8.tflite.abc123.tmp").write_bytes(b"half")
    (run.path / f".{MANIFEST_FILE}.xyz.tmp").write_text("{")
    notes = manifest.begin(run)
    assert list(on_disk(run)) == ["tflite-fp32"]
    assert artifact_files(run) == {"model-fp32.tflite"} and not list(run.path.glob(".*.tmp"))
    assert sorted(n.split(":")[0] for n in notes) == ["removed model-fp16.tflite", "removed model-int8.onnx"]
    assert all("re-export it with --format" in n and "\n" not in n for n in notes)


def test_a_corrupt_manifest_vouches_for_nothing(run):
    (run.path / "model-fp32.tflite").write_bytes(b"x")
    (run.path / MANIFEST_FILE).write_text("{truncated")
    assert manifest.read(run) == {"artifacts": {}}
    manifest.begin(run)
    assert on_disk(run) == {} and artifact_files(run) == set()


@pytest.mark.parametrize("point", ["manifest-entry-removed", "manifest-file-written"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_kill_at_any_step_leaves_a_true_manifest(run, tmp_path, point, sig):
    """A re-export of a listed file is killed between its steps: the manifest never lists a file that is
    not there as listed; the next export removes what no entry lists."""
    manifest.begin(run)
    manifest.put_file(run, "tflite-fp32", b"old", {"status": "ok"})
    manifest.put_file(run, "onnx-fp32", b"other", {"status": "ok"})
    proc = start_paused(writer(run, "new", ["tflite-fp32"]), point, tmp_path / "pause")
    wait_reached(proc, point, tmp_path / "pause")
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert_manifest_true(run)
    assert "tflite-fp32" not in on_disk(run) and on_disk(run)["onnx-fp32"]["bytes"] == 5
    assert (run.path / "model-fp32.tflite").read_bytes() == (b"old" if point == "manifest-entry-removed" else
                                                             b"new0" * 999)
    notes = manifest.begin(run)
    assert [n.split(":")[0] for n in notes] == ["removed model-fp32.tflite"]
    assert artifact_files(run) == {"model-fp32.onnx"} and not list(run.path.glob(".*.tmp"))
    assert_manifest_true(run)


def test_a_second_export_waits_for_the_first(run, tmp_path):
    """B's write blocks while A holds the run's lock (paused mid-write); both entries survive."""
    manifest.begin(run)
    a = start_paused(writer(run, "a", ["tflite-fp32"]), "manifest-file-written", tmp_path / "pause")
    wait_reached(a, "manifest-file-written", tmp_path / "pause")
    b = subprocess.Popen(writer(run, "b", ["onnx-fp32"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    time.sleep(1.0)
    assert b.poll() is None and not (run.path / "model-fp32.onnx").exists()  # waiting for the lock
    (tmp_path / "pause" / "manifest-file-written.go").touch()
    assert a.wait(60) == 0 and b.wait(60) == 0, b.communicate()
    assert sorted(on_disk(run)) == ["onnx-fp32", "tflite-fp32"]
    assert_manifest_true(run)


def test_concurrent_writers_lose_no_entry(run):
    manifest.begin(run)
    procs = [subprocess.Popen(writer(run, tag, names, times=15), stderr=subprocess.PIPE, text=True)
             for tag, names in (("a", ["tflite-fp32", "tflite-fp16"]), ("b", ["onnx-fp32", "onnx-int8"]))]
    for p in procs:
        assert p.wait(120) == 0, p.communicate()
    assert sorted(on_disk(run)) == sorted(["tflite-fp32", "tflite-fp16", "onnx-fp32", "onnx-int8"])
    assert_manifest_true(run)


# ---- repair, not destruction; one run, one model ------------------------------------------------------------
def sealed(fmt: str, model_sha: str, body: bytes = b"weights" * 50) -> bytes:
    """Bytes shaped like an exported file: edgetl metadata with a seal, the format and the model it came from."""
    from edgetl.core import artifact

    meta = json.dumps({"content_sha256": artifact.SEAL_PLACEHOLDER, "format": fmt, "classes": RUN_META["classes"],
                       "source": {"model_sha256": model_sha}}, sort_keys=True).encode()
    return artifact.seal(body + meta + body)


@pytest.mark.parametrize("damage", ["invalid json", "wrong sha256", "entry is a number", "no manifest"])
def test_a_bad_manifest_is_rebuilt_from_the_files_seals(run, damage):
    model = sha256_file(run.model_path)
    manifest.begin(run)
    for name in ("tflite-fp32", "onnx-fp32"):
        manifest.put_file(run, name, sealed(name, model), {"status": "ok", "parity": {}})
    doc = json.loads((run.path / MANIFEST_FILE).read_text())
    if damage == "invalid json":
        (run.path / MANIFEST_FILE).write_text("{truncated")
    elif damage == "no manifest":
        (run.path / MANIFEST_FILE).unlink()
    else:
        doc["artifacts"]["tflite-fp32"] = 5 if damage == "entry is a number" else {**doc["artifacts"]["tflite-fp32"],
                                                                                  "sha256": "0" * 64}
        (run.path / MANIFEST_FILE).write_text(json.dumps(doc))
        assert "tflite-fp32" not in Run(run.path).manifest["artifacts"] or damage == "wrong sha256"
    notes = manifest.begin(run)
    assert artifact_files(run) == {"model-fp32.tflite", "model-fp32.onnx"}  # nothing good deleted
    assert sorted(on_disk(run)) == ["onnx-fp32", "tflite-fp32"] and all(a["status"] == "ok" for a in on_disk(run).values())
    assert any(n.startswith("kept model-fp32.tflite: its sealed sha256 verifies") for n in notes), notes
    assert_manifest_true(run)


def test_files_of_another_model_are_dropped_and_named(run):
    old = sha256_file(run.model_path)
    manifest.begin(run)
    for name in ("tflite-fp32", "tflite-int8"):
        manifest.put_file(run, name, sealed(name, old), {"status": "ok"})
    (run.path / "model.keras").write_bytes(b"a retrained model")  # model.keras replaced by hand
    (run.path / "model-fp32.onnx").write_bytes(sealed("onnx-fp32", "1" * 64))  # dropped in from another run
    notes = manifest.begin(run)
    assert on_disk(run) == {} and artifact_files(run) == set()
    assert sorted(n.split(":")[0] for n in notes) == ["removed model-fp32.onnx", "removed model-fp32.tflite",
                                                      "removed model-int8.tflite"]
    assert all("made from another model.keras" in n for n in notes), notes
    m = json.loads((run.path / MANIFEST_FILE).read_text())
    assert m["model_sha256"] == sha256_file(run.model_path) and m["classes"] == RUN_META["classes"]
    with pytest.raises(manifest.EdgetlError, match="model.keras changed while this export ran"):
        manifest.put_file(run, "tflite-fp32", sealed("tflite-fp32", old), {"status": "ok"})
    assert artifact_files(run) == set()


def test_a_failed_check_keeps_the_file_that_passed_before(run):
    model = sha256_file(run.model_path)
    manifest.begin(run)
    manifest.put_file(run, "tflite-int8", sealed("tflite-int8", model), {"status": "ok"})
    manifest.put_failure(run, "tflite-int8", "tflite-int8: accuracy dropped by 12 points")
    assert artifact_files(run) == {"model-int8.tflite"} and on_disk(run)["tflite-int8"]["status"] == "ok"
    assert_manifest_true(run)


def test_an_export_never_writes_into_a_run_swapped_in_meanwhile(run, tmp_path):
    import shutil

    from edgetl.core import outdir

    manifest.begin(run)
    with outdir.atomic_dir(run.path, overwrite=True) as tmp:  # train --overwrite of the same run
        shutil.copy(run.path / "edgetl.json", tmp / "edgetl.json")
        (tmp / "model.keras").write_bytes(b"new model")
    with pytest.raises(manifest.EdgetlError, match=r"was replaced \(edgetl train --overwrite\?\) while this export"):
        manifest.put_file(run, "tflite-fp32", b"old model's file", {"status": "ok"})
    assert artifact_files(run) == set() and not (run.path / MANIFEST_FILE).exists()


def test_an_unreadable_manifest_is_one_line(run, monkeypatch):
    from pathlib import Path

    real = Path.read_text

    def read_text(self, *a, **k):
        if self.name == MANIFEST_FILE:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    (run.path / MANIFEST_FILE).write_text("{}")
    monkeypatch.setattr(Path, "read_text", read_text)
    for read in (lambda: manifest.read(run), lambda: Run(run.path).manifest):
        with pytest.raises(manifest.EdgetlError, match=r"cannot read manifest.json \(Permission denied\)"):
            read()


def test_files_with_other_labels_are_not_rebuilt(run):
    model = sha256_file(run.model_path)
    manifest.begin(run)
    manifest.put_file(run, "tflite-fp32", sealed("tflite-fp32", model), {"status": "ok"})
    meta = json.loads((run.path / "edgetl.json").read_text())
    (run.path / "edgetl.json").write_text(json.dumps({**meta, "classes": ["b", "a"]}))  # names changed since
    notes = manifest.begin(Run(run.path))
    assert notes == ["removed model-fp32.tflite: its labels differ from the run's; re-export it with --format "
                     "tflite-fp32"] and artifact_files(run) == set()

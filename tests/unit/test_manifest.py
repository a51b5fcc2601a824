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

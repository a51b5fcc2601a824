"""`edgetl bench --remote` against a real OpenSSH server on 127.0.0.1 (tests/sshd.py): the remote's rows
match a local bench of the same files, its identity is recorded, a second bench copies nothing, and every
failure (unreachable, refused key, unknown host key, no answer, no python or an old one, a full disk, no
package index, a row that fails there) is one line, a non-zero exit and no half-written file on either
side. The remote runs the light python (no TensorFlow) via --remote-python, except where the venv is
the point."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sshd
from conftest import in_ci
from edgetl.bench.devices import host_info, host_slug
from edgetl.cli import app
from edgetl.core import measurements

runner = CliRunner()
FAST = ["--min-time", "0.05", "--min-runs", "5"]
LIGHT = os.environ.get("EDGETL_LIGHT_PYTHON") or sys.executable
FORMATS = "tflite-fp32,tflite-int8,onnx-fp32"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        s = sshd.Sshd(tmp_path_factory.mktemp("sshd")).start()
    except Exception as e:  # no sshd and no Debian mirror: only CI must have one
        if in_ci():
            raise
        pytest.skip(f"no OpenSSH server for the remote tests: {e}")
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def records(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGETL_MEASUREMENTS_DIR", str(tmp_path / "records"))
    return tmp_path / "records"


def remote_args(server, cache: Path, *extra, env=None, python=LIGHT, address=None) -> list[str]:
    args = ["--remote", address or server.address, *extra]
    if python:
        args += ["--remote-python", python]
    for o in server.options(cache, env):
        args += ["--ssh-option", o]
    return args


def one_error_line(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


def no_partial_files(cache: Path) -> None:
    """Nothing half-written on the remote side: no `.tmp-*` entry anywhere in its cache."""
    if cache.exists():
        assert not [p for p in cache.rglob(".tmp-*")], list(cache.rglob(".tmp-*"))


@pytest.fixture
def run(tiny_exported, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_exported, out)
    return out


def test_remote_rows_match_a_local_bench_and_nothing_is_copied_twice(server, run, tmp_path, records):
    local = runner.invoke(app, ["bench", str(run), *FAST, "--threads", "1", "--format", FORMATS,
                                "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    here = json.loads((tmp_path / "local" / "bench.json").read_text())
    cache = tmp_path / "remote-cache"
    r = runner.invoke(app, ["bench", str(run), *FAST, "--threads", "1", "--format", FORMATS,
                            *remote_args(server, cache)])
    assert r.exit_code == 0, r.output
    files = sorted((run / "bench").glob("*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    # named after the machine that measured, which says who it is
    assert files[0].name.startswith(res["device"] + "-20") and res["device"] == host_slug(res["host"])
    assert res["remote"]["address"] == f"{server.user}@127.0.0.1:{server.port}"
    assert res["host"]["cpu"] == host_info()["cpu"] and res["host"]["cpu_features"]
    assert res["remote"]["python"] and res["remote"]["versions"]["onnxruntime"]
    assert res["measured_on"]["place"] == "remote" and res["remote"]["copied"]["files"] >= 5
    assert {p.suffix for p in files[0].parent.iterdir()} >= {".json", ".csv", ".png"}
    # the same table: same rows, equal accuracy, latency of the same order (same CPU, other process)
    assert [(x["name"], x["threads"]) for x in res["rows"]] == [(x["name"], x["threads"]) for x in here["rows"]]
    for mine, theirs in zip(here["rows"], res["rows"]):
        assert theirs["status"] == "ok" and theirs["measured_on"] == "remote", theirs
        assert theirs["accuracy"] == mine["accuracy"] and theirs["eval_images"] == mine["eval_images"]
        assert 0.2 < theirs["latency_ms"]["p50"] / mine["latency_ms"]["p50"] < 5
    # the p50s are recorded for this device
    rec = measurements.measured_latency(res["device"], "tflite-int8", res["rows"][0]["alpha"],
                                        res["rows"][0]["image_size"], 1)
    assert rec and rec["p50_ms"] == next(x for x in res["rows"] if x["format"] == "tflite-int8")["latency_ms"]["p50"]
    assert rec["where"] == res["remote"]["address"]
    # a second bench copies nothing
    r2 = runner.invoke(app, ["bench", str(run), *FAST, "--threads", "1", "--format", FORMATS,
                             "--out", str(tmp_path / "again"), *remote_args(server, cache)])
    assert r2.exit_code == 0, r2.output
    again = json.loads((tmp_path / "again" / "bench.json").read_text())
    assert again["remote"]["copied"] == {"files": 0, "bytes": 0, "already_there": res["remote"]["copied"]["files"]}
    assert "nothing copied" in r2.output
    no_partial_files(cache)


def silent_server():
    """A TCP port on 127.0.0.1 that accepts and never says a word (an ssh that hangs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held = []

    def hold():
        while True:
            try:
                held.append(sock.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    return sock


def fake_python(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


FAILURES = ["refused", "auth", "host-key", "no-answer", "no-python", "old-python", "disk-full", "no-index"]


@pytest.mark.parametrize("case", FAILURES)
def test_remote_failure_is_one_line_and_leaves_nothing(server, run, tmp_path, case):
    cache, out = tmp_path / "remote-cache", tmp_path / "out"
    kw: dict = {}
    extra: list[str] = []
    listener = None
    if case == "refused":
        kw["address"] = f"ssh://{server.user}@127.0.0.1:{sshd.free_port()}"
        expect = ["connection refused", "sshd running"]
    elif case == "auth":
        other = tmp_path / "other-key"
        os.system(f"{server.client_bin}/ssh-keygen -q -t ed25519 -N '' -f {other}")
        args = remote_args(server, cache)
        args[args.index(f"IdentityFile={server.dir / 'client'}")] = f"IdentityFile={other}"
        r = runner.invoke(app, ["bench", str(run), *FAST, "--format", "tflite-int8", "--out", str(out), *args])
        line = one_error_line(r)
        assert "authentication refused" in line and "ssh-copy-id -p" in line and "IdentityFile" in line, line
        assert not out.exists()
        return
    elif case == "host-key":
        args = remote_args(server, cache)
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        args[args.index(f"UserKnownHostsFile={server.dir / 'known_hosts'}")] = f"UserKnownHostsFile={empty}"
        r = runner.invoke(app, ["bench", str(run), *FAST, "--format", "tflite-int8", "--out", str(out), *args])
        line = one_error_line(r)
        assert "host key is unknown or changed" in line and f"ssh -p {server.port}" in line, line
        assert not out.exists()
        return
    elif case == "no-answer":
        listener = silent_server()
        kw["address"] = f"ssh://{server.user}@127.0.0.1:{listener.getsockname()[1]}"
        extra = ["--remote-timeout", "2"]
        expect = ["no answer within 2 s", "--remote-timeout"]
    elif case == "no-python":
        kw["python"] = "/nonexistent/python3"
        expect = ["no /nonexistent/python3 there", "--remote-python"]
    elif case == "old-python":
        kw["python"] = fake_python(tmp_path / "python3.8", "echo 'EDGETL_REMOTE_RESULT {\"python\": \"3.8.10\"}'")
        expect = ["Python 3.8.10", ">= 3.9"]
    elif case == "disk-full":
        if server.small_disk is None:
            pytest.skip("a small file system for the server needs root (its own mount namespace)")
        cache = server.small_disk
        expect = ["disk is full", "MB free", "free space"]
    else:  # no package index reachable from the remote, and no --wheelhouse: the light venv cannot be made
        kw["python"] = None
        kw["env"] = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
                     "PIP_NO_CACHE_DIR": "1"}
        expect = ["cannot install", "--wheelhouse DIR", "python -m edgetl.bench.remote wheelhouse"]
    try:
        r = runner.invoke(app, ["bench", str(run), *FAST, "--format", "tflite-int8", "--out", str(out), *extra,
                                *remote_args(server, cache, **kw)])
    finally:
        if listener is not None:
            listener.close()
    line = one_error_line(r)
    if case == "no-index" and "cannot make a venv there" in line:
        pytest.skip(f"the python3 that ssh finds on this machine makes no venvs: {line}")
    assert all(e in line for e in expect), line
    assert not out.exists() and not (run / "bench").exists()  # nothing written here
    no_partial_files(cache)
    if case == "disk-full":
        assert not list((cache / "edgetl" / "remote" / "blobs").glob("*")) if (cache / "edgetl").exists() else True


def test_row_failing_remotely_is_named_and_the_others_kept(server, run, tmp_path):
    """A worker that dies there fails its row (exit 3 after the table and files); a row that runs over
    --remote-timeout is killed there and says so."""
    py = fake_python(tmp_path / "python3", 'case "$*" in *edgetl.bench.worker*) '
                     'echo "runtime crashed: illegal instruction" >&2; exit 132;; esac\n'
                     f'exec {LIGHT} "$@"')
    cache = tmp_path / "remote-cache"
    r = runner.invoke(app, ["bench", str(run), *FAST, "--format", "tflite-int8", "--out", str(tmp_path / "o"),
                            *remote_args(server, cache, python=py)])
    assert r.exit_code == 2, r.output  # every row failed: nothing measured
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert res["rows"][0]["status"] == "error: remote worker failed: runtime crashed: illegal instruction"
    r = runner.invoke(app, ["bench", str(run), "--min-time", "60", "--min-runs", "5", "--format", "tflite-int8",
                            "--out", str(tmp_path / "t"), "--remote-timeout", "8", *remote_args(server, cache)])
    res = json.loads((tmp_path / "t" / "bench.json").read_text())
    assert res["rows"][0]["status"] == "error: timed out after 8 s on the remote (--remote-timeout)", res["rows"]
    assert r.exit_code == 2 and "no artifact could be measured" in r.stderr
    no_partial_files(cache)


def test_device_profile_comes_from_the_remote_cpuinfo(run, tmp_path):
    """A remote whose /proc/cpuinfo shows a Cortex-A72 is benched with the rpi4 profile (its formats; its
    thread counts up to the remote's cores), and its board is recorded. The fake cpuinfo needs the
    server's own mount namespace, so root."""
    if os.geteuid() != 0:
        pytest.skip("a fake /proc/cpuinfo for the server needs root (its own mount namespace)")
    from edgetl.bench import armenv, devices

    pi = armenv.cpuinfo_text("cortex-a72") + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    try:
        server = sshd.Sshd(tmp_path / "pi-sshd", cpuinfo=pi).start()
    except Exception as e:
        if in_ci():
            raise
        pytest.skip(f"no OpenSSH server: {e}")
    try:
        r = runner.invoke(app, ["bench", str(run), *FAST, "--out", str(tmp_path / "o"),
                                *remote_args(server, tmp_path / "remote-cache")])
    finally:
        server.stop()
    assert r.exit_code == 0, r.output
    assert "its /proc/cpuinfo says --device rpi4" in r.output
    res = json.loads((tmp_path / "o" / "bench.json").read_text())
    profile = devices.load_device("rpi4")
    assert res["profile"]["name"] == "rpi4" and res["remote"]["board"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert sorted({x["format"] for x in res["rows"]}) == sorted(profile["formats"])
    cores = res["host"]["cores"]
    assert sorted({x["threads"] for x in res["rows"]}) == [n for n in profile["threads"] if n <= cores]
    # an x86 machine that only claims to be a Pi: its files are named after its CPU, not after the Pi
    assert res["device"] == host_slug(res["host"]) and res["host"]["arch"] != "aarch64"


def _processes_with(text: str) -> list[int]:
    """Pids whose environment mentions `text` (here: a test's own remote cache folder)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def test_interrupted_remote_bench_stops_the_remote_worker(server, run, tmp_path):
    """SIGTERM here while the worker runs there: 'terminated', nothing written here, and the worker there is
    gone within seconds (the agent there kills it when its stdin, held open by the bench, ends), no `.tmp-*`
    left there."""
    import signal
    import subprocess
    import time

    cache = tmp_path / "remote-cache"
    argv = [sys.executable, "-m", "edgetl", "bench", str(run), "--min-time", "120", "--format", "tflite-int8",
            "--out", str(tmp_path / "o"), *remote_args(server, cache)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    src = str(cache / "edgetl" / "remote" / "src")
    deadline = time.monotonic() + 120
    def workers():
        return [p for p in _processes_with(src) if b"edgetl.bench.worker" in _cmdline(p)]

    while not workers() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert workers(), "the remote worker never started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated" in err, (out, err)
    deadline = time.monotonic() + 15
    while _processes_with(src) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(src), "a remote worker outlived the bench"
    assert not (tmp_path / "o").exists()
    no_partial_files(cache)

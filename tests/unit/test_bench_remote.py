"""`edgetl bench --remote` without a server: its options (one line before any work), the one-line
explanation of each ssh failure, the device detected from /proc/cpuinfo, edgetl's own wheel, the remote
agent's file protocol, and the record of device measurements. (tests/tf/test_bench_remote.py runs the
real thing against sshd on 127.0.0.1.)"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetl.bench import agent, armenv, remote, ssh
from edgetl.cli import app
from edgetl.core import measurements
from edgetl.core.errors import EdgetlError

runner = CliRunner()

BAD = {"spec": (["--remote", "pi@@host"], "--remote 'pi@@host'"),
       "port": (["--remote", "pi@host:70000"], "between 1 and 65535"),
       "ssh-option": (["--remote", "pi@host", "--ssh-option", "IdentityFile"], "--ssh-option 'IdentityFile'"),
       "option-alone": (["--ssh-option", "Port=22"], "--ssh-option needs --remote"),
       "python-alone": (["--remote-python", "/usr/bin/python3"], "--remote-python needs --remote"),
       "wheelhouse": (["--remote", "pi@host", "--wheelhouse", "nowhere"], "--wheelhouse nowhere"),
       "timeout": (["--remote", "pi@host", "--remote-timeout", "0"], "--remote-timeout"),
       "emulate": (["--remote", "pi@host", "--emulate", "--device", "rpi4"], "use one of them")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_remote_option_is_one_line_before_any_work(tmp_path, case, monkeypatch):
    monkeypatch.setenv("EDGETL_ARM_ENV", str(tmp_path / "no-arm-env"))
    (tmp_path / "run").mkdir()
    args, expect = BAD[case]
    r = runner.invoke(app, ["bench", str(tmp_path / "run"), *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], r.output


def test_remote_address_forms():
    assert ssh.parse_target("pi@raspberrypi.local") == ssh.Target("pi", "raspberrypi.local", None)
    assert ssh.parse_target("ssh://pi@192.168.1.20:2222") == ssh.Target("pi", "192.168.1.20", 2222)
    assert ssh.parse_target("devbox") == ssh.Target(None, "devbox", None)
    t = ssh.parse_target("ssh://me@[::1]:22")
    assert t == ssh.Target("me", "::1", 22) and str(t) == "me@[::1]:22"
    assert ssh.parse_options(["IdentityFile=~/.ssh/pi", "ProxyJump = gate"]) == \
        ["-o", "IdentityFile=~/.ssh/pi", "-o", "ProxyJump=gate"]


def test_ssh_failures_name_cause_and_fix():
    t = ssh.Target("pi", "pi.local", 2222)
    cases = {"ssh: Could not resolve hostname pi.local: Name or service not known": "cannot resolve host",
             "ssh: connect to host pi.local port 2222: Connection refused": "is sshd running",
             "ssh: connect to host pi.local port 2222: Connection timed out": "host unreachable",
             "ssh: connect to host pi.local port 2222: No route to host": "host unreachable",
             "Host key verification failed.": "ssh -p 2222 pi@pi.local",
             "pi@pi.local: Permission denied (publickey).": "ssh-copy-id -p 2222 pi@pi.local",
             "kex_exchange_identification: read: Connection reset by peer": "ssh failed: kex_exchange"}
    for stderr, expect in cases.items():
        line = ssh.explain(t, "Warning: Permanently added 'x' to the list of known hosts.\n" + stderr)
        assert expect in line and line.startswith("--remote pi@pi.local:2222: ") and "\n" not in line, line


def test_device_profile_from_the_remote_cpuinfo():
    assert remote.detect_profile(armenv.cpuinfo_text("cortex-a72")) == "rpi4"
    assert remote.detect_profile(armenv.cpuinfo_text("cortex-a76")) == "rpi5"
    assert remote.detect_profile(armenv.cpuinfo_text("cortex-a53")) is None  # no profile for a Pi 3
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n\n"
    assert remote.detect_profile(x86) is None
    assert remote.board(armenv.cpuinfo_text("cortex-a72") + "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n") == \
        "Raspberry Pi 4 Model B Rev 1.4"


def test_own_wheel_is_reproducible_and_importable(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    w1, w2 = remote.build_wheel(tmp_path / "a"), remote.build_wheel(tmp_path / "b")
    assert w1.read_bytes() == w2.read_bytes() and w1.name.endswith("-py3-none-any.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(w1) as z:
        names = z.namelist()
        z.extractall(site)
    assert "edgetl/bench/worker.py" in names and "edgetl/devices/rpi4.toml" in names
    assert not [n for n in names if "__pycache__" in n or "/tests/" in n]
    code = ("import edgetl.bench.worker, edgetl.bench.devices as d, pathlib; "
            "print(pathlib.Path(edgetl.bench.worker.__file__).parent.parent.parent, d.load_device('rpi4')['name'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    root, name = out.stdout.split()
    assert Path(root) == site and name == "rpi4"


def _agent(command: str, args: dict, cache: Path, stdin: bytes = b"") -> dict:
    r = subprocess.run([sys.executable, "-c", remote.agent_source(), command, json.dumps(args)], input=stdin,
                       capture_output=True, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    line = [ln for ln in r.stdout.decode().splitlines() if ln.startswith(agent.RESULT_TAG)][-1]
    return json.loads(line[len(agent.RESULT_TAG):])


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_agent_keeps_only_whole_checked_files(tmp_path):
    data = b"weights" * 1000
    name = hashlib.sha256(data).hexdigest() + ".tflite"
    assert _agent("probe", {"blobs": [name]}, tmp_path)["have"] == []
    assert _agent("receive", {}, tmp_path, _tar({name: data})) == {"received": 1, "bytes": len(data)}
    probe = _agent("probe", {"blobs": [name]}, tmp_path)
    assert probe["have"] == [name] and probe["python"] == ".".join(map(str, sys.version_info[:3]))
    blobs = tmp_path / "edgetl" / "remote" / "blobs"
    assert (blobs / name).read_bytes() == data
    # a file whose bytes do not match its name, and a stream cut short: refused, nothing left behind
    bad = _agent("receive", {}, tmp_path, _tar({"0" * 64 + ".onnx": b"other"}))
    assert bad["error"] == "protocol" and "damaged" in bad["detail"]
    cut = _agent("receive", {}, tmp_path, _tar({"1" * 64 + ".onnx": b"x" * 5000})[:1500])
    assert cut["error"] == "io"
    assert sorted(p.name for p in blobs.iterdir()) == [name]


def test_measurement_record_add_and_look_up(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_MEASUREMENTS_DIR", str(tmp_path / "rec"))
    row = {"name": "tflite-int8", "format": "tflite-int8", "threads": 4, "status": "ok", "alpha": 0.35,
           "image_size": 160, "macs": 30e6, "latency_ms": {"p50": 7.5, "p90": 8.0, "runs": 50}, "measured_on": "remote"}
    result = {"device": "rpi4", "created": "2026-01-01T00:00:00+00:00", "host": {"cpu": "Cortex-A72"},
              "remote": {"address": "pi@pi.local"},
              "rows": [row, {**row, "format": "keras", "name": "keras"}, {**row, "status": "error: x"},
                       {**row, "measured_on": "emulated", "threads": 1}]}
    path = measurements.add_measurements(result)
    assert path == tmp_path / "rec" / "rpi4.json"
    assert len(measurements.load_measurements("rpi4")) == 1  # keras, failed and emulated rows are not kept
    e = measurements.measured_latency("rpi4", "tflite-int8", 0.35, 160, threads=4)
    assert e["p50_ms"] == 7.5 and e["where"] == "pi@pi.local" and e["cpu"] == "Cortex-A72"
    assert measurements.measured_latency("rpi4", "tflite-int8", 0.5, 160, threads=4) is None
    assert measurements.measured_latency("rpi5", "tflite-int8", 0.35, 160, threads=4) is None
    # a newer bench replaces the entry
    measurements.add_measurements({**result, "created": "2026-02-01", "rows": [{**row, "latency_ms": {"p50": 6.0}}]})
    assert [e["p50_ms"] for e in measurements.load_measurements("rpi4")] == [6.0]
    assert measurements.add_measurements({**result, "rows": []}) is None


def test_remote_python_must_be_given_as_a_path():
    with pytest.raises(EdgetlError, match="--remote-python"):
        remote.check_options("pi@host", [], " ", None, 10)

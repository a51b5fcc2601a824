"""`edgetl bench --remote` on a device without a package index: the light venv made there from
`--wheelhouse DIR`, filled here by `python -m edgetl.bench.remote wheelhouse DIR` for the remote's
platform (this machine's, the remote being sshd on 127.0.0.1). The wheelhouse is kept in
~/.cache/edgetl/test-wheelhouse/<arch> between sessions (pip download, ~70 MB once)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sshd
from conftest import in_ci
from edgetl.bench import remote
from edgetl.cli import app

runner = CliRunner()


def test_light_venv_from_a_wheelhouse(tiny_exported, tmp_path, monkeypatch):
    if platform.machine() not in remote.PLATFORMS:
        pytest.skip(f"no wheel platform for {platform.machine()}")
    monkeypatch.setenv("EDGETL_MEASUREMENTS_DIR", str(tmp_path / "records"))
    wheelhouse = sshd.cache_dir().parent / "test-wheelhouse" / platform.machine()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert remote.main(["wheelhouse", str(wheelhouse), "--arch", platform.machine(), "--python", py]) == 0
    try:
        server = sshd.Sshd(tmp_path / "sshd").start()
    except Exception as e:
        if in_ci():
            raise
        pytest.skip(f"no OpenSSH server: {e}")
    run = tmp_path / "run"
    shutil.copytree(tiny_exported, run)
    # the remote's pip can reach no index: everything must come from the wheelhouse
    env = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_NO_CACHE_DIR": "1"}
    args = ["bench", str(run), "--min-time", "0.05", "--min-runs", "5", "--format", "tflite-int8,onnx-int8",
            "--out", str(tmp_path / "out"), "--remote", server.address, "--wheelhouse", str(wheelhouse)]
    for o in server.options(tmp_path / "remote-cache", env):
        args += ["--ssh-option", o]
    try:
        r = runner.invoke(app, args)
    finally:
        server.stop()
    assert r.exit_code == 0, r.output
    assert "pip: Successfully installed" in r.output
    res = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [x["status"] for x in res["rows"]] == ["ok", "ok"]
    venv = Path(res["remote"]["python_executable"])
    assert venv.parent.parent.name.startswith(f"venv-py{py}-{platform.machine()}-")
    assert (venv.parent.parent / "stamp.json").is_file()
    assert not os.path.exists(venv.parent.parent / "wheelhouse")  # the links pip needed are gone

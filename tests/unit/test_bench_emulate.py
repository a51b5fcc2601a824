"""The arm env for `edgetl bench --emulate`, without QEMU: the one-line error when it is missing or damaged,
where it lives, Debian's version order, a failed download, the emulated cores' cpuinfo and the guest's
command line. (The --emulate option checks are in test_bench_options.py; tests/emulated runs the real thing.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetl.bench import armenv, debian, emulate
from edgetl.core.errors import EdgetlError


def test_env_location(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(tmp_path / "tests-cache"))  # never used for the arm env
    monkeypatch.delenv("EDGETL_ARM_ENV", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert armenv.env_dir() == tmp_path / "xdg" / "edgetl" / "arm-env"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert armenv.env_dir() == tmp_path / "home" / ".cache" / "edgetl" / "arm-env"
    monkeypatch.setenv("EDGETL_ARM_ENV", str(tmp_path / "mine"))
    assert armenv.env_dir() == tmp_path / "mine"


def test_pins_follow_only_what_the_guest_installs(monkeypatch):
    """Requirements for other systems (colorama on Windows) are not pinned, even where the host happens to
    have them installed: the guest is Linux, and the pins must not depend on what else the host holds."""
    from importlib import metadata

    class Dist:
        def __init__(self, version, requires):
            self.version, self.requires = version, requires

    fake = {"onnxruntime": Dist("1.0", ['colorama; platform_system == "Windows"', "numpy>=1", "tqdm; extra == 'x'"]),
            "numpy": Dist("2.0", None), "colorama": Dist("0.4.6", None), "tqdm": Dist("4.0", None)}
    monkeypatch.setattr(armenv, "WHEEL_ROOTS", ["onnxruntime"])
    monkeypatch.setattr(metadata, "distribution", lambda name: fake[name])
    assert armenv.wheel_pins() == {"numpy": "2.0", "onnxruntime": "1.0"}


def test_partial_damaged_and_outdated_envs_are_named(tmp_path, capsys):
    env = tmp_path / "arm-env"
    assert "no arm env" in armenv.problem(env)
    (env / "sysroot").mkdir(parents=True)
    assert "incomplete" in armenv.problem(env)
    pins = armenv.wheel_pins()
    (env / armenv.STAMP).write_text(json.dumps({"layout": armenv.LAYOUT + 1, "pins": pins}))
    assert "older layout" in armenv.problem(env)
    (env / armenv.STAMP).write_text(json.dumps({"layout": armenv.LAYOUT, "pins": {**pins, "numpy": "0.1"}}))
    assert "numpy 0.1" in armenv.problem(env)
    (env / armenv.STAMP).write_text(json.dumps({"layout": armenv.LAYOUT, "pins": pins}))
    assert "damaged" in armenv.problem(env) and "qemu-aarch64-static" in armenv.problem(env)
    with pytest.raises(EdgetlError, match="make arm-env"):
        armenv.require(env)
    assert emulate.main(["status", "--path", str(env)]) == 1
    st = json.loads(capsys.readouterr().out)
    assert st["ready"] is False and "damaged" in st["problem"]


def test_failed_download_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGETL_DEBIAN_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(debian, "RETRY_PAUSE_S", 0.0)
    env = tmp_path / "arm-env"
    assert emulate.main(["setup", "--path", str(env)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bookworm release file" in err[0] and "127.0.0.1:9" in err[0], err
    assert not env.exists() and not list(tmp_path.glob(".arm-env.tmp-*"))  # nothing half-built left behind


def test_debian_version_order():
    newer = [("1:7.2+dfsg-7+deb12u18+b3", "1:7.2+dfsg-7+deb12u15"), ("2.36-9+deb12u14", "2.36-9+deb12u7"),
             ("1.0", "1.0~rc1"), ("3.0.22-1~deb12u2", "3.0.20-1~deb12u2"), ("1:0.1", "9.9"), ("1.0-1", "1.0"),
             ("1.0+b1", "1.0a")]
    for a, b in newer:
        assert debian.compare_versions(a, b) == 1 and debian.compare_versions(b, a) == -1, (a, b)
    assert debian.compare_versions("2.5.0-1+deb12u5", "2.5.0-1+deb12u5") == 0


def test_cpuinfo_matches_the_cores():
    a72, a76 = armenv.cpuinfo_text("cortex-a72"), armenv.cpuinfo_text("cortex-a76")
    assert "CPU part\t: 0xd08" in a72 and "asimddp" not in a72
    assert "CPU part\t: 0xd0b" in a76 and "asimddp" in a76
    assert a72.count("processor") == 4


def test_guest_command_names_only_known_cores(tmp_path):
    argv, env = armenv.guest_command(tmp_path, "cortex-a72")
    assert argv[:3] == [str(tmp_path / "qemu" / "qemu-aarch64-static"), "-cpu", "cortex-a72"]
    assert argv[-1].endswith("usr/bin/python3.11") and "LD_LIBRARY_PATH" not in env and "PYTHONHOME" not in env
    with pytest.raises(EdgetlError, match="cortex-a53, cortex-a72, cortex-a76"):
        armenv.guest_command(tmp_path, "cortex-x4")


def test_guest_imports_this_edgetl_source(tmp_path):
    """The guest's PYTHONPATH: the env's wheels, then a folder whose only entry is this edgetl package."""
    with armenv.guest_with_edgetl(tmp_path, "cortex-a76") as (_, env):
        site, src = env["PYTHONPATH"].split(":")
        assert site == str(tmp_path / "site")
        assert [p.name for p in Path(src).iterdir()] == ["edgetl"]
        assert (Path(src) / "edgetl" / "bench" / "worker.py").resolve() == Path(armenv.__file__).resolve().with_name("worker.py")

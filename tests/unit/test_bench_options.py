"""`edgetl bench` without TensorFlow and without artifacts: option checks (one line naming the flag, before
any work; --emulate's too), device profiles, the FP32 peak a profile sets, and the summary and --compare
arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetl.bench import devices
from edgetl.bench.report import apply_compare, summarize
from edgetl.cli import app
from edgetl.core.errors import EdgetlError

runner = CliRunner()
FAST = ["--min-time", "0.05", "--min-runs", "5"]


def error_line(r) -> str:
    """The single `error:` line of a CLI call that failed on bad input (exit 2, no traceback)."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


BAD = {"threads-0": (["--threads", "0"], "--threads"), "threads-neg": (["--threads", "1,-2"], "--threads"),
       "threads-word": (["--threads", "two"], "--threads"), "unknown-device": (["--device", "toaster"], "rpi4"),
       "min-time": (["--min-time", "0"], "--min-time"), "min-runs": (["--min-runs", "0"], "--min-runs"),
       "unknown-format": (["--format", "tflite-int4"], "tflite-int8"), "no-data": (["--data", "nope"], "--data nope"),
       "amx": (["--amx", "maybe"], "--amx 'maybe': valid values: auto, on, off")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_option_is_one_line_before_any_work(tmp_path, case):
    run = tmp_path / "run"  # no run at all: the option checks must come first
    run.mkdir()
    args, expect = BAD[case]
    line = error_line(runner.invoke(app, ["bench", str(run), *FAST, *args, "--out", str(tmp_path / "o")]))
    assert expect in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,expect", [("[1, 2]", "no 'rows'"), ("{not json", "not a JSON file"),
                                            (None, "no such file")])
def test_bad_compare_file_is_named(tmp_path, content, expect):
    prev = tmp_path / "prev.json"
    if content is not None:
        prev.write_text(content)
    line = error_line(runner.invoke(app, ["bench", str(tmp_path), *FAST, "--compare", str(prev)]))
    assert "--compare" in line and "prev.json" in line and expect in line, line


def test_missing_target_is_named(tmp_path):
    line = error_line(runner.invoke(app, ["bench", str(tmp_path / "nothing-here"), *FAST]))
    assert "nothing-here" in line and "no such run directory or model file" in line


@pytest.fixture
def no_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGETL_ARM_ENV", str(tmp_path / "arm-env"))
    return tmp_path / "arm-env"


@pytest.mark.parametrize("case", ["no-device", "no-qemu-cpu", "unknown-core", "x86-profile-with-core", "env-missing"])
def test_emulate_bad_options_one_line_error_before_any_work(tmp_path, no_env, case):
    run = tmp_path / "run"  # no artifacts at all: the option checks must come first
    run.mkdir()
    args = ["bench", str(run), *FAST, "--threads", "1", "--emulate", "--out", str(tmp_path / "o")]
    expect = {"no-device": ["--device", "rpi4", "rpi5"], "no-qemu-cpu": ["laptop-x86", "rpi4", "rpi5"],
              "unknown-core": ["cortex-x4", "cortex-a72"], "x86-profile-with-core": ["odd", "rpi4"],
              "env-missing": ["no arm env", "make arm-env", "python -m edgetl.bench.emulate setup"]}[case]
    if case == "no-qemu-cpu":
        args += ["--device", "laptop-x86"]
    elif case in ("unknown-core", "x86-profile-with-core"):
        prof = tmp_path / "odd.toml"
        arch, core = ("aarch64", "cortex-x4") if case == "unknown-core" else ("x86_64", "cortex-a72")
        prof.write_text(f'name = "odd"\narch = "{arch}"\nqemu_cpu = "{core}"\n')
        args += ["--device", str(prof)]
    elif case == "env-missing":
        args += ["--device", "rpi5"]
    line = error_line(runner.invoke(app, args))
    for word in expect:
        assert word in line, line
    assert not (tmp_path / "o").exists()


def test_parse_threads():
    assert devices.parse_threads("1, 2,4,2") == [1, 2, 4]
    assert devices.parse_threads(None) is None and devices.parse_threads(" ") is None
    for bad in ("0", "1,x", "-1"):
        with pytest.raises(EdgetlError, match="--threads"):
            devices.parse_threads(bad)


def test_all_profiles_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the repo's devices/ is found from any working directory
    monkeypatch.delenv("EDGETL_DEVICES", raising=False)
    names = devices.available_devices()
    assert {"rpi4", "rpi5", "laptop-x86"} <= set(names)
    for n in names:
        p = devices.load_device(n)
        assert p["name"] == n and Path(p["file"]).name == f"{n}.toml"
        assert p["threads"] and p["formats"] and p["recommended_alpha"] and p["recommended_image_size"]
        assert p["reference"] and all(r.get("source") and r.get("model") for r in p["reference"])


def test_emulation_profiles_are_the_pis():
    assert devices.emulation_profiles() == ["rpi4", "rpi5"]
    assert devices.load_device("rpi4")["qemu_cpu"] == "cortex-a72"
    assert devices.load_device("rpi5")["qemu_cpu"] == "cortex-a76"


def test_profile_from_a_path_and_from_edgetl_devices(tmp_path, monkeypatch):
    (tmp_path / "board.toml").write_text('arch = "aarch64"\nthreads = [2, 2, 1]\nformats = ["tflite-int8"]\n')
    p = devices.load_device(str(tmp_path / "board.toml"))
    assert p["name"] == "board" and p["threads"] == [2, 1] and p["file"] == str(tmp_path / "board.toml")
    monkeypatch.setenv("EDGETL_DEVICES", str(tmp_path))
    assert "board" in devices.available_devices() and devices.load_device("board")["formats"] == ["tflite-int8"]


@pytest.mark.parametrize("text,expect", [("name = ", "not valid TOML"), ('formats = ["tflite-int4"]', "unknown formats"),
                                         ("threads = [0]", r"threads = \[0\]: must be a list of thread counts")])
def test_bad_profile_is_one_line(tmp_path, text, expect):
    (tmp_path / "bad.toml").write_text(text + "\n")
    with pytest.raises(EdgetlError, match=expect):
        devices.load_device(str(tmp_path / "bad.toml"))


def test_peak_is_the_measuring_machines_own():
    """% of peak compares a row with the peak of the machine that ran it: an x86 laptop's rows with the
    laptop's peak even under --device rpi4; the profile's peak only stands in for a machine of its
    architecture whose clock is unknown."""
    host = {"arch": "x86_64", "peak": {"fp32_gflops_per_core": 100.0, "fp32_gmacs_per_core": 50.0, "basis": "host"}}
    rpi4 = devices.load_device("rpi4")
    assert devices.fp32_peak(None, host) == host["peak"]
    assert devices.fp32_peak(rpi4, host) == host["peak"]
    pi = {"arch": "aarch64", "peak": {"basis": "Arm NEON", "fp32_gflops_per_core": None}}
    peak = devices.fp32_peak(rpi4, pi)
    assert peak["fp32_gflops_per_core"] == 24.0 and peak["fp32_gmacs_per_core"] == 12.0
    assert peak["basis"].startswith("Cortex-A72")
    assert devices.fp32_peak(rpi4, {**pi, "arch": "riscv64"}) == pi["peak"]


def test_host_slug_is_a_file_name():
    assert devices.host_slug({"cpu": "AMD EPYC 9B14 (Zen 4) @ 2.6GHz", "arch": "x86_64"}) == \
        "x86_64-amd-epyc-9b14-zen-4-2-6ghz"
    assert devices.host_slug({"cpu": None, "arch": "aarch64"}) == "aarch64-cpu"


def _row(name, fmt, p50, threads=1, **kw):
    return {"name": name, "format": fmt, "threads": threads, "status": "ok", "latency_ms": {"p50": p50}, **kw}


def test_summary_per_thread_count_leaves_out_emulated_rows():
    rows = [_row("keras", "keras", 40.0), _row("tflite-fp32", "tflite-fp32", 4.0), _row("tflite-int8", "tflite-int8", 2.0),
            _row("tflite-int8 @cortex-a72 (emulated)", "tflite-int8", 0.5, emulated_cpu="cortex-a72"),
            _row("tflite-int8", "tflite-int8", 1.0, threads=2)]
    s = summarize(rows)
    assert list(s) == ["threads=1", "threads=2"]
    assert s["threads=1"]["best"] == {"name": "tflite-int8", "p50_ms": 2.0}
    assert s["threads=1"]["speedup_best_vs_keras"] == pytest.approx(20.0)
    assert s["threads=1"]["tflite_int8_vs_fp32_speed"] == pytest.approx(2.0)
    assert "speedup_best_vs_keras" not in s["threads=2"]


def test_compare_matches_by_name_then_by_unique_format():
    prev = {"rows": [_row("runA/onnx-fp32", "onnx-fp32", 10.0, accuracy=0.5, bytes=100),
                     _row("tflite-int8 @cortex-a72 (emulated)", "tflite-int8", 0.0, emulated_cpu="cortex-a72")]}
    rows = [_row("onnx-fp32", "onnx-fp32", 12.0, accuracy=0.75, bytes=50),  # renamed: same format
            _row("tflite-int8 @cortex-a76 (emulated)", "tflite-int8", 1.0, emulated_cpu="cortex-a76")]
    apply_compare(rows, prev)
    c = rows[0]["compare"]
    assert c["p50_ms_before"] == 10.0 and c["p50_change_pct"] == pytest.approx(20.0)
    assert c["accuracy_change"] == pytest.approx(0.25) and c["bytes_change_pct"] == pytest.approx(-50.0)
    assert rows[1]["compare"] == {"note": "new row"}  # an emulated row only matches an emulated row by name


"""`edgetl bench --emulate` for real: the int8 TFLite and int8 ONNX files of an exported tiny run on
cortex-a72 (rpi4) and cortex-a76 (rpi5) under QEMU, their top-1 checked against this machine's run of
the same files and against each other. Needs the arm env (`make arm-env`); the option checks and env
checks that need no QEMU are in tests/unit/test_bench_emulate.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl.bench import armenv
from edgetl.cli import app
from edgetl.core.formats import FORMATS
from edgetl.core.rundir import Run

runner = CliRunner()
FAST = ["--min-time", "0.05", "--min-runs", "3", "--threads", "1"]
INT8 = ("tflite-int8", "onnx-int8")


@pytest.fixture(scope="session")
def arm_env() -> Path:
    """The arm env, checked before any fixture builds a run (a missing env skips, except on CI)."""
    why = armenv.problem()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the arm env ({why}): `make test` builds it with `make arm-env`")
        pytest.skip(f"{why}; run `make arm-env`")
    return armenv.env_dir()


@pytest.fixture(scope="module")
def host_probs(arm_env, tiny_exported, tmp_path_factory) -> dict:
    """{format: per-image probabilities} of this machine's run, decoded exactly as bench decodes them."""
    from edgetl.bench.worker import measure
    from edgetl.core.images import decode_all, decoding_of

    tmp = tmp_path_factory.mktemp("host")
    r = Run(tiny_exported)
    pix, labels, _, _ = decode_all(r.split_items("val"), r.image_size, decoding=decoding_of(r.preprocessing))
    np.save(tmp / "px.npy", pix)
    np.save(tmp / "y.npy", labels)
    out = {}
    for fmt in INT8:
        res = measure({"path": str(tiny_exported / FORMATS[fmt].filename), "threads": 1, "timing": False,
                       "pixels": str(tmp / "px.npy"), "labels": str(tmp / "y.npy"), "save_probs": str(tmp / f"{fmt}.npy")})
        assert res["status"] == "ok", res
        out[fmt] = np.load(tmp / f"{fmt}.npy")
    return out


@pytest.fixture(scope="module")
def emulated_benches(arm_env, tiny_exported, tmp_path_factory) -> dict:
    """{device: (CLI output, bench JSON)} of `edgetl bench RUN --device D --emulate` for rpi4 and rpi5."""
    out = {}
    for dev in ("rpi4", "rpi5"):
        folder = tmp_path_factory.mktemp(f"bench-{dev}")
        r = runner.invoke(app, ["bench", str(tiny_exported), "--device", dev, "--emulate", *FAST,
                                "--format", ",".join(INT8), "--out", str(folder)])
        assert r.exit_code == 0, r.output
        out[dev] = (r.stdout, json.loads((folder / "bench.json").read_text()))
    return out


def assert_same_top1(top1_a, top1_b, ref_probs, max_dp):
    """Equal top-1 on every image whose reference margin (top-1 minus runner-up) is clearly larger
    than the largest probability difference between the runs (a tie can go either way)."""
    srt = np.sort(ref_probs, axis=1)
    clear = (srt[:, -1] - srt[:, -2]) > 2 * max_dp
    assert clear.sum() >= len(clear) // 2, "test model too undecided to test agreement"
    a, b = np.asarray(top1_a), np.asarray(top1_b)
    assert (a[clear] == b[clear]).all(), (a, b, clear)


@pytest.mark.parametrize("dev,cpu", [("rpi4", "cortex-a72"), ("rpi5", "cortex-a76")])
def test_emulated_rows_agree_with_host(emulated_benches, host_probs, tiny_exported, dev, cpu):
    stdout, res = emulated_benches[dev]
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["tflite-int8", f"tflite-int8 @{cpu} (emulated)", "onnx-int8", f"onnx-int8 @{cpu} (emulated)"]
    assert res["emulation"]["cpu"] == cpu and res["settings"]["emulate"] == cpu
    assert res["emulation"]["runtimes"]["onnxruntime"] == armenv.wheel_pins()["onnxruntime"]
    for fmt in INT8:
        host, emu = rows[fmt], rows[f"{fmt} @{cpu} (emulated)"]
        assert host["status"] == "ok" and emu["status"] == "ok", emu
        assert emu["emulated_cpu"] == cpu and emu["eval_images"] == host["eval_images"] == len(host_probs[fmt])
        for timing in ("latency_ms", "cpu_ms", "load_ms", "throughput_ips", "gmacs_per_s", "peak_rss_mb"):
            assert timing not in emu  # emulated: never a device latency
        assert emu["emulation_wall_s"] > 0
        assert emu["host_top1"] == host_probs[fmt].argmax(1).tolist()
        assert emu["max_abs_dp_vs_host"] <= 0.05  # a few output quantization steps at most
        assert_same_top1(emu["top1"], emu["host_top1"], host_probs[fmt], emu["max_abs_dp_vs_host"])
        n = len(emu["top1"])
        assert emu["agreement_vs_host"] == pytest.approx(1 - len(emu["disagreements_vs_host"]) / n)
    assert all("emulated" not in s["best"]["name"] for s in res["summary"].values())
    assert f"@{cpu} (emulated)" in stdout and "not device latency" in stdout


def test_emulated_cores_agree_with_each_other(emulated_benches, host_probs):
    a72 = {r["format"]: r for r in emulated_benches["rpi4"][1]["rows"] if r.get("emulated_cpu")}
    a76 = {r["format"]: r for r in emulated_benches["rpi5"][1]["rows"] if r.get("emulated_cpu")}
    for fmt in INT8:
        dp = max(a72[fmt]["max_abs_dp_vs_host"], a76[fmt]["max_abs_dp_vs_host"])
        assert_same_top1(a72[fmt]["top1"], a76[fmt]["top1"], host_probs[fmt], 2 * dp)


@pytest.mark.parametrize("cpu,dotprod", [("cortex-a72", False), ("cortex-a76", True)])
def test_guest_sees_the_emulated_core(arm_env, cpu, dotprod):
    """The guest is aarch64, reads the core's cpuinfo, and gets the core's own HWCAP bits from QEMU
    (the A76's dot-product instructions, which int8 kernels dispatch on, and not the A72)."""
    argv, env = armenv.guest_command(arm_env, cpu)
    code = ("import ctypes, platform; hw = ctypes.CDLL(None).getauxval(16); "  # AT_HWCAP
            "part = [l for l in open('/proc/cpuinfo') if l.startswith('CPU part')][0].split()[-1]; "
            "print(platform.machine(), part, bool(hw & (1 << 20)))")  # HWCAP_ASIMDDP
    r = subprocess.run(argv + ["-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["aarch64", armenv.CPUS[cpu]["part"], str(dotprod)]

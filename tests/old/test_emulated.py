"""`edgetl bench --emulate`: the aarch64 builds of the runtimes under QEMU (edgetl.emulate).

Fast tests (no QEMU): option checks, the one-line error when the arm env is missing or damaged, where
the env lives, Debian's version order and a failed download. The `emulated` tier runs an int8 TFLite
and an int8 ONNX file on cortex-a72 (rpi4) and cortex-a76 (rpi5) and checks their top-1 against this
machine's run of the same files and against each other. This process never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgetl import bench as B
from edgetl import emulate as E
from edgetl.cli import app
from edgetl.errors import EdgetlError

runner = CliRunner()
FAST = ["--min-time", "0.05", "--min-runs", "3", "--threads", "1"]


def error_line(r) -> str:
    """The single `error:` line of a CLI call that failed on bad input (exit 2, no traceback)."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


# ---- fast: options and env checks (no QEMU) ----------------------------------------------------------
@pytest.fixture
def no_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGETL_ARM_ENV", str(tmp_path / "arm-env"))
    return tmp_path / "arm-env"


@pytest.mark.parametrize("case", ["no-device", "no-qemu-cpu", "unknown-core", "x86-profile-with-core", "env-missing"])
def test_emulate_bad_options_one_line_error_before_any_work(tmp_path, no_env, case):
    run = tmp_path / "run"  # no artifacts at all: the option checks must come first
    run.mkdir()
    args = ["bench", str(run), *FAST, "--emulate", "--out", str(tmp_path / "o")]
    expect = {"no-device": ["--device", "rpi4", "rpi5"], "no-qemu-cpu": ["laptop-x86", "rpi4", "rpi5"],
              "unknown-core": ["cortex-x4", "cortex-a72"], "x86-profile-with-core": ["odd", "rpi4"],
              "env-missing": ["no arm env", "make arm-env", "python -m edgetl.emulate setup"]}[case]
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


def test_emulation_profiles_are_the_pis():
    assert B.emulation_profiles() == ["rpi4", "rpi5"]
    assert B.load_device("rpi4")["qemu_cpu"] == "cortex-a72" and B.load_device("rpi5")["qemu_cpu"] == "cortex-a76"


def test_env_location(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(tmp_path / "tests-cache"))  # never used for the arm env
    monkeypatch.delenv("EDGETL_ARM_ENV", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert E.env_dir() == tmp_path / "xdg" / "edgetl" / "arm-env"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert E.env_dir() == tmp_path / "home" / ".cache" / "edgetl" / "arm-env"
    monkeypatch.setenv("EDGETL_ARM_ENV", str(tmp_path / "mine"))
    assert E.env_dir() == tmp_path / "mine"


def test_partial_damaged_and_outdated_envs_are_named(tmp_path):
    env = tmp_path / "arm-env"
    assert "no arm env" in E.problem(env)
    (env / "sysroot").mkdir(parents=True)
    assert "incomplete" in E.problem(env)
    pins = E.wheel_pins()
    (env / E.STAMP).write_text(json.dumps({"layout": E.LAYOUT, "pins": {**pins, "numpy": "0.1"}}))
    assert "numpy 0.1" in E.problem(env)
    (env / E.STAMP).write_text(json.dumps({"layout": E.LAYOUT, "pins": pins}))
    assert "damaged" in E.problem(env) and "qemu-aarch64-static" in E.problem(env)
    with pytest.raises(EdgetlError, match="make arm-env"):
        E.require(env)
    assert E.main(["status", "--path", str(env)]) == 1


def test_failed_download_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGETL_DEBIAN_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(E, "RETRY_PAUSE_S", 0.0)
    env = tmp_path / "arm-env"
    assert E.main(["setup", "--path", str(env)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bookworm release file" in err[0] and "127.0.0.1:9" in err[0], err
    assert not env.exists() and not list(tmp_path.glob(".arm-env.tmp-*"))  # nothing half-built left behind


def test_debian_version_order():
    newer = [("1:7.2+dfsg-7+deb12u18+b3", "1:7.2+dfsg-7+deb12u15"), ("2.36-9+deb12u14", "2.36-9+deb12u7"),
             ("1.0", "1.0~rc1"), ("3.0.22-1~deb12u2", "3.0.20-1~deb12u2"), ("1:0.1", "9.9"), ("1.0-1", "1.0"),
             ("1.0+b1", "1.0a")]
    for a, b in newer:
        assert E.compare_versions(a, b) == 1 and E.compare_versions(b, a) == -1, (a, b)
    assert E.compare_versions("2.5.0-1+deb12u5", "2.5.0-1+deb12u5") == 0


def test_cpuinfo_matches_the_cores():
    a72, a76 = E.cpuinfo_text("cortex-a72"), E.cpuinfo_text("cortex-a76")
    assert "CPU part\t: 0xd08" in a72 and "asimddp" not in a72
    assert "CPU part\t: 0xd0b" in a76 and "asimddp" in a76
    assert a72.count("processor") == 4


# ---- emulated tier: real QEMU runs --------------------------------------------------------------------
@pytest.fixture(scope="session")  # session: checked before the session's c_run is built
def arm_env() -> Path:
    why = E.problem()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the arm env ({why}): `make test` builds it with `make arm-env`")
        pytest.skip(f"{why}; run `make arm-env`")
    return E.env_dir()


@pytest.fixture(scope="module")
def int8_run(arm_env, c_run, tmp_path_factory) -> Path:
    """c_run's files plus model-int8.onnx as edgetl's exporter writes one: QDQ with per-channel s8
    weights from onnxruntime's quantize_static (calibrated on the run's val images; its pre-processing
    pass first, without which the graph shares initializers that onnxruntime refuses to load), then
    stored as u8 with zero point 128 (edgetl.onnx_int8: the same values, exact on every CPU). No
    TensorFlow needed."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgetl import artifact, data
    from edgetl.onnx_int8 import unsigned_weights
    from edgetl.rundir import Run

    run = tmp_path_factory.mktemp("emulated") / "run"
    shutil.copytree(c_run, run)
    r = Run(run)
    pix, _, _, _ = data.load_batch(r.split_items("val"), r.image_size)
    x = data.preprocess(pix, r.preprocessing)
    name = onnx.load(str(run / "model-fp32.onnx")).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    out, pre = run / "model-int8.onnx", run.parent / "fp32-pre.onnx"
    quant_pre_process(str(run / "model-fp32.onnx"), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    meta = {**artifact.read_meta(run / "model-fp32.onnx"), "format": "onnx-int8", "int8_weights": "u8"}
    proto = onnx.load(str(out))
    assert unsigned_weights(proto) > 0
    artifact.embed_onnx(proto, meta)
    onnx.save(proto, str(out))
    return run


@pytest.fixture(scope="module")
def host_probs(int8_run, tmp_path_factory) -> dict:
    """{format: per-image probabilities} of this machine's run, decoded exactly as bench decodes them."""
    from edgetl import data
    from edgetl.bench_worker import measure
    from edgetl.rundir import Run

    tmp = tmp_path_factory.mktemp("host")
    r = Run(int8_run)
    pix, labels, _, _ = data.load_batch(r.split_items("val"), r.image_size)
    np.save(tmp / "px.npy", pix)
    np.save(tmp / "y.npy", labels)
    out = {}
    for fmt in ("tflite-int8", "onnx-int8"):
        f = int8_run / ("model-int8.tflite" if fmt == "tflite-int8" else "model-int8.onnx")
        res = measure({"path": str(f), "threads": 1, "timing": False, "pixels": str(tmp / "px.npy"),
                       "labels": str(tmp / "y.npy"), "save_probs": str(tmp / f"{fmt}.npy")})
        assert res["status"] == "ok", res
        out[fmt] = np.load(tmp / f"{fmt}.npy")
    return out


@pytest.fixture(scope="module")
def emulated_benches(arm_env, int8_run, tmp_path_factory) -> dict:
    """{device: (CLI output, bench JSON)} of `edgetl bench RUN --device D --emulate` for rpi4 and rpi5."""
    out = {}
    for dev in ("rpi4", "rpi5"):
        folder = tmp_path_factory.mktemp(f"bench-{dev}")
        r = runner.invoke(app, ["bench", str(int8_run), "--device", dev, "--emulate", *FAST,
                                "--format", "tflite-int8,onnx-int8", "--out", str(folder)])
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


@pytest.mark.emulated
@pytest.mark.parametrize("dev,cpu", [("rpi4", "cortex-a72"), ("rpi5", "cortex-a76")])
def test_emulated_rows_agree_with_host(emulated_benches, host_probs, dev, cpu):
    stdout, res = emulated_benches[dev]
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["tflite-int8", f"tflite-int8 @{cpu} (emulated)", "onnx-int8", f"onnx-int8 @{cpu} (emulated)"]
    assert res["emulation"]["cpu"] == cpu and res["settings"]["emulate"] == cpu
    assert res["emulation"]["runtimes"]["onnxruntime"] == E.wheel_pins()["onnxruntime"]
    for fmt in ("tflite-int8", "onnx-int8"):
        host, emu = rows[fmt], rows[f"{fmt} @{cpu} (emulated)"]
        assert host["status"] == "ok" and emu["status"] == "ok", emu
        assert emu["emulated_cpu"] == cpu and emu["eval_images"] == host["eval_images"] == 6
        for timing in ("latency_ms", "cpu_ms", "load_ms", "throughput_ips", "gmacs_per_s", "peak_rss_mb"):
            assert timing not in emu  # emulated: never a device latency
        assert emu["host_top1"] == host_probs[fmt].argmax(1).tolist()
        assert emu["max_abs_dp_vs_host"] <= 0.05  # a few output quantization steps at most
        assert_same_top1(emu["top1"], emu["host_top1"], host_probs[fmt], emu["max_abs_dp_vs_host"])
        n = len(emu["top1"])
        assert emu["agreement_vs_host"] == pytest.approx(1 - len(emu["disagreements_vs_host"]) / n)
    assert all("emulated" not in s["best"]["name"] for s in res["summary"].values())
    assert f"@{cpu} (emulated)" in stdout and "not device latency" in stdout


@pytest.mark.emulated
def test_emulated_cores_agree_with_each_other(emulated_benches, host_probs):
    a72 = {r["format"]: r for r in emulated_benches["rpi4"][1]["rows"] if r.get("emulated_cpu")}
    a76 = {r["format"]: r for r in emulated_benches["rpi5"][1]["rows"] if r.get("emulated_cpu")}
    for fmt in ("tflite-int8", "onnx-int8"):
        dp = max(a72[fmt]["max_abs_dp_vs_host"], a76[fmt]["max_abs_dp_vs_host"])
        assert_same_top1(a72[fmt]["top1"], a76[fmt]["top1"], host_probs[fmt], 2 * dp)


@pytest.mark.emulated
@pytest.mark.parametrize("cpu,dotprod", [("cortex-a72", False), ("cortex-a76", True)])
def test_guest_sees_the_emulated_core(arm_env, cpu, dotprod):
    """The guest is aarch64, reads the core's cpuinfo, and gets the core's own HWCAP bits from QEMU
    (the A76's dot-product instructions, which int8 kernels dispatch on, and not the A72)."""
    argv, env = E.guest_command(arm_env, cpu)
    code = ("import ctypes, platform; hw = ctypes.CDLL(None).getauxval(16); "  # AT_HWCAP
            "part = [l for l in open('/proc/cpuinfo') if l.startswith('CPU part')][0].split()[-1]; "
            "print(platform.machine(), part, bool(hw & (1 << 20)))")  # HWCAP_ASIMDDP
    r = subprocess.run(argv + ["-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["aarch64", E.CPUS[cpu]["part"], str(dotprod)]

"""CPU features and FP32 peak from /proc/cpuinfo text: x86 (AVX2, AVX-512, VNNI), Arm (Pi 4 / Pi 5)."""

from __future__ import annotations

import pytest

from edgetl.core import cpu
from edgetl.core.errors import EdgetlError

ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model name	: AMD EPYC 9454
cpu MHz		: 2750.000
flags		: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_vnni

processor	: 1
vendor_id	: AuthenticAMD
model name	: second block (ignored)
"""
AVX2 = "vendor_id : GenuineIntel\ncpu family : 6\nmodel name : Intel Xeon E5\ncpu MHz : 2200.0\nflags : sse avx fma avx2\n"
SKYLAKE_SP = "vendor_id : GenuineIntel\ncpu family : 6\ncpu MHz : 3000\nflags : avx2 fma avx512f avx512bw\n"
PI4 = """processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU part	: 0xd08

processor	: 1
Features	: fp asimd
"""
PI5 = "processor : 0\nFeatures : fp asimd asimdhp asimddp\nCPU part : 0xd0b\n"


def test_cpuinfo_reads_the_first_processor_block():
    info = cpu.cpuinfo(ZEN4)
    assert info["model name"] == "AMD EPYC 9454" and info["cpu family"] == "25"
    assert "avx512_vnni" in info["flags"].split()
    assert cpu.cpuinfo(PI4)["CPU part"] == "0xd08"
    assert cpu.cpuinfo("") == {}


@pytest.mark.parametrize("text,machine,cls,saturates", [
    (ZEN4, "x86_64", "x86-vnni", False),
    (AVX2, "x86_64", "x86-avx2", True),
    (SKYLAKE_SP, "x86_64", "x86-avx2", True),  # AVX-512 without VNNI: 16-bit sums saturate
    ("flags : sse sse2\n", "x86_64", "x86", True),
    ("flags : avx2 avx_vnni\n", "x86_64", "x86-vnni", False),
    (PI4, "aarch64", "arm64", False),
    (PI5, "aarch64", "arm64-dotprod", False),
    ("", "arm64", "arm64", False),  # macOS: no cpuinfo, NEON is mandatory
    ("", "riscv64", "riscv64", False),
])
def test_features_classify_the_int8_kernels(text, machine, cls, saturates):
    feat = cpu.features(cpu.cpuinfo(text), machine)
    assert feat["class"] == cls and feat["arch"] == machine
    assert cpu.u8s8_saturates(feat) == saturates
    if machine == "x86_64":
        assert set(cpu.X86_FLAGS) <= set(feat) and feat["avx2"] == ("avx2" in text)
    if machine in ("aarch64", "arm64"):
        assert feat["neon"] and feat["dotprod"] == ("asimddp" in text)


def test_features_name_the_model():
    assert cpu.features(cpu.cpuinfo(ZEN4), "x86_64")["model"] == "AMD EPYC 9454"
    assert cpu.features(cpu.cpuinfo(PI4), "aarch64")["model"] == "0xd08"


@pytest.mark.parametrize("text,flops,ghz,basis", [
    (ZEN4, 32, 2.75, "Zen 4"),
    (SKYLAKE_SP, 64, 3.0, "AVX-512: 2x512-bit"),
    (AVX2, 32, 2.2, "AVX2"),
    ("cpu MHz : 1000\nflags : sse sse2\n", 8, 1.0, "SSE"),
])
def test_peak_from_cpuinfo(monkeypatch, text, flops, ghz, basis):
    monkeypatch.delenv("EDGETL_CPU_GHZ", raising=False)
    p = cpu.peak(cpu.cpuinfo(text))
    assert p["flops_per_cycle"] == flops and p["clock_ghz"] == ghz and basis in p["basis"]
    assert p["fp32_gflops_per_core"] == round(flops * ghz, 1)
    assert p["fp32_gmacs_per_core"] == round(flops * ghz / 2, 1)


def test_peak_of_an_arm_core_with_a_measured_clock(monkeypatch):
    monkeypatch.setenv("EDGETL_CPU_GHZ", "1.8")
    p = cpu.peak(cpu.cpuinfo(PI4))
    assert p["flops_per_cycle"] == 16 and p["fp32_gflops_per_core"] == 28.8
    assert "NEON" in p["basis"] and "EDGETL_CPU_GHZ" in p["basis"]


def test_measured_clock_must_be_a_number(monkeypatch):
    monkeypatch.setenv("EDGETL_CPU_GHZ", "fast")
    with pytest.raises(EdgetlError, match=r"^EDGETL_CPU_GHZ='fast': give the clock in GHz"):
        cpu.peak(cpu.cpuinfo(AVX2))

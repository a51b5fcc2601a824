"""What this CPU offers for int8 inference, read from /proc/cpuinfo (no TensorFlow, no runtime import).

int8 kernels differ per CPU class, so every check and benchmark records the features it ran with:
- x86 without VNNI (AVX2, AVX-512 without VNNI): onnxruntime's u8 x s8 GEMM adds pairs of products in
  16-bit lanes that saturate;
- x86 with VNNI (AVX-512 VNNI or AVX-VNNI): 32-bit dot products, no saturation;
- Arm (NEON, optionally dotprod / i8mm): no saturation.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from .errors import EdgetlError

X86_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FLAGS = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve"}


def cpuinfo(text: str | None = None) -> dict:
    """The first processor block of /proc/cpuinfo as {key: value} ({} where there is none). Parsed here:
    the flags line is all that is needed, not worth a dependency (py-cpuinfo) on a Pi."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return {}
    info: dict = {}
    for line in text.splitlines():
        if not line.strip():
            if info.get("flags") or info.get("Features"):
                break
            continue
        k, _, v = line.partition(":")
        info.setdefault(k.strip(), v.strip())
    return info


def features(info: dict | None = None, machine: str | None = None) -> dict:
    """{'arch', 'class', 'model', and one boolean per int8-relevant feature}."""
    info = cpuinfo() if info is None else info
    machine = machine or platform.machine()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    out: dict = {"arch": machine, "model": info.get("model name") or info.get("CPU part") or platform.processor() or None}
    if machine in ("x86_64", "AMD64", "i686", "i386"):
        out.update({f: f in flags for f in X86_FLAGS})
        vnni = out["avx512_vnni"] or out["avx_vnni"]
        out["class"] = "x86-vnni" if vnni else ("x86-avx2" if out["avx2"] else "x86")
    elif machine in ("aarch64", "arm64"):
        out.update({name: flag in flags for flag, name in ARM_FLAGS.items()})
        out["neon"] = out["neon"] or machine == "arm64"  # macOS reports no cpuinfo; NEON is mandatory there
        out["class"] = "arm64-dotprod" if out["dotprod"] else "arm64"
    else:
        out["class"] = machine or "unknown"
    return out


def u8s8_saturates(feat: dict | None = None) -> bool:
    """True on x86 CPUs whose int8 GEMM kernels add u8 x s8 products in saturating 16-bit lanes."""
    feat = features() if feat is None else feat
    return feat.get("class") in ("x86-avx2", "x86")


def peak(ci: dict | None = None) -> dict:
    """FP32 peak per core = FMA units x SIMD lanes x 2 FLOP x clock, from /proc/cpuinfo.

    Zen 4 (AMD family 25 with AVX-512) executes 512-bit ops on two 256-bit FMA pipes, so 8 lanes
    x 2 pipes; Zen 5 and Intel AVX-512 servers: 16 lanes x 2; AVX2+FMA: 8 x 2; Arm NEON (A72/A76):
    4 x 2. The clock is /proc/cpuinfo's "cpu MHz" (or cpufreq max): boost clocks may be higher,
    so this is an estimate and is reported as such.
    """
    ci = cpuinfo() if ci is None else ci
    flags = set(ci.get("flags", ci.get("Features", "")).split())
    vendor, family = ci.get("vendor_id", ""), ci.get("cpu family", "")
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family == "25":
            lanes, units, basis = 8, 2, "AMD Zen 4: AVX-512 on 2x256-bit FMA pipes"
        else:
            lanes, units, basis = 16, 2, "AVX-512: 2x512-bit FMA"
    elif "fma" in flags and "avx2" in flags:
        lanes, units, basis = 8, 2, "AVX2: 2x256-bit FMA"
    elif "asimd" in flags or platform.machine() in ("aarch64", "arm64"):
        lanes, units, basis = 4, 2, "Arm NEON: 2x128-bit FMA"
    else:
        lanes, units, basis = 4, 1, "SSE: 128-bit (no FMA assumed)"
    mhz = None
    src = "cpuinfo clock; boost may be higher"
    if os.environ.get("EDGETL_CPU_GHZ"):  # a measured clock (benchmarks/clock_probe.c) beats the nominal one
        try:
            mhz = float(os.environ["EDGETL_CPU_GHZ"]) * 1e3
            src = "clock from EDGETL_CPU_GHZ"
        except ValueError:
            raise EdgetlError(f"EDGETL_CPU_GHZ={os.environ['EDGETL_CPU_GHZ']!r}: give the clock in GHz, e.g. 3.7") from None
    try:
        mhz = mhz or float(ci["cpu MHz"])
    except (KeyError, ValueError):
        try:
            mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e3
        except (OSError, ValueError):
            pass
    if not mhz:
        return {"basis": basis, "flops_per_cycle": lanes * units * 2, "fp32_gflops_per_core": None}
    flops = lanes * units * 2
    g = flops * mhz / 1e3
    return {"basis": f"{basis}, {flops} FLOP/cycle x {mhz / 1e3:.2f} GHz ({src})",
            "flops_per_cycle": flops, "clock_ghz": round(mhz / 1e3, 3), "fp32_gflops_per_core": round(g, 1),
            "fp32_gmacs_per_core": round(g / 2, 1)}

"""What this CPU offers for int8 inference, read from /proc/cpuinfo (no TensorFlow, no runtime import).

int8 kernels differ per CPU class, so every check and benchmark records the features it ran with:
- x86 without VNNI (AVX2, AVX-512 without VNNI): onnxruntime's u8 x s8 GEMM adds pairs of products in
  16-bit lanes that saturate;
- x86 with VNNI (AVX-512 VNNI or AVX-VNNI): 32-bit dot products, no saturation;
- Arm (NEON, optionally dotprod / i8mm): no saturation.
"""

from __future__ import annotations

import platform
from pathlib import Path

X86_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FLAGS = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve"}


def cpuinfo(text: str | None = None) -> dict:
    """The first processor block of /proc/cpuinfo as {key: value} ({} where there is none)."""
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

"""Where a bench runs: device profiles (devices/NAME.toml for `--device`), `--threads`, and this machine's
description (CPU, features, FP32 peak, runtime versions)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from ..core import cpu, runtime
from ..core.errors import EdgetlError
from ..core.formats import FORMATS

REPO_DEVICES = Path(__file__).resolve().parents[2] / "devices"
PACKAGED_DEVICES = Path(__file__).resolve().parents[1] / "devices"  # a wheel ships devices/ as edgetl.devices


def parse_threads(spec: str | None) -> list[int] | None:
    """`--threads 1,2,4` -> [1, 2, 4]; every value must be a whole number >= 1."""
    if spec is None or str(spec).strip() == "":
        return None
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            t = int(part)
        except ValueError:
            raise EdgetlError(f"--threads {spec!r}: give whole numbers >= 1, comma-separated (e.g. 1,2,4)") from None
        if t <= 0:
            raise EdgetlError(f"--threads {spec!r}: thread counts must be >= 1 (got {t})")
        out.append(t)
    return list(dict.fromkeys(out))


def device_dirs() -> list[Path]:
    """Folders searched for profiles: $EDGETL_DEVICES, the repo's devices/, ./devices, the installed package's."""
    dirs = []
    if os.environ.get("EDGETL_DEVICES"):
        dirs.append(Path(os.environ["EDGETL_DEVICES"]))
    dirs += [REPO_DEVICES, Path.cwd() / "devices", PACKAGED_DEVICES]
    return [d for d in dict.fromkeys(d.resolve() for d in dirs) if d.is_dir()]


def available_devices() -> list[str]:
    return sorted({p.stem for d in device_dirs() for p in d.glob("*.toml")})


def load_device(name: str) -> dict:
    """A device profile (devices/NAME.toml, or a path to a .toml file)."""
    import tomllib

    p = Path(name)
    if not (p.suffix == ".toml" and p.is_file()):
        p = next((d / f"{name}.toml" for d in device_dirs() if (d / f"{name}.toml").is_file()), None)
        if p is None:
            raise EdgetlError(f"--device {name!r}: unknown profile; available: {', '.join(available_devices()) or 'none'}"
                              " (or give a path to a .toml file)")
    try:
        prof = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgetlError(f"--device {p}: not valid TOML ({e})") from None
    prof.setdefault("name", p.stem)
    prof["file"] = str(p)
    if "threads" in prof:
        prof["threads"] = parse_threads(",".join(str(t) for t in prof["threads"]))
    bad = [f for f in prof.get("formats", []) if f not in FORMATS]
    if bad:
        raise EdgetlError(f"--device {p}: unknown formats {bad}; valid: {', '.join(FORMATS)}")
    return prof


def emulation_profiles() -> list[str]:
    """Profiles that name an aarch64 core for `--emulate`."""
    names = []
    for n in available_devices():
        try:
            p = load_device(n)
        except EdgetlError:
            continue
        if p.get("qemu_cpu") and p.get("arch") == "aarch64":
            names.append(n)
    return names


def emulation_cpu(profile: dict | None) -> str:
    """The core that `--emulate` runs (the profile's `qemu_cpu`), once the arm env is known to be ready."""
    from . import armenv

    accepted = ", ".join(emulation_profiles()) or "none"
    if profile is None:
        raise EdgetlError(f"--emulate needs --device with an aarch64 qemu_cpu: {accepted}")
    core = profile.get("qemu_cpu")
    if not core or profile.get("arch") != "aarch64":
        raise EdgetlError(f"--emulate: profile {profile['name']!r} names no aarch64 qemu_cpu; use --device {accepted}")
    if core not in armenv.CPUS:
        raise EdgetlError(f"--device {profile['file']}: qemu_cpu {core!r} is not one of {', '.join(armenv.CPUS)}")
    armenv.require()
    return core


def host_info() -> dict:
    ci = cpu.cpuinfo()
    model = ci.get("model name") or ci.get("Model") or platform.processor() or "unknown"
    return {"cpu": model, "vendor": ci.get("vendor_id"), "family": ci.get("cpu family"), "model": ci.get("model"),
            "cores": os.cpu_count(), "os": platform.platform(), "arch": platform.machine(),
            "python": platform.python_version(), "peak": cpu.peak(ci), "versions": runtime.runtime_versions(),
            "cpu_features": cpu.features()}


def host_slug(host: dict) -> str:
    """A file-name-safe name for this machine, e.g. x86_64-amd-epyc-9b14 (the default --device name)."""
    name = re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in (host["cpu"] or "cpu").lower())).strip("-")
    return f"{host['arch']}-{name}"[:40]


def fp32_peak(profile: dict | None, host: dict) -> dict:
    """The FP32 peak that % of peak is measured against: that of `host`, the machine the rows run on; the
    profile's only when that machine's clock is unknown and the profile is for its architecture."""
    own = dict(host["peak"])
    if own.get("fp32_gflops_per_core") or not profile or profile.get("arch", host.get("arch")) != host.get("arch"):
        return own
    if profile.get("peak", {}).get("fp32_gflops_per_core"):
        peak = {**profile["peak"], "basis": profile["peak"].get("basis", "device profile")}
        peak.setdefault("fp32_gmacs_per_core", peak["fp32_gflops_per_core"] / 2)
        return peak
    return own

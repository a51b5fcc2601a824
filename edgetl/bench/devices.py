"""Where a bench runs: device profiles (devices/NAME.toml for `--device`), `--threads`, and this machine's
description (CPU, features, FP32 peak, runtime versions)."""

from __future__ import annotations

import math
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
        if not 1 <= t <= MAX_THREADS:
            raise EdgetlError(f"--threads {spec!r}: thread counts must be from 1 to {MAX_THREADS} (got {t})")
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
    except OSError as e:
        raise EdgetlError(f"--device {p}: cannot read it ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgetlError(f"--device {p}: not valid TOML ({e})") from None
    prof.setdefault("name", p.stem)
    bad = profile_errors(prof)
    if bad:
        raise EdgetlError("\n".join(f"--device {p}: {b}" for b in bad))
    prof["file"] = str(p)
    if "threads" in prof:
        prof["threads"] = list(dict.fromkeys(prof["threads"]))
    return prof


DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_THREADS = runtime.MAX_THREADS


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def profile_errors(prof: dict) -> list[str]:
    """One line per field of a device profile that is not what bench reads (empty: a valid profile)."""
    bad = []
    name = prof.get("name")
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        bad.append(f"name = {name!r}: give letters, digits, '.', '_' or '-' (it names the output files; no "
                   "path separators)")
    for key in ("description", "arch", "qemu_cpu"):
        if key in prof and not isinstance(prof[key], str):
            bad.append(f"{key} = {prof[key]!r}: must be a string")
    t = prof.get("threads")
    if t is not None and not (isinstance(t, list) and t and all(isinstance(x, int) and not isinstance(x, bool)
                                                                 and 1 <= x <= MAX_THREADS for x in t)):
        bad.append(f"threads = {t!r}: must be a list of thread counts from 1 to {MAX_THREADS}, e.g. [1, 4]")
    f = prof.get("formats")
    if f is not None:
        if not (isinstance(f, list) and all(isinstance(x, str) for x in f)):
            bad.append(f"formats = {f!r}: must be a list of format names, e.g. [\"tflite-int8\"]")
        elif [x for x in f if x not in FORMATS]:
            bad.append(f"formats: unknown formats {[x for x in f if x not in FORMATS]}; valid: {', '.join(FORMATS)}")
    peak = prof.get("peak")
    if peak is not None:
        if not isinstance(peak, dict):
            bad.append(f"peak = {peak!r}: must be a table ([peak]) of numbers")
        else:
            for k, v in peak.items():
                if k != "basis" and not _number(v):
                    bad.append(f"peak.{k} = {v!r}: must be a positive number")
    ref = prof.get("reference")
    if ref is not None and not (isinstance(ref, list) and all(isinstance(r, dict) for r in ref)):
        bad.append(f"reference = {ref!r}: must be [[reference]] tables")
    return bad


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

"""The arm env (built by `python -m edgetl.bench.emulate setup`, see emulate.py): where it lives, whether
it is usable, and running the aarch64 python in it under user-mode QEMU on one emulated core.

The guest runs `edgetl.bench.worker` from this same source tree, with the aarch64 wheels of the runtimes
at this Python's versions, so host and emulated runs differ only in their CPU kernels. Timing under
emulation says nothing about a device: callers report accuracy and agreement with the host only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from ..core.errors import EdgetlError
from .worker import run_worker

LAYOUT = 1  # bump when the folder layout changes: older envs are then rebuilt
STAMP = "stamp.json"
SETUP_HINT = "run `make arm-env` (or `python -m edgetl.bench.emulate setup`)"
GUEST_PYTHON = "usr/bin/python3.11"
WHEEL_ROOTS = ("numpy", "ai-edge-litert", "onnxruntime", "flatbuffers")
GUEST_IMPORTS = "import numpy, onnxruntime, ai_edge_litert.interpreter, edgetl.bench.worker, edgetl.core.runtime"

# What a Pi's kernel shows in /proc/cpuinfo (Arm's MIDR fields and Linux's feature names); QEMU
# itself gives the guest the core's real HWCAP bits, which is what the kernels dispatch on.
CPUS = {
    "cortex-a53": {"part": "0xd03", "variant": "0x0", "revision": "4", "features": "fp asimd evtstrm crc32 cpuid"},
    "cortex-a72": {"part": "0xd08", "variant": "0x0", "revision": "3", "features": "fp asimd evtstrm crc32 cpuid"},
    "cortex-a76": {"part": "0xd0b", "variant": "0x4", "revision": "1",
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                               "lrcpc dcpop asimddp"},
}


# ---- where the env lives -----------------------------------------------------------------------------
def env_dir() -> Path:
    """$EDGETL_ARM_ENV, else $XDG_CACHE_HOME/edgetl/arm-env, else ~/.cache/edgetl/arm-env.
    Not $EDGETL_CACHE_DIR: tests point that at a throw-away folder, and this env is 100+ MB."""
    if os.environ.get("EDGETL_ARM_ENV"):
        return Path(os.environ["EDGETL_ARM_ENV"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "edgetl" / "arm-env"


def qemu_binary(path: Path) -> Path:
    return path / "qemu" / "qemu-aarch64-static"


def root_of(path: Path, cpu: str) -> Path:
    return path / "roots" / cpu


def wheel_pins() -> dict[str, str]:
    """{distribution: version} of the runtimes and everything they require, as installed in THIS Python.
    Requirement strings are read with two regexes: `packaging` is not an edgetl dependency."""
    from importlib import metadata

    todo, pins = list(WHEEL_ROOTS), {}
    while todo:
        req = todo.pop()
        name = re.match(r"[A-Za-z0-9._-]+", req).group()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in pins or "extra ==" in req or re.search(r"Windows|win32|darwin|Darwin", req.partition(";")[2]):
            continue  # an extra, or a dependency for other systems than the guest's Linux
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if ";" in req:  # a dependency for other Pythons/platforms only
                continue
            raise EdgetlError(f"{name} is not installed in {sys.executable}: the arm env copies this Python's "
                              f"runtime versions (pip install -e . first)") from None
        pins[key] = dist.version
        todo += dist.requires or []
    return dict(sorted(pins.items()))


# ---- is it usable? -----------------------------------------------------------------------------------
def problem(path: Path | None = None, pins: dict | None = None) -> str | None:
    """Why the env at `path` cannot be used (missing, partial, damaged, other versions); None when it can."""
    path = Path(path) if path else env_dir()
    if not path.is_dir():
        return f"no arm env at {path}"
    try:
        stamp = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return f"the arm env at {path} is incomplete (no stamp)"
    if stamp.get("layout") != LAYOUT:
        return f"the arm env at {path} has an older layout"
    pins = wheel_pins() if pins is None else pins
    if stamp.get("pins") != pins:
        diff = [f"{k} {stamp.get('pins', {}).get(k, 'missing')} (here {v})" for k, v in pins.items()
                if stamp.get("pins", {}).get(k) != v]
        return f"the arm env at {path} has other runtime versions: {', '.join(diff) or 'extra packages'}"
    needed = [qemu_binary(path), path / "sysroot" / GUEST_PYTHON]
    needed += [root_of(path, c) / "proc" / "cpuinfo" for c in CPUS]
    needed += [path / "site" / p for p in ("numpy", "onnxruntime", "ai_edge_litert", "flatbuffers")]
    missing = [str(p.relative_to(path)) for p in needed if not p.exists()]
    if missing:
        return f"the arm env at {path} is damaged ({missing[0]} is missing)"
    if not os.access(qemu_binary(path), os.X_OK):
        return f"the arm env at {path} is damaged (qemu is not executable)"
    return None


def require(path: Path | None = None) -> Path:
    """The env's folder, or ONE line saying what is wrong and what to run."""
    path = Path(path) if path else env_dir()
    why = problem(path)
    if why:
        raise EdgetlError(f"--emulate: {why}; {SETUP_HINT}")
    return path


def status(path: Path | None = None) -> dict:
    path = Path(path) if path else env_dir()
    why = problem(path)
    out = {"path": str(path), "ready": why is None, "problem": why}
    if why is None:
        stamp = json.loads((path / STAMP).read_text())
        out.update({k: stamp.get(k) for k in ("built", "python", "qemu", "pins", "download_mb", "signed_indexes")})
    return out



def cpuinfo_text(cpu: str, cores: int = 4) -> str:
    """/proc/cpuinfo as a Pi's kernel writes it for `cores` cores of `cpu`."""
    c = CPUS[cpu]
    one = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
           "CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")
    return "".join(one.format(i=i, **c) for i in range(cores))


# ---- running -----------------------------------------------------------------------------------------
def guest_command(path: Path, cpu: str) -> tuple[list[str], dict]:
    """argv prefix and a clean environment for the emulated python on `cpu` (host variables such as
    LD_LIBRARY_PATH or PYTHONHOME would point the guest at x86 files)."""
    if cpu not in CPUS:
        raise EdgetlError(f"qemu_cpu {cpu!r}: supported cores: {', '.join(CPUS)}")
    root = root_of(path, cpu)
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1",
           "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    return [str(qemu_binary(path)), "-cpu", cpu, "-L", str(root), str(root / GUEST_PYTHON)], env


@contextlib.contextmanager
def guest_with_edgetl(path: Path, cpu: str):
    """guest_command whose PYTHONPATH holds the env's wheels and a folder with only a link to this edgetl
    package: the guest imports the same source, and nothing else from the host's site-packages (x86
    builds) when edgetl is installed there."""
    argv, env = guest_command(path, cpu)
    with tempfile.TemporaryDirectory(prefix="edgetl-src-") as d:
        (Path(d) / "edgetl").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
        env["PYTHONPATH"] = f"{path / 'site'}{os.pathsep}{d}"
        yield argv, env


def smoke_test(path: Path, cpu: str) -> None:
    """The guest imports the runtimes and edgetl's worker on `cpu`, or one line says why not."""
    import subprocess

    with guest_with_edgetl(path, cpu) as (argv, env):
        r = subprocess.run(argv + ["-c", f"{GUEST_IMPORTS}; import platform; print(platform.machine())"],
                           capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 or r.stdout.split()[-1:] != ["aarch64"]:
        tail = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:200]
        raise EdgetlError(f"arm env: the emulated python cannot import the runtimes on {cpu}: {tail}")


def run_job(job: dict, cpu: str, path: Path | None = None, timeout: float = 3600) -> dict:
    """One `edgetl.bench.worker` job (the JSON that worker.run_worker sends) under
    `qemu-aarch64-static -cpu CPU`; returns the worker's result dict, failures as its status."""
    path = require(path)
    with guest_with_edgetl(path, cpu) as (argv, env):
        return run_worker(job, command=argv + ["-m", "edgetl.bench.worker"], env=env, timeout=timeout)

"""A Raspberry Pi's int8 arithmetic without a Pi: bench workers on aarch64 kernels under user-mode QEMU.

`python -m edgetl.bench.emulate setup` (or `make arm-env`) builds one folder, the "arm env":

- qemu/qemu-aarch64-static: Debian's statically linked user-mode QEMU, taken from the amd64 .deb;
- sysroot/: Debian bookworm's arm64 python3.11 and the C libraries it and the wheels load;
- roots/<core>/: a view of sysroot per emulated core with that core's /proc/cpuinfo (`-L` makes QEMU
  open guest paths there first; onnxruntime crashes at import on the host's x86 cpuinfo);
- site/: the aarch64 wheels of numpy, ai-edge-litert, onnxruntime and their dependencies at the
  versions THIS Python has, so host and emulated runs differ only in their CPU kernels;
- stamp.json: versions and sha256 of all of it, written last (no stamp = a partial build).

Debian files come through debian.py (hashes and signatures checked); wheels come through pip. Nothing
is installed system-wide. `python -m edgetl.bench.emulate status` says whether the env is ready;
armenv.py checks and runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from ..core.errors import EdgetlError
from ..core.rundir import temp_dir
from . import debian
from .armenv import (CPUS, LAYOUT, STAMP, cpuinfo_text, env_dir, problem, qemu_binary, root_of, smoke_test,
                     status, wheel_pins)

WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")


# ---- wheels ------------------------------------------------------------------------------------------
def _download_wheels(pins: dict, folder: Path, log, platforms=WHEEL_PLATFORMS, python_version: str = "3.11",
                     what: str = "arm env") -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--dest", str(folder),
           "--python-version", python_version, *[a for p in platforms for a in ("--platform", p)],
           *[f"{k}=={v}" for k, v in pins.items()]]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")] or r.stderr.strip().splitlines()[-1:]
        arch = next((a for a in ("aarch64", "x86_64") if a in platforms[0]), platforms[0])
        raise EdgetlError(f"{what}: pip download of the {arch} wheels failed: {(err or ['no output'])[0][:300]}")
    wheels = sorted(folder.glob("*.whl"))
    for w in wheels:
        log(f"  {w.name} ({w.stat().st_size / 1e6:.1f} MB)")
    return wheels


def _unpack_wheel(wheel: Path, site: Path) -> None:
    """A wheel is a zip of its site-packages files; `<name>.data/{purelib,platlib}` also go to site."""
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    for data in site.glob("*.data"):
        for sub in ("purelib", "platlib"):
            if (data / sub).is_dir():
                shutil.copytree(data / sub, site, dirs_exist_ok=True)
        shutil.rmtree(data)


# ---- building ----------------------------------------------------------------------------------------
def _make_roots(path: Path) -> None:
    """roots/<cpu>/: relative links to every top-level sysroot entry plus that core's proc/cpuinfo."""
    for cpu in CPUS:
        root = root_of(path, cpu)
        (root / "proc").mkdir(parents=True)
        for entry in (path / "sysroot").iterdir():
            if entry.name != "proc":
                (root / entry.name).symlink_to(os.path.relpath(entry, root))
        (root / "proc" / "cpuinfo").write_text(cpuinfo_text(cpu))


def _build(tmp: Path, pins: dict, log) -> dict:
    t0 = time.perf_counter()
    log("Debian package indexes")
    debs, signed, index_bytes = debian.resolve_debs(log)
    (tmp / "debs").mkdir()
    log("Debian packages (arm64 python3.11 sysroot, amd64 qemu-user-static)")
    files = {n: debian.download_deb(st, tmp / "debs", log) for n, st in debs.items()}
    for n in debian.ARM_PACKAGES:
        debian.extract(debian.deb_data(files[n]), tmp / "sysroot")
    debian.relative_links(tmp / "sysroot")
    with debian.deb_data(files[debian.QEMU_PACKAGE]) as tar:
        member = next((m for m in tar if m.name.lstrip("./") == debian.QEMU_MEMBER), None)
        if member is None:
            raise EdgetlError(f"arm env: {debian.QEMU_PACKAGE} has no {debian.QEMU_MEMBER}")
        debian.extract(tar, tmp / "qemu-deb", [member])
    (tmp / "qemu").mkdir()
    os.replace(tmp / "qemu-deb" / debian.QEMU_MEMBER, qemu_binary(tmp))
    qemu_binary(tmp).chmod(0o755)
    _make_roots(tmp)
    log("aarch64 wheels (pip download, pinned to this Python's versions)")
    wheels = _download_wheels(pins, tmp / "wheels", log)
    for w in wheels:
        _unpack_wheel(w, tmp / "site")
    log("byte-compiling the guest's Python files on the host (QEMU would do it 10x slower)")
    _compile(tmp / "site", tmp / "sysroot" / "usr" / "lib" / "python3.11")
    size = index_bytes + sum(p.stat().st_size for p in (*files.values(), *wheels))
    stamp = {"layout": LAYOUT, "built": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
             "pins": pins, "python": debs["python3.11-minimal"]["version"],
             "qemu": debs[debian.QEMU_PACKAGE]["version"], "signed_indexes": signed,
             "debs": {n: {k: st[k] for k in ("version", "sha256", "suite")} for n, st in debs.items()},
             "wheels": {w.name: debian.sha256(w.read_bytes()) for w in wheels},
             "download_mb": round(size / 1e6, 1)}
    shutil.rmtree(tmp / "debs")
    shutil.rmtree(tmp / "qemu-deb")
    shutil.rmtree(tmp / "wheels")
    log("checking the emulated imports on every core")
    for cpu in CPUS:
        smoke_test(tmp, cpu)
    stamp["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp / STAMP).write_text(json.dumps(stamp, indent=1, sort_keys=True))
    return stamp


def _compile(*folders: Path) -> None:
    """The pyc format is the same on every 3.11.x and every CPU: the host's 3.11 compiles for the guest."""
    import compileall

    for d in folders:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            compileall.compile_dir(str(d), quiet=2, workers=0)


def setup(path: Path | None = None, force: bool = False, log=print) -> Path:
    """Build the env at `path` unless a complete one with this Python's versions is there already.
    Built in a temporary sibling folder and renamed into place at the end; one build at a time."""
    path = Path(path) if path else env_dir()
    pins = wheel_pins()
    if not force and problem(path, pins) is None:
        log(f"arm env ready at {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        why = problem(path, pins)
        if not force and why is None:  # another process built it while we waited
            return path
        log(f"building the arm env at {path} ({why or 'forced'})")
        for stale in path.parent.glob(f".{path.name}.*-*"):  # left by an interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = temp_dir(path.parent, f".{path.name}.tmp-")  # the mode mkdir gives: other users can run it
        try:
            stamp = _build(tmp, pins, log)
            _swap(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"arm env ready at {path}: {stamp['download_mb']} MB downloaded in {stamp['seconds']} s")
    return path


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    with open(path.parent / f".{path.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _swap(new: Path, path: Path) -> None:
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        os.rename(path, old)
    os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)


# ---- command line: python -m edgetl.bench.emulate setup|status -------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgetl.bench.emulate",
                                 description="aarch64 runtimes under QEMU for `edgetl bench --emulate`")
    ap.add_argument("command", choices=["setup", "status"])
    ap.add_argument("--path", type=Path, default=None, help=f"env folder (default {env_dir()})")
    ap.add_argument("--force", action="store_true", help="rebuild even when the env is complete")
    a = ap.parse_args(argv)
    try:
        if a.command == "setup":
            setup(a.path, force=a.force, log=lambda s: print(s, flush=True))
            return 0
        st = status(a.path)
        print(json.dumps(st, indent=1))
        return 0 if st["ready"] else 1
    except EdgetlError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: the env was left as it was", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A Raspberry Pi's int8 arithmetic without a Pi: bench workers on aarch64 kernels under user-mode QEMU.

`python -m edgetl.bench.emulate setup` (or `make arm-env`) builds one folder, the "arm env":

- qemu/qemu-aarch64-static: Debian's statically linked user-mode QEMU, taken from the amd64 .deb;
- sysroot/: Debian bookworm's arm64 python3.11 and the C libraries it and the wheels load;
- roots/<core>/: a view of sysroot per emulated core with that core's /proc/cpuinfo (`-L` makes QEMU
  open guest paths there first; onnxruntime crashes at import on the host's x86 cpuinfo);
- site/: the aarch64 wheels of numpy, ai-edge-litert, onnxruntime and their dependencies at the
  versions THIS Python has, so host and emulated runs differ only in their CPU kernels;
- stamp.json: versions and sha256 of all of it, written last (no stamp = a partial build).

Debian files are checked against the SHA256 in the Packages index, whose own hash comes from the
suite's InRelease (signature checked with gpgv and Debian's keyring when both are on the machine);
wheels come through pip. Nothing is installed system-wide. The emulated python runs
`edgetl.bench.worker` from this same source tree. Timing under emulation says nothing about a device:
callers report accuracy and agreement with the host only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from functools import cmp_to_key
from pathlib import Path

from ..core.errors import EdgetlError

LAYOUT = 1  # bump when the folder layout changes: older envs are then rebuilt
STAMP = "stamp.json"
SETUP_HINT = "run `make arm-env` (or `python -m edgetl.bench.emulate setup`)"

DEBIAN_URL = "http://deb.debian.org"  # $EDGETL_DEBIAN_URL overrides it (a local mirror)
SUITES = (("debian", "bookworm"), ("debian", "bookworm-updates"), ("debian-security", "bookworm-security"))
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
QEMU_PACKAGE, QEMU_MEMBER = "qemu-user-static", "usr/bin/qemu-aarch64-static"
# python3.11 and every shared library that it, numpy, ai-edge-litert and onnxruntime load
ARM_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1",
                "zlib1g", "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libstdc++6", "libgcc-s1",
                "libcrypt1", "libuuid1", "libncursesw6", "libtinfo6", "libgomp1", "libatomic1", "media-types")
GUEST_PYTHON = "usr/bin/python3.11"
RETRY_PAUSE_S = 2.0  # pause before a download's second try (doubled for the third)
WHEEL_ROOTS = ("numpy", "ai-edge-litert", "onnxruntime", "flatbuffers")
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")
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
    """{distribution: version} of the runtimes and everything they require, as installed in THIS Python."""
    from importlib import metadata

    todo, pins = list(WHEEL_ROOTS), {}
    while todo:
        req = todo.pop()
        name = re.match(r"[A-Za-z0-9._-]+", req).group()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in pins or "extra ==" in req:
            continue
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


# ---- Debian archive ----------------------------------------------------------------------------------
def compare_versions(a: str, b: str) -> int:
    """Debian version order (dpkg's rules: epoch, then upstream and revision compared as alternating
    non-digit/digit runs, '~' before anything). Hand-written: the stdlib has no dpkg comparison."""
    def split(v: str):
        epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch or 0), upstream, revision

    def runs(s: str):
        return [(m.group(1), int(m.group(2) or 0)) for m in re.finditer(r"(\D*)(\d*)", s) if m.group(0)]

    def letters(s: str):
        return [-1 if c == "~" else ord(c) if c.isalpha() else ord(c) + 256 for c in s] + [0]

    def cmp_part(x: str, y: str) -> int:
        rx, ry = runs(x), runs(y)
        n = max(len(rx), len(ry))
        for (sx, nx), (sy, ny) in zip(rx + [("", 0)] * (n - len(rx)), ry + [("", 0)] * (n - len(ry))):
            lx, ly = letters(sx), letters(sy)
            if lx != ly:
                return -1 if lx < ly else 1
            if nx != ny:
                return -1 if nx < ny else 1
        return 0

    (ea, ua, ra), (eb, ub, rb) = split(a), split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return cmp_part(ua, ub) or cmp_part(ra, rb)


def _fetch(url: str, what: str, attempts: int = 3) -> bytes:
    for i in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                return r.read()
        except urllib.error.HTTPError as e:  # 404 & co: retrying does not help
            raise EdgetlError(f"arm env: downloading {what} failed: {url}: HTTP {e.code}") from None
        except (OSError, urllib.error.URLError) as e:
            if i == attempts - 1:
                reason = getattr(e, "reason", None) or e
                raise EdgetlError(f"arm env: downloading {what} failed: {url}: {reason}") from None
            time.sleep(RETRY_PAUSE_S * (i + 1))
    raise AssertionError("unreachable")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _release_hashes(base: str, suite: str, log) -> tuple[dict, bool]:
    """{path in dists/SUITE/: sha256} from the suite's InRelease, and whether its signature was checked."""
    raw = _fetch(f"{base}/dists/{suite}/InRelease", f"the {suite} release file")
    signed = KEYRING.is_file() and shutil.which("gpgv") is not None
    if signed:
        with tempfile.NamedTemporaryFile(suffix=".InRelease") as f:
            f.write(raw)
            f.flush()
            r = subprocess.run(["gpgv", "--keyring", str(KEYRING), f.name], capture_output=True, text=True)
        if r.returncode != 0:
            raise EdgetlError(f"arm env: the signature of {base}/dists/{suite}/InRelease does not verify "
                              f"against {KEYRING}")
    hashes, in_sha = {}, False
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith(" "):
            in_sha = line.startswith("SHA256:")
        elif in_sha and len(line.split()) == 3:
            digest, _, name = line.split()
            hashes[name] = digest
    return hashes, signed


def _packages(base: str, suite: str, arch: str, hashes: dict, want: set[str]) -> tuple[dict[str, dict], int]:
    """The stanzas of the wanted packages in one suite's Packages index (checked against InRelease),
    and the index's download size."""
    key = f"main/binary-{arch}/Packages.xz"
    url = f"{base}/dists/{suite}/{key}"
    data = _fetch(url, f"the {suite} {arch} package index")
    if key not in hashes or _sha256(data) != hashes[key]:
        raise EdgetlError(f"arm env: {url} does not match the SHA256 in its InRelease")
    out = {}
    for stanza in lzma.decompress(data).decode("utf-8", "replace").split("\n\n"):
        name = stanza[9:stanza.find("\n")] if stanza.startswith("Package: ") else None
        if name not in want:
            continue
        f = dict(line.split(": ", 1) for line in stanza.splitlines() if line[:1] not in (" ", "") and ": " in line)
        out[name] = {"name": name, "version": f["Version"], "sha256": f["SHA256"], "size": int(f["Size"]),
                     "url": f"{base}/{f['Filename']}", "suite": suite}
    return out, len(data)


def resolve_debs(log) -> tuple[dict[str, dict], bool, int]:
    """{package: newest stanza across bookworm, -updates and -security} (arm64 libs + the amd64 QEMU),
    whether every index's signature was checked, and the bytes of index downloaded."""
    root = os.environ.get("EDGETL_DEBIAN_URL", DEBIAN_URL).rstrip("/")
    found: dict[str, list[dict]] = {}
    all_signed, nbytes = True, 0
    for archive, suite in SUITES:
        base = f"{root}/{archive}"
        hashes, signed = _release_hashes(base, suite, log)
        all_signed &= signed
        for arch, want in (("arm64", set(ARM_PACKAGES)), ("amd64", {QEMU_PACKAGE})):
            stanzas, n = _packages(base, suite, arch, hashes, want)
            nbytes += n
            for name, st in stanzas.items():
                found.setdefault(name, []).append(st)
        log(f"  index {suite}: " + ("signature and hashes checked" if signed else
                                    f"hashes checked; signature NOT checked (needs gpgv and {KEYRING})"))
    missing = [n for n in (*ARM_PACKAGES, QEMU_PACKAGE) if n not in found]
    if missing:
        raise EdgetlError(f"arm env: Debian bookworm has no {', '.join(missing)} in its indexes")
    newest = cmp_to_key(lambda a, b: compare_versions(a["version"], b["version"]))
    return {n: max(c, key=newest) for n, c in found.items()}, all_signed, nbytes


def _download_deb(st: dict, folder: Path, log) -> Path:
    data = _fetch(st["url"], f"{st['name']} {st['version']}")
    if _sha256(data) != st["sha256"]:
        raise EdgetlError(f"arm env: {st['url']} does not match the SHA256 in its package index")
    out = folder / Path(st["url"]).name
    out.write_bytes(data)
    log(f"  {st['name']} {st['version']} ({len(data) / 1e6:.1f} MB)")
    return out


def _deb_data(deb: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb. A .deb is an `ar` archive (8-byte magic, then 60-byte member
    headers); hand-read because the stdlib has no ar reader."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise EdgetlError(f"arm env: {deb.name} is not a Debian package")
        while len(hdr := f.read(60)) == 60:
            name, size = hdr[:16].decode().strip().rstrip("/"), int(hdr[48:58])
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(f.read(size)), mode="r:*")
            f.seek(size + size % 2, 1)
    raise EdgetlError(f"arm env: {deb.name} has no data.tar member")


def _extract(tar: tarfile.TarFile, dest: Path, members=None) -> None:
    kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}  # the filter exists from 3.11.4 on
    tar.extractall(dest, members=members, **kw)


def _relative_links(root: Path) -> None:
    """Absolute symlinks inside the sysroot point into the HOST's /: make them relative to the sysroot,
    because the host kernel (not QEMU) follows them."""
    for p in root.rglob("*"):
        if p.is_symlink() and os.readlink(p).startswith("/"):
            target = root / os.readlink(p).lstrip("/")
            p.unlink()
            p.symlink_to(os.path.relpath(target, p.parent))


# ---- wheels ------------------------------------------------------------------------------------------
def _download_wheels(pins: dict, folder: Path, log) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--dest", str(folder),
           "--python-version", "3.11", *[a for p in WHEEL_PLATFORMS for a in ("--platform", p)],
           *[f"{k}=={v}" for k, v in pins.items()]]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")] or r.stderr.strip().splitlines()[-1:]
        raise EdgetlError(f"arm env: pip download of the aarch64 wheels failed: {(err or ['no output'])[0][:300]}")
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
def cpuinfo_text(cpu: str, cores: int = 4) -> str:
    c = CPUS[cpu]
    one = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
           "CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")
    return "".join(one.format(i=i, **c) for i in range(cores))


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
    debs, signed, index_bytes = resolve_debs(log)
    (tmp / "debs").mkdir()
    log("Debian packages (arm64 python3.11 sysroot, amd64 qemu-user-static)")
    files = {n: _download_deb(st, tmp / "debs", log) for n, st in debs.items()}
    for n in ARM_PACKAGES:
        _extract(_deb_data(files[n]), tmp / "sysroot")
    _relative_links(tmp / "sysroot")
    with _deb_data(files[QEMU_PACKAGE]) as tar:
        member = next((m for m in tar if m.name.lstrip("./") == QEMU_MEMBER), None)
        if member is None:
            raise EdgetlError(f"arm env: {QEMU_PACKAGE} has no {QEMU_MEMBER}")
        _extract(tar, tmp / "qemu-deb", [member])
    (tmp / "qemu").mkdir()
    os.replace(tmp / "qemu-deb" / QEMU_MEMBER, qemu_binary(tmp))
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
             "qemu": debs[QEMU_PACKAGE]["version"], "signed_indexes": signed,
             "debs": {n: {k: st[k] for k in ("version", "sha256", "suite")} for n, st in debs.items()},
             "wheels": {w.name: _sha256(w.read_bytes()) for w in wheels},
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


def smoke_test(path: Path, cpu: str) -> None:
    argv, env = guest_command(path, cpu)
    with _edgetl_source() as src:
        env["PYTHONPATH"] = f"{path / 'site'}{os.pathsep}{src}"
        r = subprocess.run(argv + ["-c", f"{GUEST_IMPORTS}; import platform; print(platform.machine())"],
                           capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 or r.stdout.split()[-1:] != ["aarch64"]:
        tail = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:200]
        raise EdgetlError(f"arm env: the emulated python cannot import the runtimes on {cpu}: {tail}")


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
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
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
def _edgetl_source():
    """A folder holding only a link to this edgetl package: the guest imports the same source, and
    nothing else from the host's site-packages (x86 builds) when edgetl is installed there."""
    with tempfile.TemporaryDirectory(prefix="edgetl-src-") as d:
        (Path(d) / "edgetl").symlink_to(Path(__file__).resolve().parent, target_is_directory=True)
        yield d


def run_job(job: dict, cpu: str, path: Path | None = None, timeout: float = 3600) -> dict:
    """One `edgetl.bench.worker` job (the JSON that edgetl.bench.stage.run_worker sends) under
    `qemu-aarch64-static -cpu CPU`; returns the worker's result dict, failures as its status."""
    from .stage import run_worker

    path = require(path)
    argv, env = guest_command(path, cpu)
    with _edgetl_source() as src:
        env["PYTHONPATH"] = f"{path / 'site'}{os.pathsep}{src}"
        return run_worker(job, command=argv + ["-m", "edgetl.bench.worker"], env=env, timeout=timeout)


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

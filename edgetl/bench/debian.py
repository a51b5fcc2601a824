"""Debian bookworm's packages for the arm env, without apt and without touching the system: the newest
stanza of each wanted package across bookworm, -updates and -security, every file checked against the
SHA256 in its Packages index, whose own hash comes from the suite's InRelease (signature checked with
gpgv and Debian's keyring when both are on the machine); .deb files unpacked with the stdlib."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from functools import cmp_to_key
from pathlib import Path

from ..core.errors import EdgetlError

DEBIAN_URL = "http://deb.debian.org"  # $EDGETL_DEBIAN_URL overrides it (a local mirror)
SUITES = (("debian", "bookworm"), ("debian", "bookworm-updates"), ("debian-security", "bookworm-security"))
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
QEMU_PACKAGE, QEMU_MEMBER = "qemu-user-static", "usr/bin/qemu-aarch64-static"
# python3.11 and every shared library that it, numpy, ai-edge-litert and onnxruntime load
ARM_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1",
                "zlib1g", "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libstdc++6", "libgcc-s1",
                "libcrypt1", "libuuid1", "libncursesw6", "libtinfo6", "libgomp1", "libatomic1", "media-types")
RETRY_PAUSE_S = 2.0  # pause before a download's second try (doubled for the third)


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


def sha256(data: bytes) -> str:
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
    if key not in hashes or sha256(data) != hashes[key]:
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


def resolve_debs(log, wanted: dict[str, tuple] | None = None) -> tuple[dict[str, dict], bool, int]:
    """{package: newest stanza across bookworm, -updates and -security} of `wanted` ({Debian arch:
    package names}; default: the arm env's arm64 libs + the amd64 QEMU), whether every index's signature
    was checked, and the bytes of index downloaded."""
    wanted = wanted or {"arm64": ARM_PACKAGES, "amd64": (QEMU_PACKAGE,)}
    root = os.environ.get("EDGETL_DEBIAN_URL", DEBIAN_URL).rstrip("/")
    found: dict[str, list[dict]] = {}
    all_signed, nbytes = True, 0
    for archive, suite in SUITES:
        base = f"{root}/{archive}"
        hashes, signed = _release_hashes(base, suite, log)
        all_signed &= signed
        for arch, want in wanted.items():
            stanzas, n = _packages(base, suite, arch, hashes, set(want))
            nbytes += n
            for name, st in stanzas.items():
                found.setdefault(name, []).append(st)
        log(f"  index {suite}: " + ("signature and hashes checked" if signed else
                                    f"hashes checked; signature NOT checked (needs gpgv and {KEYRING})"))
    missing = [n for want in wanted.values() for n in want if n not in found]
    if missing:
        raise EdgetlError(f"arm env: Debian bookworm has no {', '.join(missing)} in its indexes")
    newest = cmp_to_key(lambda a, b: compare_versions(a["version"], b["version"]))
    return {n: max(c, key=newest) for n, c in found.items()}, all_signed, nbytes


def download_deb(st: dict, folder: Path, log) -> Path:
    data = _fetch(st["url"], f"{st['name']} {st['version']}")
    if sha256(data) != st["sha256"]:
        raise EdgetlError(f"arm env: {st['url']} does not match the SHA256 in its package index")
    out = folder / Path(st["url"]).name
    out.write_bytes(data)
    log(f"  {st['name']} {st['version']} ({len(data) / 1e6:.1f} MB)")
    return out


def deb_data(deb: Path) -> tarfile.TarFile:
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


def extract(tar: tarfile.TarFile, dest: Path, members=None) -> None:
    kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}  # the filter exists from 3.11.4 on
    tar.extractall(dest, members=members, **kw)


def relative_links(root: Path) -> None:
    """Absolute symlinks inside the sysroot point into the HOST's /: make them relative to the sysroot,
    because the host kernel (not QEMU) follows them."""
    for p in root.rglob("*"):
        if p.is_symlink() and os.readlink(p).startswith("/"):
            target = root / os.readlink(p).lstrip("/")
            p.unlink()
            p.symlink_to(os.path.relpath(target, p.parent))


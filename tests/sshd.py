"""OpenSSH's sshd as a throw-away server on 127.0.0.1 for `edgetl bench --remote` tests: its own host key,
one authorized key, a free port, never any address but the loopback.

sshd is the system's (/usr/sbin/sshd) when installed; otherwise Debian bookworm's openssh-server (and
libwrap0, which it loads) is fetched and unpacked like the arm env (edgetl.bench.debian: hashes and
signatures checked, nothing installed system-wide) into $EDGETL_TEST_SSHD, else
~/.cache/edgetl/test-sshd, once. The same goes for the client when `ssh` is missing.

As an ordinary user sshd runs as that user and accepts only that user. As root, sshd insists on its
privilege-separation user and /run/sshd: it runs in its own mount namespace (`unshare --mount`) where a
copy of /etc/passwd names that user and /run is an empty tmpfs, so the system is left untouched.
Remote commands get XDG_CACHE_HOME from the client (AcceptEnv), so each test has its own remote cache.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

SERVER_PACKAGES = ("openssh-server", "libwrap0")
CLIENT_PACKAGES = ("openssh-client", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0",
                   "libkeyutils1", "libcom-err2")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def cache_dir() -> Path:
    if os.environ.get("EDGETL_TEST_SSHD"):
        return Path(os.environ["EDGETL_TEST_SSHD"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgetl" / "test-sshd"


def _lib_dirs(root: Path) -> list[str]:
    return [str(d) for d in (root / "usr" / "lib", root / "lib") for d in sorted(d.glob("*-linux-gnu"))]


def unpacked_openssh() -> Path:
    """The folder with Debian's OpenSSH unpacked (fetched once; a file lock serialises test workers)."""
    from edgetl.bench import debian

    root = cache_dir()
    stamp = root / "stamp.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".test-sshd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file():
            return root
        arch = DEB_ARCH.get(platform.machine())
        if arch is None:
            raise RuntimeError(f"no Debian architecture known for {platform.machine()}")
        wanted = SERVER_PACKAGES + (CLIENT_PACKAGES if shutil.which("ssh") is None else ())
        debs, _, _ = debian.resolve_debs(lambda s: None, {arch: wanted})
        tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "debs").mkdir(parents=True)
        for name, st in debs.items():
            debian.extract(debian.deb_data(debian.download_deb(st, tmp / "debs", lambda s: None)), tmp / "root")
        shutil.rmtree(tmp / "debs")
        (tmp / "stamp.json").write_text(json.dumps({n: st["version"] for n, st in debs.items()}))
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
        return root


def binaries() -> tuple[str, str, dict]:
    """(sshd, the client's bin folder, environment for sshd)."""
    system = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)
    client_bin = str(Path(shutil.which("ssh")).parent) if shutil.which("ssh") else None
    if system and client_bin:
        return system, client_bin, {}
    root = unpacked_openssh() / "root"
    env = {"LD_LIBRARY_PATH": os.pathsep.join(_lib_dirs(root))}
    return system or str(root / "usr" / "sbin" / "sshd"), client_bin or str(root / "usr" / "bin"), env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """A running sshd on 127.0.0.1 (start() / stop()); `options` are the --ssh-option values to reach it."""

    def __init__(self, folder: Path, cpuinfo: str | None = None):
        self.dir = folder
        self.cpuinfo = cpuinfo  # as root: the /proc/cpuinfo the server's sessions read (e.g. a Pi's)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.small_disk: Path | None = None  # a 1 MB file system the server sees (as root only)

    def start(self) -> "Sshd":
        sshd, client_bin, env = binaries()
        self.client_bin = client_bin
        keygen = str(Path(client_bin) / "ssh-keygen")
        d = self.dir
        for key in ("host", "client"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"edgetl-test-{key}", "-f", str(d / key)],
                           check=True, env={**os.environ, **env})
        shutil.copy(d / "client.pub", d / "authorized_keys")
        for attempt in range(5):
            self.port = free_port()
            (d / "sshd_config").write_text("\n".join([
                f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}", f"PidFile {d / 'sshd.pid'}", "UsePAM no",
                "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password", "AcceptEnv XDG_CACHE_HOME PIP_*", "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp", ""]))
            argv = [sshd, "-D", "-e", "-f", str(d / "sshd_config")]
            if os.geteuid() == 0:
                argv = self._as_root(argv)
            log = open(d / "sshd.log", "w")
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                         start_new_session=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                if "Server listening" in (d / "sshd.log").read_text(errors="replace"):
                    break
                time.sleep(0.05)
            if self.proc.poll() is None and "Server listening" in (d / "sshd.log").read_text(errors="replace"):
                break
            self.stop()
            if "Address already in use" not in (d / "sshd.log").read_text(errors="replace"):
                raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text()[-800:]}")
        host_pub = (d / "host.pub").read_text().split()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        return self

    def _as_root(self, argv: list[str]) -> list[str]:
        """sshd as root wants the `sshd` user and /run/sshd: both exist only in its own mount namespace."""
        passwd = self.dir / "passwd"
        lines = Path("/etc/passwd").read_text().splitlines()
        if not any(ln.startswith("sshd:") for ln in lines):
            lines.append("sshd:x:64999:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin")
        passwd.write_text("\n".join(lines) + "\n")
        small = self.dir / "small-disk"
        small.mkdir(exist_ok=True)
        script = (f"mount --bind {passwd} /etc/passwd && mount -t tmpfs -o mode=755 edgetl-test /run && "
                  f"mkdir -m 755 /run/sshd && mount -t tmpfs -o size=1m edgetl-test-small {small} && ")
        if self.cpuinfo is not None:
            (self.dir / "cpuinfo").write_text(self.cpuinfo)
            script += f"mount --bind {self.dir / 'cpuinfo'} /proc/cpuinfo && "
        script += 'exec "$@"'
        self.small_disk = small
        return ["unshare", "--mount", "sh", "-c", script, "sh", *argv]

    def options(self, cache: Path, env: dict | None = None) -> list[str]:
        """--ssh-option values: this server's key and host key only, the remote cache folder `cache` and
        `env` (PIP_* variables) for the remote commands (ssh takes one SetEnv: the first)."""
        env = {"XDG_CACHE_HOME": str(cache), **(env or {})}
        return [f"IdentityFile={self.dir / 'client'}", "IdentitiesOnly=yes",
                f"UserKnownHostsFile={self.dir / 'known_hosts'}", "StrictHostKeyChecking=yes",
                "SetEnv=" + " ".join(f"{k}={v}" for k, v in env.items()), "LogLevel=ERROR"]

    @property
    def address(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # its own session: the listener and any connection it forked
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

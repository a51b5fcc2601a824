"""The system's `ssh`, driven for `edgetl bench --remote`: the user's ~/.ssh/config, agent, keys and
ProxyJump apply as they are. BatchMode (never a password prompt that hangs), one shared connection per
bench (ControlMaster, closed at the end), and every ssh failure turned into one line naming the cause and
the fix."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import EdgetlError

CONNECT_TIMEOUT_S = 15


@dataclass(frozen=True)
class Target:
    user: str | None
    host: str
    port: int | None

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


def parse_target(spec: str) -> Target:
    """`[ssh://][user@]host[:port]` (IPv6 hosts in brackets), or one line naming --remote."""
    m = re.fullmatch(r"(?:ssh://)?(?:([^@/\s:]+)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d+))?/?", spec.strip())
    if not m:
        raise EdgetlError(f"--remote {spec!r}: give [ssh://][user@]host[:port], e.g. pi@raspberrypi.local or "
                          "ssh://pi@192.168.1.20:2222")
    user, host, port = m.group(1), m.group(2).strip("[]"), m.group(3)
    if port is not None and not 0 < int(port) < 65536:
        raise EdgetlError(f"--remote {spec!r}: port {port} is not between 1 and 65535")
    return Target(user, host, int(port) if port else None)


def parse_options(options: list[str] | None) -> list[str]:
    """`--ssh-option KEY=VALUE` -> ["-o", "KEY=VALUE", ...]."""
    out = []
    for o in options or []:
        key, eq, value = o.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()) or not value.strip():
            raise EdgetlError(f"--ssh-option {o!r}: give KEY=VALUE as in ssh_config, e.g. IdentityFile=~/.ssh/pi "
                              "or ProxyJump=gateway")
        out += ["-o", f"{key.strip()}={value.strip()}"]
    return out


def explain(target: Target, stderr: str) -> str:
    """One line for an ssh failure (exit 255): the cause, and what to do about it."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently")]
    last = lines[-1] if lines else "no message"
    text = " ".join(lines)
    port = f"-p {target.port} " if target.port else ""
    where = f"--remote {target}"
    if "Could not resolve hostname" in text:
        return f"{where}: cannot resolve host {target.host!r}: check the name (or its Host entry in ~/.ssh/config)"
    if "Connection refused" in text:
        return (f"{where}: connection refused by {target.host}:{target.port or 22}: is sshd running there and "
                "is the port right?")
    if re.search(r"timed out|No route to host|Network is unreachable|Host is unreachable", text):
        return f"{where}: host unreachable ({last}): check that the device is on and on your network"
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (f"{where}: its host key is unknown or changed: connect once with `ssh {port}{target.dest}` "
                "to check and accept it")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return (f"{where}: authentication refused ({last}; no password prompt: BatchMode): install your key "
                f"with `ssh-copy-id {port}{target.dest}` or pass --ssh-option IdentityFile=KEY")
    return f"{where}: ssh failed: {last}"


class Connection:
    """`ssh` to one target, every call multiplexed over one master connection (closed by close())."""

    def __init__(self, target: Target, options: list[str] | None = None, ssh: str = "ssh"):
        if shutil.which(ssh) is None:
            raise EdgetlError("--remote: no `ssh` command on this machine: install OpenSSH's client "
                              "(e.g. apt install openssh-client)")
        self.target = target
        self._dir = Path(tempfile.mkdtemp(prefix="edgetl-ssh-"))
        # ssh keeps the first value it is given: the user's options come before edgetl's defaults
        self.argv = [ssh, "-o", "BatchMode=yes", *(options or []), "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                     "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                     "-o", "ControlMaster=auto", "-o", f"ControlPath={self._dir}/master", "-o", "ControlPersist=300",
                     *(["-p", str(target.port)] if target.port else []), "--", target.dest]

    def command(self, remote_cmd: str) -> list[str]:
        """The local argv that runs `remote_cmd` (one shell command line) on the target."""
        return [*self.argv, remote_cmd]

    def run(self, remote_cmd: str, input: bytes | None = None, timeout: float = 120, stderr_line=None,
            stdin=None, lifeline: bool = False) -> subprocess.CompletedProcess:
        """Run and wait; ssh's own failures (exit 255) raise one line. stderr_line(str) sees the remote's
        stderr line by line as it comes (progress), else stderr is collected. lifeline: the remote command's
        stdin is a pipe this process holds open until the call returns, so the remote sees its end when this
        process ends in any way (done, interrupted, killed) or the connection drops."""
        keep = None
        if lifeline:
            stdin, keep = os.pipe()  # (both ends close-on-exec: only ssh gets the read end, as its stdin)
        try:
            proc = subprocess.Popen(self.command(remote_cmd), stdin=subprocess.PIPE if input is not None else stdin,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            if keep is not None:
                os.close(keep)
            raise EdgetlError(f"--remote {self.target}: cannot start ssh: {e}") from None
        finally:
            if keep is not None:
                os.close(stdin)
        try:
            if stderr_line is None:
                out, err = proc.communicate(input, timeout=timeout)
            else:
                out, err = self._stream(proc, input, timeout, stderr_line)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise EdgetlError(f"--remote {self.target}: no answer within {timeout:.0f} s: check the connection, "
                              "or raise --remote-timeout") from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if keep is not None:
                os.close(keep)
        err_text = err if isinstance(err, str) else err.decode(errors="replace")
        if proc.returncode == 255:
            raise EdgetlError(explain(self.target, err_text))
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err_text)

    @staticmethod
    def _stream(proc, input, timeout, stderr_line):
        import threading

        out: list[bytes] = []
        err: list[str] = []

        def pump_out():
            out.append(proc.stdout.read())

        def feed():
            if input is not None:
                try:
                    proc.stdin.write(input)
                except OSError:
                    pass
            if proc.stdin:
                proc.stdin.close()

        threads = [threading.Thread(target=pump_out, daemon=True), threading.Thread(target=feed, daemon=True)]
        for t in threads:
            t.start()
        fired: list[bool] = []

        def expire():
            fired.append(True)
            proc.kill()

        watchdog = threading.Timer(timeout, expire)  # the stderr loop below blocks: a timer ends it
        watchdog.start()
        try:
            for raw in proc.stderr:
                line = raw.decode(errors="replace")
                err.append(line)
                stderr_line(line.rstrip())
            proc.wait()
        finally:
            watchdog.cancel()
        if fired:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        for t in threads:
            t.join(timeout)
        return b"".join(out), "".join(err)

    def close(self) -> None:
        """Stop the master connection and remove its socket folder."""
        if (self._dir / "master").exists():
            subprocess.run([*self.argv[:-2], "-O", "exit", "--", self.target.dest], capture_output=True, timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)


def quote_path(path: str) -> str:
    """A remote path for the remote shell: `~/x` keeps its home expansion, everything else is quoted."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)

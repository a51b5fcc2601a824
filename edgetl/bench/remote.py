"""`edgetl bench --remote`: the rows measured on another machine over ssh, the table and files here.

This machine does everything but the timing: it reads the targets, checks their sha256 and decodes the
eval images once (so both ends score the same pixels). The remote gets, content-addressed in
~/.cache/edgetl/remote (agent.py): edgetl's own wheel (pure Python, built here), the artifact files, the
decoded eval arrays and, with --wheelhouse, wheels; a second bench of the same files copies nothing.
It runs each row as `python -m edgetl.bench.worker` in a light venv there (numpy and the runtimes at this
machine's versions, no TensorFlow) or in --remote-python. The remote's device profile comes from its
/proc/cpuinfo (Cortex-A72 -> rpi4, A76 -> rpi5) unless --device names one.

`python -m edgetl.bench.remote wheelhouse DIR` fills DIR with the aarch64 wheels that venv needs, for a
device without a package index (`--wheelhouse DIR`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shlex
import tarfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..core.errors import EdgetlError
from . import agent
from .ssh import Connection, Target, parse_options, parse_target, quote_path
from .worker import RESULT_TAG as WORKER_TAG

MIN_PYTHON = (3, 9)
SETUP_TIMEOUT_S = 1800  # making the venv on a Pi (pip installs numpy and the runtimes)
MARGIN_BYTES = 20_000_000  # left free on the remote's disk after the copy
PYTHON_HINT = "install Python >= 3.9 there (e.g. `sudo apt install python3-venv`) or pass --remote-python PATH"


@dataclass
class RemoteOptions:
    """The checked --remote options."""
    target: Target
    ssh_options: list[str]
    python: str | None
    wheelhouse: Path | None
    timeout: float


def check_options(remote: str, ssh_options: list[str] | None, python: str | None, wheelhouse: str | None,
                  timeout: float) -> RemoteOptions:
    target = parse_target(remote)
    opts = parse_options(ssh_options)
    if python is not None and not python.strip():
        raise EdgetlError("--remote-python '': give the path of a python on the remote, e.g. /usr/bin/python3")
    wh = None
    if wheelhouse is not None:
        wh = Path(wheelhouse).expanduser()
        if not wh.is_dir() or not list(wh.glob("*.whl")):
            raise EdgetlError(f"--wheelhouse {wheelhouse}: no folder with .whl files; fill one with "
                              f"`python -m edgetl.bench.remote wheelhouse {wheelhouse}`")
    if timeout <= 0:
        raise EdgetlError(f"--remote-timeout {timeout}: must be > 0 seconds")
    return RemoteOptions(target, opts, python, wh, timeout)


# ---- what the remote needs ---------------------------------------------------------------------------
def requirements() -> list[str]:
    """The light venv's packages: the runtimes and everything they need, at this machine's versions."""
    from .armenv import wheel_pins

    return [f"{k}=={v}" for k, v in wheel_pins().items()]


def build_wheel(folder: Path) -> Path:
    """edgetl's own wheel from the running source (devices/ inside it as edgetl.devices), byte-for-byte the
    same for the same source. Written here: a pure-Python wheel is a zip with three metadata files, and
    `pip wheel` would need setuptools and an index on every bench."""
    from .. import __file__ as pkg_init
    from .devices import PACKAGED_DEVICES, REPO_DEVICES

    pkg = Path(pkg_init).parent
    files = {f"edgetl/{p.relative_to(pkg).as_posix()}": p for p in sorted(pkg.rglob("*.py"))
             if "__pycache__" not in p.parts}
    devices = REPO_DEVICES if REPO_DEVICES.is_dir() else PACKAGED_DEVICES
    files.update({f"edgetl/devices/{p.name}": p for p in sorted(devices.iterdir())
                  if p.suffix in (".toml", ".md", ".py")})
    try:
        version = metadata.version("edgetl")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = "0.0.0"
    info = f"edgetl-{version}.dist-info"
    meta = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: edgetl\nVersion: {version}\n",
            f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: edgetl\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    buf = io.BytesIO()
    record = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        def add(name: str, data: bytes):
            z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
            digest = hashlib.sha256(data).digest()
            record.append(f"{name},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(data)}")
        for name, p in sorted(files.items()):
            add(name, p.read_bytes())
        for name, text in meta.items():
            add(name, text.encode())
        z.writestr(zipfile.ZipInfo(f"{info}/RECORD", (2020, 1, 1, 0, 0, 0)),
                   "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    out = folder / f"edgetl-{version}-py3-none-any.whl"
    out.write_bytes(buf.getvalue())
    return out


def blob_name(path: Path) -> str:
    from ..core.rundir import sha256_file

    return f"{sha256_file(path)}{''.join(path.suffixes[-1:])}"


def detect_profile(cpuinfo_text: str) -> str | None:
    """The device profile whose `qemu_cpu` core matches the remote's /proc/cpuinfo (Arm's CPU part), if any."""
    from ..core import cpu
    from .armenv import CPUS
    from .devices import available_devices, load_device

    info = cpu.cpuinfo(cpuinfo_text)
    if info.get("CPU implementer", "").lower() != "0x41":
        return None
    core = next((c for c, v in CPUS.items() if v["part"] == info.get("CPU part", "").lower()), None)
    for name in available_devices():
        try:
            if core and load_device(name).get("qemu_cpu") == core:
                return name
        except EdgetlError:
            continue
    return None


def board(cpuinfo_text: str) -> str | None:
    """The board name a Pi's kernel writes at the end of /proc/cpuinfo ("Model : Raspberry Pi 4 ...")."""
    for line in cpuinfo_text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() == "Model" and v.strip():
            return v.strip()
    return None


# ---- the session -------------------------------------------------------------------------------------
@dataclass
class Session:
    opts: RemoteOptions
    console: object
    conn: Connection | None = None
    probe: dict = field(default_factory=dict)
    python: str = "python3"
    src: str = ""
    paths: dict = field(default_factory=dict)  # local path -> remote path
    copied: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)

    def __enter__(self):
        self.conn = Connection(self.opts.target, self.opts.ssh_options)
        return self

    def __exit__(self, *exc):
        self.conn.close()

    def say(self, text: str) -> None:
        self.console.print(f"remote {self.opts.target}: {text}", highlight=False, soft_wrap=True)

    def agent(self, command: str, args: dict | None = None, python: str | None = None, stdin=None,
              timeout: float | None = None, stream: bool = False) -> dict:
        """One agent.py command on the remote; its JSON answer, or one line for a missing/unusable python."""
        py = python or self.opts.python or "python3"
        line = (f"{quote_path(py)} -c {shlex.quote(agent_source())} {command} "
                f"{shlex.quote(json.dumps(args or {}))}")
        r = self.conn.run(line, stdin=stdin, timeout=timeout or self.opts.timeout,
                          stderr_line=(lambda s: self.say(s)) if stream else None)
        for out in reversed(r.stdout.decode(errors="replace").splitlines()):
            if out.startswith(agent.RESULT_TAG):
                return json.loads(out[len(agent.RESULT_TAG):])
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        if r.returncode == 127 or any("No such file" in ln or "not found" in ln for ln in err[-2:]):
            raise EdgetlError(f"--remote {self.opts.target}: no {py} there: {PYTHON_HINT}")
        if any("SyntaxError" in ln for ln in err):
            raise EdgetlError(f"--remote {self.opts.target}: {py} there is not Python 3: {PYTHON_HINT}")
        raise EdgetlError(f"--remote {self.opts.target}: {command} failed there: "
                          f"{(err or [f'exit {r.returncode}'])[-1][:200]}")

    def fail(self, res: dict, what: str) -> None:
        """One line for an agent answer that carries an error."""
        t, kind = self.opts.target, res.get("error")
        if kind is None:
            return
        if kind == "disk-full":
            raise EdgetlError(f"--remote {t}: the remote's disk is full while {what} "
                              f"({res.get('free_bytes', 0) / 1e6:.1f} MB free in {res.get('root')}): free space "
                              "there (or point XDG_CACHE_HOME at a larger disk)")
        if kind == "no-index":
            raise EdgetlError(f"--remote {t}: the remote cannot install numpy and the runtimes from a package index "
                              f"({res.get('detail')}): pass --wheelhouse DIR, filled here with "
                              "`python -m edgetl.bench.remote wheelhouse DIR`")
        if kind == "wheelhouse":
            raise EdgetlError(f"--remote {t}: --wheelhouse lacks a wheel the remote needs ({res.get('detail')}): "
                              "fill it with `python -m edgetl.bench.remote wheelhouse DIR` for the remote's "
                              "platform and Python")
        if kind == "no-venv":
            raise EdgetlError(f"--remote {t}: cannot make a venv there ({res.get('detail')}): install python3-venv "
                              "there, or pass --remote-python PATH of a python with numpy, onnxruntime and "
                              "ai-edge-litert")
        raise EdgetlError(f"--remote {t}: {what} failed there: {res.get('detail')}")

    # -- steps -------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Probe the remote: a python >= 3.9, its CPU, its free disk (nothing is written yet)."""
        self.probe = self.agent("probe", {})
        version = tuple(int(x) for x in self.probe["python"].split(".")[:2])
        py = self.opts.python or "python3"
        if version < MIN_PYTHON:
            raise EdgetlError(f"--remote {self.opts.target}: {py} there is Python {self.probe['python']}; "
                              f"edgetl needs >= 3.9: {PYTHON_HINT}")
        self.say(f"Python {self.probe['python']} ({self.probe['machine']}), cache {self.probe['root']}")

    def upload(self, files: list[Path], tmp: Path) -> None:
        """Copy what the remote lacks (by sha256) into its blobs/; record each local path's remote path."""
        names = {}
        for p in dict.fromkeys(files):
            names[p] = blob_name(p)
        have = set(self.agent("probe", {"blobs": sorted(set(names.values()))})["have"])
        missing = {n: p for p, n in names.items() if n not in have}
        size = sum(p.stat().st_size for p in missing.values())
        free = self.probe.get("free_bytes", 0)
        if missing and size + MARGIN_BYTES > free:
            self.fail({"error": "disk-full", "free_bytes": free, "root": self.probe["root"]},
                      f"copying {size / 1e6:.1f} MB")
        if missing:
            self.say(f"copying {len(missing)} file(s), {size / 1e6:.1f} MB ({len(names) - len(missing)} already there)")
            tar_path = tmp / "upload.tar"
            with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
                for n, p in sorted(missing.items()):
                    tar.add(p, arcname=n, recursive=False)
            with open(tar_path, "rb") as f:
                res = self.agent("receive", {}, stdin=f, timeout=max(self.opts.timeout, SETUP_TIMEOUT_S))
            tar_path.unlink()
            self.fail(res, f"copying {size / 1e6:.1f} MB")
        else:
            self.say(f"all {len(names)} file(s) already there, nothing copied")
        self.copied = {"files": len(missing), "bytes": size, "already_there": len(names) - len(missing)}
        self.paths.update({str(p): f"{self.probe['root']}/blobs/{n}" for p, n in names.items()})

    def setup(self, wheel: Path, wheels: list[Path]) -> None:
        """edgetl's source unpacked there, and a python that imports numpy and the runtimes."""
        wname = Path(self.paths[str(wheel)]).name
        self.src = f"{self.probe['root']}/src/{wname.split('.')[0]}"
        self.fail(self.agent("unpack", {"wheel": wname, "src": wname.split(".")[0]}), "unpacking edgetl")
        if self.opts.python:
            self.python = self.opts.python
            return
        reqs = requirements()
        key = hashlib.sha256(json.dumps(reqs).encode()).hexdigest()[:12]
        name = f"venv-py{'.'.join(self.probe['python'].split('.')[:2])}-{self.probe['machine']}-{key}"
        if name not in self.probe.get("venvs", []):
            self.say(f"making the light venv {name} (numpy, onnxruntime, ai-edge-litert; once)")
        args = {"name": name, "requirements": reqs,
                "wheels": {w.name: Path(self.paths[str(w)]).name for w in wheels} or None}
        res = self.agent("venv", args, timeout=max(self.opts.timeout, SETUP_TIMEOUT_S), stream=True)
        self.fail(res, "making the venv")
        self.python = res["python"]

    def describe(self) -> dict:
        """The remote's host description (devices.host_info run there) plus its board and address."""
        code = ("import json; from edgetl.bench.devices import host_info; "
                f"print({WORKER_TAG!r} + json.dumps(host_info()))")
        r = self.conn.run(f"PYTHONPATH={shlex.quote(self.src)} {quote_path(self.python)} -c {shlex.quote(code)}",
                          timeout=self.opts.timeout)
        line = next((ln for ln in r.stdout.decode(errors="replace").splitlines() if ln.startswith(WORKER_TAG)), None)
        if line is None:
            err = [ln for ln in r.stderr.splitlines() if ln.strip()] or [f"exit {r.returncode}"]
            raise EdgetlError(f"--remote {self.opts.target}: {self.python} there cannot import edgetl's bench "
                              f"worker ({err[-1][:200]}): pass --remote-python PATH of a python with numpy, "
                              "onnxruntime and ai-edge-litert, or leave it out to get a light venv")
        host = json.loads(line[len(WORKER_TAG):])
        host.update(remote=str(self.opts.target), board=board(self.probe.get("cpuinfo", "")),
                    python_executable=self.python)
        self.host = host
        return host

    def run_job(self, job: dict) -> dict:
        """One worker job on the remote (paths translated), same answer as worker.run_worker."""
        if str(job["path"]).endswith(".keras"):
            return {"status": "skipped: the Keras model is not benched remotely (no TensorFlow there)"}
        job = dict(job)
        job.pop("save_probs", None)
        for k in ("path", "pixels", "labels"):
            if job.get(k):
                job[k] = self.paths[str(job[k])]
        n = str(job["threads"])
        args = {"argv": [self.python, "-m", "edgetl.bench.worker"], "timeout": self.opts.timeout,
                "env": {"PYTHONPATH": self.src, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
                        "MKL_NUM_THREADS": n}, "input": json.dumps(job)}
        line = (f"{quote_path(self.python)} -c {shlex.quote(agent_source())} run "
                f"{shlex.quote(json.dumps(args))}")
        r = self.conn.run(line, timeout=self.opts.timeout + 60, lifeline=True)
        out = r.stdout.decode(errors="replace").splitlines()
        for tag in (WORKER_TAG, agent.RESULT_TAG):
            for ln in reversed(out):
                if ln.startswith(tag):
                    res = json.loads(ln[len(tag):])
                    if "status" in res:
                        return res
        err = [ln for ln in r.stderr.splitlines() if ln.strip()] or [f"exit {r.returncode}"]
        return {"status": f"error: remote worker failed: {err[-1][:200]}"}


def agent_source() -> str:
    return Path(agent.__file__).read_text()


def prepare(sess: Session, targets, sets: dict, tmp: Path) -> dict:
    """Probe, copy, set up and describe the remote; returns its host description."""
    wheel = build_wheel(tmp)
    wheels = []
    if sess.opts.wheelhouse:
        machine = sess.probe["machine"]
        wheels = [w for w in sorted(sess.opts.wheelhouse.glob("*.whl"))
                  if w.name.endswith("-any.whl") or machine in w.name]
    files = [wheel, *wheels]
    files += [t.path for t in targets if not t.status and t.path.is_file() and t.fmt != "keras"]
    for s in sets.values():
        files += [Path(s["pixels"]), Path(s["labels"])]
    sess.upload(files, tmp)
    sess.setup(wheel, wheels)
    return sess.describe()


# ---- filling a wheelhouse ----------------------------------------------------------------------------
PLATFORMS = {"aarch64": ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64"),
             "x86_64": ("manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64")}


def fill_wheelhouse(folder: Path, arch: str = "aarch64", python_version: str = "3.11", log=print) -> list[Path]:
    """The wheels of the light venv's packages (requirements()) for a remote of `arch` and Python version,
    at this machine's versions, downloaded here by pip."""
    from .armenv import wheel_pins
    from .emulate import _download_wheels

    if arch not in PLATFORMS:
        raise EdgetlError(f"--arch {arch}: one of {', '.join(PLATFORMS)}")
    folder.mkdir(parents=True, exist_ok=True)
    return _download_wheels(wheel_pins(), folder, log, PLATFORMS[arch], python_version, "wheelhouse")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m edgetl.bench.remote",
                                 description="Wheels for `edgetl bench --remote HOST --wheelhouse DIR` on a device "
                                             "without a package index.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    wh = sub.add_parser("wheelhouse", help="download the light venv's wheels into DIR")
    wh.add_argument("dir")
    wh.add_argument("--arch", default="aarch64", help="the remote's machine: aarch64 (default) or x86_64")
    wh.add_argument("--python", default="3.11", help="the remote's Python version (default 3.11: Raspberry Pi OS "
                                                     "bookworm)")
    a = ap.parse_args(argv)
    try:
        wheels = fill_wheelhouse(Path(a.dir), a.arch, a.python)
    except EdgetlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(wheels)} wheels in {a.dir}; next: edgetl bench RUN --remote HOST --wheelhouse {a.dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

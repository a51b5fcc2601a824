"""The remote end of `edgetl bench --remote`: this file's source is sent as `python3 -c SOURCE COMMAND JSON`
over ssh, before edgetl exists on the device, so it uses the standard library only and syntax that any
Python 3 parses (the caller then refuses Pythons older than 3.9 with one line).

Everything lives under $XDG_CACHE_HOME/edgetl/remote (default ~/.cache/edgetl/remote):
  blobs/<sha256>.<ext>   content-addressed files (edgetl's wheel, artifacts, eval arrays, wheels)
  src/<sha256>/          edgetl's wheel unpacked (put on PYTHONPATH)
  venv-<key>/            the light venv (numpy and the runtimes; no TensorFlow), stamp.json written last
Every write goes to a `.tmp-*` name first and is renamed when complete; a failure removes it.
Each command prints one line RESULT_TAG + JSON on stdout; "error" names the kind of failure.
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile

RESULT_TAG = "EDGETL_REMOTE_RESULT "
PIP_OFFLINE = ("Failed to establish a new connection", "Network is unreachable", "Name or service not known",
               "Temporary failure in name resolution", "Connection refused", "Max retries exceeded",
               "No matching distribution found", "Could not find a version that satisfies")


def root_dir():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "edgetl", "remote")


def free_bytes(path):
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def answer(doc):
    sys.stdout.write(RESULT_TAG + json.dumps(doc) + "\n")
    sys.stdout.flush()


def disk_full(e):
    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def probe(args):
    root = root_dir()
    blobs = os.path.join(root, "blobs")
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read(200000)
    except OSError:
        cpuinfo = ""
    venvs = {}
    if os.path.isdir(root):
        for name in os.listdir(root):
            stamp = os.path.join(root, name, "stamp.json")
            if name.startswith("venv-") and os.path.isfile(stamp):
                venvs[name] = True
    import platform
    return {"python": platform.python_version(), "executable": sys.executable, "machine": platform.machine(),
            "cpuinfo": cpuinfo, "root": root, "free_bytes": free_bytes(root), "venvs": sorted(venvs),
            "have": sorted(n for n in args.get("blobs", []) if os.path.isfile(os.path.join(blobs, n))),
            "src": os.path.isdir(os.path.join(root, "src", args.get("src", "-")))}


def receive(args):
    """A tar stream on stdin -> blobs/<name>, each checked against the sha256 its name starts with."""
    blobs = os.path.join(root_dir(), "blobs")
    tmp = None
    count = size = 0
    try:
        if not os.path.isdir(blobs):
            os.makedirs(blobs)
        with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
            for m in tar:
                name = os.path.basename(m.name)
                if not m.isfile() or name != m.name or name.startswith("."):
                    return {"error": "protocol", "detail": "unexpected member %r" % m.name}
                tmp = os.path.join(blobs, ".tmp-%d-%s" % (os.getpid(), name))
                digest = hashlib.sha256()
                src = tar.extractfile(m)
                with open(tmp, "wb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        digest.update(chunk)
                        out.write(chunk)
                if not name.startswith(digest.hexdigest()):
                    remove(tmp)
                    return {"error": "protocol", "detail": "%s arrived damaged (sha256 differs)" % name}
                os.replace(tmp, os.path.join(blobs, name))
                tmp = None
                count += 1
                size += m.size
    except (OSError, tarfile.TarError) as e:
        if tmp:
            remove(tmp)
        if disk_full(e):
            return {"error": "disk-full", "detail": str(e), "free_bytes": free_bytes(blobs), "root": root_dir()}
        return {"error": "io", "detail": "%s: %s" % (type(e).__name__, e)}
    return {"received": count, "bytes": size}


def unpack(args):
    """blobs/<sha>.whl -> src/<sha>/ (a wheel is a zip of its site-packages files)."""
    root = root_dir()
    dest = os.path.join(root, "src", args["src"])
    if os.path.isdir(dest):
        return {"unpacked": False}
    tmp = os.path.join(root, "src", ".tmp-%d" % os.getpid())
    try:
        with zipfile.ZipFile(os.path.join(root, "blobs", args["wheel"])) as z:
            z.extractall(tmp)
        os.replace(tmp, dest)
    except OSError as e:
        return os_failure(e, tmp, root)
    return {"unpacked": True}


def os_failure(e, tmp, root):
    """The answer for an OSError while making `tmp` under `root` (removed): a full disk, or any other."""
    remove(tmp)
    if disk_full(e):
        return {"error": "disk-full", "detail": str(e), "free_bytes": free_bytes(root), "root": root}
    return {"error": "io", "detail": "%s: %s" % (type(e).__name__, e)}


def venv(args):
    """The light venv venv-<key>: made once with `python -m venv` and pip (from the index, or only from the
    uploaded wheelhouse), stamp.json written last; renamed into place when complete."""
    root = root_dir()
    dest = os.path.join(root, args["name"])
    if os.path.isfile(os.path.join(dest, "stamp.json")):
        return {"created": False, "python": os.path.join(dest, "bin", "python")}
    tmp = os.path.join(root, ".tmp-%s-%d" % (args["name"], os.getpid()))
    links = os.path.join(tmp, "wheelhouse")
    try:
        os.makedirs(root, exist_ok=True)
        remove(dest)  # a venv without its stamp is a partial one
        r = subprocess.run([sys.executable, "-m", "venv", tmp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        if r.returncode != 0:
            remove(tmp)
            lines = r.stdout.strip().splitlines() or ["exit %d" % r.returncode]
            return {"error": "no-venv", "detail": [ln for ln in lines if ln.strip()][-1][:300]}
        cmd = [os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "--disable-pip-version-check",
               "--progress-bar", "off"]
        if args.get("wheels"):
            os.makedirs(links)
            for filename, blob in sorted(args["wheels"].items()):
                os.symlink(os.path.join(root, "blobs", blob), os.path.join(links, filename))
            cmd += ["--no-index", "--find-links", links]
        p = subprocess.Popen(cmd + list(args["requirements"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True)
        log = []
        for line in p.stdout:  # streamed to the laptop as progress
            log.append(line.rstrip())
            if line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
                sys.stderr.write("pip: " + line)
                sys.stderr.flush()
        p.wait()
        if p.returncode != 0:
            remove(tmp)
            text = "\n".join(log)
            errs = [ln for ln in log if ln.startswith("ERROR")] or log[-1:] or ["exit %d" % p.returncode]
            if "No space left on device" in text:
                return {"error": "disk-full", "detail": errs[0][:300], "free_bytes": free_bytes(root), "root": root}
            offline = any(s in text for s in PIP_OFFLINE)
            kind = ("wheelhouse" if args.get("wheels") else "no-index") if offline else "pip"
            return {"error": kind, "detail": errs[0][:300]}
        remove(links)
        with open(os.path.join(tmp, "stamp.json"), "w") as f:
            json.dump({"requirements": args["requirements"]}, f)
        os.replace(tmp, dest)
    except OSError as e:
        return os_failure(e, tmp, root)
    return {"created": True, "python": os.path.join(dest, "bin", "python")}


def run(args):
    """One command (a bench worker) with `input` on its stdin and its output printed as it comes; killed
    after `timeout` seconds, or as soon as this process's own stdin ends: the bench holds that open while it
    waits, so a bench that ends in any way (interrupted, killed, its connection lost) ends the worker too.
    The child's own RESULT line is its answer; a timeout gets one here."""
    env = dict(os.environ)
    env.update(args.get("env") or {})
    argv = [os.path.expanduser(a) for a in args["argv"]]
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE)
    except OSError as e:
        return {"status": "error: %s" % e}

    def lifeline():  # (os.read on the fd: a daemon thread blocked in sys.stdin's buffer aborts the exit)
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        if proc.poll() is None:
            proc.kill()

    threading.Thread(target=lifeline, daemon=True).start()
    try:
        proc.communicate((args.get("input") or "").encode(), timeout=args["timeout"])
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"status": "error: timed out after %g s on the remote (--remote-timeout)" % args["timeout"]}
    return {"exit": proc.returncode}


COMMANDS = {"probe": probe, "receive": receive, "unpack": unpack, "venv": venv, "run": run}

if __name__ == "__main__":
    answer(COMMANDS[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))

"""Output folders (`--out` of train and compare): what may be replaced, and how a folder is written so that
nothing is ever lost or left half-written.

- `check_out` runs before any work: --out must be new, or (with --overwrite) empty or an edgetl output of
  the same kind (edgetl.json / compare.json that edgetl wrote); it may not be, contain or sit inside an
  input (DATA, --test, --from, --weights); a new --out may not sit inside an image folder (its files would
  become images); its parent must be writable. `check_inputs_outside` then checks every image and class
  folder the scan reached, symlinks resolved.
- `atomic_dir` builds the folder in a hidden sibling `.NAME.partial-<host>-<pid>-*` and swaps it into
  place in one rename (renameat2 RENAME_EXCHANGE on Linux): after a kill at any moment the old folder is
  intact or the new one complete. Leftovers of killed processes (their pid no longer runs on this host)
  are removed by the next write in the same parent folder. A new folder is renamed into place only onto a
  name nothing holds (renameat2 RENAME_NOREPLACE): a run that appeared meanwhile is never replaced without
  --overwrite. Replacing a run takes its manifest lock (export holds it while it writes), so a swap never
  lands between an export's steps; export checks the run is still the one it started on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from pathlib import Path

from .errors import EdgetlError
from .rundir import MANIFEST_LOCK, META_FILE, pause_point, temp_dir

COMPARE_FILE = "compare.json"
# the file that makes a folder an edgetl output of each kind, and the keys edgetl always writes in it
MARKERS = {META_FILE: ("edgetl_version", "classes", "image_size", "preprocessing"),
           COMPARE_FILE: ("edgetl_version", "results", "fractions")}
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _tag(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-{_host()}-{os.getpid()}-"


def written_by_edgetl(folder: Path, marker: str) -> bool:
    """`folder/marker` is a JSON object with the keys edgetl writes in it."""
    try:
        doc = json.loads((folder / marker).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in MARKERS[marker])


def describe_folder(folder: Path, limit: int = 4) -> str:
    """'3 files and 2 folders (a.jpg, cats, ...)' for an error message."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        return f"unreadable content ({e.strerror})"
    dirs = sum(1 for e in entries if e.is_dir())
    files = len(entries) - dirs
    names = ", ".join(e.name for e in entries[:limit]) + (", ..." if len(entries) > limit else "")
    parts = [f"{n} {w}{'s' if n != 1 else ''}" for n, w in ((files, "file"), (dirs, "folder")) if n]
    return f"{' and '.join(parts)} ({names})"


IMAGE_INPUTS = ("DATA", "--test")  # input folders whose every file is read as an image


def check_out(out: str | Path, overwrite: bool, marker: str = META_FILE, protect: dict | None = None) -> None:
    """Everything about --out, before any work: one EdgetlError naming the folder and what it holds.
    `protect`: {flag: path} the output may not be, contain or sit inside (DATA, --test, --from, --weights)."""
    out = Path(out)
    protect = {f: p for f, p in (protect or {}).items() if p is not None and str(p) != ""}
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise EdgetlError(f"--out {out} already exists; pass --overwrite to replace it")
        if not out.is_dir():
            raise EdgetlError(f"--out {out} exists and is not a folder")
        _check_not_inputs(out, protect)
        check_replaceable(out, marker)
    else:  # a new run inside an image folder: its PNGs would be read as images by the next train
        _check_not_inputs(out, {f: p for f, p in protect.items() if f in IMAGE_INPUTS})
    _check_writable(out)


def _what(flag: str) -> str:
    return {"DATA": "images", "--test": "test images", "--weights": "weights file"}.get(flag, "source run")


def _check_not_inputs(out: Path, protect: dict) -> None:
    ro = out.resolve()
    for flag, folder in protect.items():
        rp = Path(folder).expanduser().resolve()
        what = ("is" if ro == rp else "sits inside" if rp in ro.parents else "contains" if ro in rp.parents
                else None)
        if what and not out.exists():
            raise EdgetlError(f"--out {out} {what} {flag} {folder}: the run's files would be read as images "
                              "by the next train; choose an --out outside it")
        if what:
            raise EdgetlError(f"--out {out} {what} {flag} {folder}: --overwrite would delete your "
                              f"{_what(flag)}; choose another --out")


def check_inputs_outside(out: str | Path, overwrite: bool, reached: dict) -> None:
    """No input the scan reached (`reached`: {real path: path as reached}, image files and folders, symlinks
    resolved) lies inside an existing --out that --overwrite would replace."""
    out = Path(out)
    if not (overwrite and out.is_dir()):
        return
    ro = os.path.realpath(out)
    for real, shown in reached.items():
        if real == ro or real.startswith(ro + os.sep):
            raise EdgetlError(f"--out {out} holds {shown} (it resolves to {real}), an input of this train: "
                              "--overwrite would delete it; choose another --out or move that folder")


def check_replaceable(out: Path, marker: str = META_FILE) -> None:
    """An existing folder may be replaced only when it is empty or an edgetl output of this kind."""
    if not out.is_dir() or out.is_symlink():
        raise EdgetlError(f"--out {out} is {'a symlink' if out.is_symlink() else 'not a folder'}; "
                          "--overwrite only replaces a folder edgetl wrote")
    try:
        empty = next(os.scandir(out), None) is None
    except OSError as e:
        raise EdgetlError(f"--out {out}: cannot read it ({e.strerror})") from None
    if empty or written_by_edgetl(out, marker):
        return
    kind = "an edgetl run (edgetl.json)" if marker == META_FILE else f"an edgetl compare output ({marker})"
    raise EdgetlError(f"--out {out} holds {describe_folder(out)} and is not {kind}; --overwrite only replaces "
                      f"{kind} or an empty folder")


def _check_writable(out: Path) -> None:
    """The folder that receives --out (or its nearest existing ancestor) must take new entries."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EdgetlError(f"--out {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgetlError(f"--out {out}: cannot write in {parent} (permission denied)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_leftovers(parent: Path) -> list[str]:
    """Remove the hidden partial/old folders that killed edgetl processes left in `parent` (only this host's,
    only of processes that no longer run). A folder whose old copy was moved aside and never replaced
    (a kill between the two renames where RENAME_EXCHANGE is unavailable) gets it back. Returns the names."""
    done = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for e in entries:
        m = _LEFTOVER.match(e.name)
        if not m or m["host"] != _host() or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        target = parent / m["name"]
        if m["kind"] == "old" and (Path(e.path) / "d").is_dir() and not target.exists():
            os.replace(Path(e.path) / "d", target)
        shutil.rmtree(e.path, ignore_errors=True)
        done.append(e.name)
    return done


def _renameat2(a: Path, b: Path, flag: int) -> bool:
    """Linux renameat2 through ctypes (the standard library has no call for it): flag 1 RENAME_NOREPLACE,
    2 RENAME_EXCHANGE. False where the system or filesystem lacks it; other failures raise OSError."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flag) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(b))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic rename (RENAME_EXCHANGE). False where unsupported."""
    return _renameat2(a, b, 2)


def _rename_new(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`, which must not exist: FileExistsError when something took the name meanwhile.
    RENAME_NOREPLACE where the system has it; else mkdir (atomic: one creator wins) then rename onto that
    empty folder of ours."""
    if _renameat2(tmp, out, 1):
        return
    os.mkdir(out)
    os.replace(tmp, out)


@contextlib.contextmanager
def _locked_run(out: Path, marker: str):
    """Hold the run's manifest lock while it is replaced: an export writing into it finishes its step first."""
    if marker != META_FILE or not (out / MANIFEST_LOCK).is_file():
        yield
        return
    import fcntl

    with open(out / MANIFEST_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False, marker: str = META_FILE):
    """Build a directory in a hidden sibling and move it into place only when the block succeeds.

    A failure, Ctrl-C, SIGTERM or SIGKILL leaves no half-written output and never damages an existing one:
    the old directory is replaced in one atomic swap after the new one is complete, and only if it is
    empty or an edgetl output of this kind (`marker`).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise EdgetlError(f"--out {out} already exists; pass --overwrite to replace it")
    if out.exists():
        check_replaceable(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out.parent)
    tmp = temp_dir(out.parent, _tag(out, "partial"))
    try:
        yield tmp
        pause_point("atomic-dir-complete")
        appeared = EdgetlError(f"--out {out} appeared while this command ran (another train?); it was left as "
                               "it is and nothing was written; pass --overwrite to replace it, or choose another --out")
        if not out.exists() and not out.is_symlink():
            try:
                _rename_new(tmp, out)
                return
            except FileExistsError:  # another process took the name between the check and the rename
                pass
        if not overwrite:
            raise appeared
        check_replaceable(out, marker)  # again: the folder may have changed during the work
        with _locked_run(out, marker):
            if not _exchange(tmp, out):  # two renames; clean_leftovers restores the old folder after a kill
                old = temp_dir(out.parent, _tag(out, "old"))
                os.replace(out, old / "d")
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(old / "d", out)
                    shutil.rmtree(old, ignore_errors=True)
                    raise
                tmp = old
        pause_point("atomic-dir-swapped")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

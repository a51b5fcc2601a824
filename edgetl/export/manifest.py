"""manifest.json, the export's record of every file it wrote (size, sha256, parity) or could not write
(reason), and of the Keras model its int8 files came from (int8_source). The one place it is read and
written.

What it guarantees, whatever happens to an export (an error, Ctrl-C, SIGTERM, SIGKILL): every file it lists
as "ok" exists with the listed size and sha256. How:
- every change is read-modify-write of the file on disk under an exclusive lock (RUN/.manifest.lock,
  fcntl.flock: the standard library, and the lock dies with its process), written atomically (temp file +
  rename): concurrent exports of one run never lose each other's entries;
- a file is replaced in three steps under that lock: its entry leaves the manifest, the new file is
  renamed into place, its new entry is added. A kill in between leaves a file no manifest lists;
- the next export removes such files (and temp files of killed writes) and names them (`begin`).
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone

from ..core.formats import FORMATS
from ..core.rundir import MANIFEST_FILE, Run, pause_point, sha256_file, write_bytes, write_json

LOCK_FILE = ".manifest.lock"


@contextlib.contextmanager
def locked(run: Run):
    """The run's manifest lock, held for the block (blocks while another export holds it)."""
    import fcntl

    with open(run.path / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read(run: Run) -> dict:
    """The manifest on disk; an empty one when there is none or it cannot be read."""
    try:
        m = json.loads((run.path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        m = None
    if not isinstance(m, dict) or not isinstance(m.get("artifacts"), dict):
        m = {"artifacts": {}}
    return m


def _write(run: Run, m: dict) -> None:
    m["artifacts"] = {n: m["artifacts"][n] for n in FORMATS if n in m["artifacts"]}  # registry order
    write_json(run.path / MANIFEST_FILE, m)


def _intact(run: Run, a: dict) -> bool:
    p = run.path / str(a.get("file", ""))
    return a.get("status") == "ok" and p.is_file() and sha256_file(p) == a.get("sha256")


def begin(run: Run) -> list[str]:
    """Make manifest and disk agree before this export: entries whose file is missing or changed are
    dropped; artifact files no entry lists (left by an interrupted export, or changed since) and temp
    files of killed writes are removed. Returns one note per removal, for the console."""
    notes = []
    with locked(run):
        m = read(run)
        arts = m["artifacts"]
        for name, a in list(arts.items()):
            if a.get("status") == "ok" and not _intact(run, a):
                del arts[name]
        listed = {a.get("file") for a in arts.values() if a.get("status") == "ok"}
        for fmt in FORMATS.values():
            if fmt.runtime != "tensorflow" and fmt.filename not in listed and (run.path / fmt.filename).is_file():
                os.unlink(run.path / fmt.filename)
                notes.append(f"removed {fmt.filename}: manifest.json does not list it as written (an interrupted "
                             f"export, or changed since); re-export it with --format {fmt.name}")
        for name in (MANIFEST_FILE, *(f.filename for f in FORMATS.values())):
            for tmp in run.path.glob(f".{name}.*.tmp"):  # no live writer: writes happen under the lock
                tmp.unlink(missing_ok=True)
        m.update(run=str(run.path.resolve()), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 model_sha256=sha256_file(run.model_path))
        _write(run, m)
    return notes


def put_file(run: Run, name: str, blob: bytes, entry: dict) -> dict:
    """Write format `name`'s file and record it: entry out, file in, entry (with bytes and sha256) back in.
    Returns the entry."""
    fname = FORMATS[name].filename
    with locked(run):
        m = read(run)
        if m["artifacts"].pop(name, None) is not None:
            _write(run, m)
        pause_point("manifest-entry-removed")
        write_bytes(run.path / fname, blob)
        pause_point("manifest-file-written")
        entry = {"file": fname, "bytes": len(blob), "sha256": sha256_file(run.path / fname), **entry}
        m = read(run)
        m["artifacts"][name] = entry
        _write(run, m)
    return entry


def put_failure(run: Run, name: str, reason: str) -> dict:
    """Record that format `name` failed (its reason) and remove its stale file, entry first."""
    entry = {"file": FORMATS[name].filename, "status": "failed", "reason": reason}
    with locked(run):
        m = read(run)
        m["artifacts"][name] = entry
        _write(run, m)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run.path / entry["file"])  # a stale file of this format must not pass for a checked one
    return entry


def finish(run: Run, **fields) -> dict:
    """Top-level `fields` of this export (skipped images, CPU, time) into the manifest; returns it."""
    with locked(run):
        m = read(run)
        m.update(fields)
        _write(run, m)
    return m


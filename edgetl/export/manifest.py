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
- the next export makes manifest and disk agree again (`begin`), naming each change: a file no valid entry
  lists is given back its entry when the sha256 sealed in it still verifies and it was made from this
  run's model.keras (its embedded model_sha256) -- an invalid or edited manifest is repaired, never a
  reason to delete good files; files of another model, damaged ones and temp files of killed writes go.
- the manifest names the model.keras (sha256) and classes its files came from; entries of another model
  are dropped. Each step checks, under the lock, that RUN is still the folder this export read (a
  `train --overwrite` swaps a new folder in under the same lock) and that the file is of the model the
  manifest names: an export never writes old-model files into a new run.
- a failed check leaves a file that passed an earlier check, and its entry, in place (the entry records
  the failure under last_failure).
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone

from ..core.artifact import embedded_field, sealed_intact
from ..core.errors import EdgetlError
from ..core.formats import FORMATS
from ..core.rundir import MANIFEST_FILE, MANIFEST_LOCK, MODEL_FILE, Run, pause_point, sha256_file, write_bytes, write_json

LOCK_FILE = MANIFEST_LOCK


@contextlib.contextmanager
def locked(run: Run):
    """The run's manifest lock, held for the block (blocks while another export holds it). Raises when RUN
    is no longer the folder this export read (replaced by `edgetl train --overwrite` meanwhile)."""
    import fcntl

    with open(run.path / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if run.replaced():
                raise EdgetlError(f"RUN {run.path} was replaced (edgetl train --overwrite?) while this export ran; "
                                  f"nothing was written into the new run; export it with `edgetl export {run.path}`")
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read(run: Run) -> dict:
    """The manifest on disk; an empty one when there is none or it is not a manifest (begin rebuilds it);
    entries that are not objects are left out. An unreadable file is one line."""
    try:
        m = json.loads((run.path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        m = None
    except OSError as e:
        raise EdgetlError(f"RUN {run.path}: cannot read {MANIFEST_FILE} ({e.strerror}); fix its permissions") from None
    except ValueError:
        m = None
    if not isinstance(m, dict) or not isinstance(m.get("artifacts"), dict):
        m = {"artifacts": {}}
    m["artifacts"] = {n: a for n, a in m["artifacts"].items() if n in FORMATS and isinstance(a, dict)}
    return m


def _write(run: Run, m: dict) -> None:
    m["artifacts"] = {n: m["artifacts"][n] for n in FORMATS if n in m["artifacts"]}  # registry order
    write_json(run.path / MANIFEST_FILE, m)


def _intact(run: Run, a: dict) -> bool:
    p = run.path / str(a.get("file", ""))
    return a.get("status") == "ok" and p.is_file() and sha256_file(p) == a.get("sha256")


def begin(run: Run) -> list[str]:
    """Make manifest and disk agree before this export, for this run's model.keras and classes: entries whose
    file is missing, changed or of another model are dropped; a file no entry lists gets its entry back when
    its sealed sha256 verifies and it names this model (rebuild), else it is removed, as are temp files of
    killed writes. Returns one note per change, for the console."""
    notes = []
    with locked(run):
        m = read(run)
        model = sha256_file(run.model_path)
        other = (m.get("model_sha256") not in (None, model)) or (m.get("classes") not in (None, run.classes))
        arts = m["artifacts"]
        for name, a in list(arts.items()):
            if a.get("status") == "ok" and (other or not _intact(run, a)):
                del arts[name]
        listed = {a.get("file") for a in arts.values() if a.get("status") == "ok"}
        for fmt in FORMATS.values():
            path = run.path / fmt.filename
            if fmt.runtime == "tensorflow" or fmt.filename in listed or not path.is_file():
                continue
            buf = path.read_bytes()
            made_from = embedded_field(buf, "model_sha256")
            labels = b'"classes": ' + json.dumps(run.classes).encode() in buf  # as the embedded JSON writes them
            if sealed_intact(buf) and made_from == model and labels and embedded_field(buf, "format") == fmt.name:
                arts[fmt.name] = {"file": fmt.filename, "bytes": len(buf), "sha256": sha256_file(path), "status": "ok",
                                  "rebuilt": "entry rebuilt from the file's sealed sha256 and model_sha256; its "
                                             "check ran when it was exported"}
                notes.append(f"kept {fmt.filename}: its sealed sha256 verifies and it was made from this "
                             f"{MODEL_FILE}; its manifest entry was rebuilt")
                continue
            os.unlink(path)
            why = (f"made from another {MODEL_FILE}" if made_from and made_from != model else
                   "its labels differ from the run's" if made_from and not labels else
                   "manifest.json does not list it as written (an interrupted export, or changed since)")
            notes.append(f"removed {fmt.filename}: {why}; re-export it with --format {fmt.name}")
        for name in (MANIFEST_FILE, *(f.filename for f in FORMATS.values())):
            for tmp in run.path.glob(f".{name}.*.tmp"):  # no live writer: writes happen under the lock
                tmp.unlink(missing_ok=True)
        m.update(run=str(run.path.resolve()), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 model_sha256=model, classes=run.classes)
        _write(run, m)
    return notes


def put_file(run: Run, name: str, blob: bytes, entry: dict) -> dict:
    """Write format `name`'s file and record it: entry out, file in, entry (with bytes and sha256) back in.
    Returns the entry."""
    fname = FORMATS[name].filename
    with locked(run):
        m = read(run)
        made_from = embedded_field(blob, "model_sha256")
        if made_from and m.get("model_sha256") not in (None, made_from):
            raise EdgetlError(f"RUN {run.path}: {MODEL_FILE} changed while this export ran; {fname} was not "
                              f"written; export again")
        old = m["artifacts"].pop(name, None)
        if old is not None:
            _write(run, m)
        pause_point("manifest-entry-removed")
        try:
            write_bytes(run.path / fname, blob)
        except BaseException:  # e.g. a full disk: the old file is still whole (atomic write), so is its entry
            if old is not None and _intact(run, old):
                with contextlib.suppress(OSError):
                    m = read(run)
                    m["artifacts"][name] = old
                    _write(run, m)
            raise
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
        old = m["artifacts"].get(name)
        if old and _intact(run, old):  # a file that passed its check at an earlier export stays
            old["last_failure"] = {"reason": reason, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            _write(run, m)
            return entry
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


"""manifest.json, the export's record of every file it wrote (size, sha256, parity) or could not write
(reason), and of the Keras model its int8 files came from (int8_source). The one place it is read and
written."""

from __future__ import annotations

from datetime import datetime, timezone

from ..core.formats import FORMATS
from ..core.rundir import MANIFEST_FILE, Run, sha256_file, write_json


def start(run: Run) -> dict:
    """The manifest this export will write: the entries of earlier exports whose files are still there,
    unchanged (same sha256), and nothing else."""
    previous = {}
    try:
        previous = run.manifest
    except Exception:  # an unreadable manifest keeps nothing
        pass
    keep = {}
    for name, a in previous.get("artifacts", {}).items():
        p = run.path / a.get("file", "")
        if a.get("status") == "ok" and p.is_file() and sha256_file(p) == a.get("sha256"):
            keep[name] = a
    out = {"run": str(run.path.resolve()), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "model_sha256": sha256_file(run.model_path), "artifacts": keep}
    if "int8_source" in previous and any(FORMATS[n].precision == "int8" for n in keep if n in FORMATS):
        out["int8_source"] = previous["int8_source"]  # where the int8 files kept came from
    return out


def save(run: Run, manifest: dict, results: dict, **fields) -> None:
    """Add this export's results (and top-level `fields`) to `manifest` and write it atomically, artifacts
    in registry order."""
    manifest["artifacts"].update(results)
    manifest.update(fields)
    manifest["artifacts"] = {n: manifest["artifacts"][n] for n in FORMATS if n in manifest["artifacts"]}
    write_json(run.path / MANIFEST_FILE, manifest)

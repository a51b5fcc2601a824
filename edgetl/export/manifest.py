"""manifest.json, the export's record of every file it wrote (size, sha256, parity) or could not write
(reason). The one place it is read and written."""

from __future__ import annotations

from datetime import datetime, timezone

from ..core.formats import FORMATS
from ..core.rundir import MANIFEST_FILE, Run, sha256_file, write_json


def start(run: Run) -> dict:
    """The manifest this export will write: the entries of earlier exports whose files are still there,
    unchanged (same sha256), and nothing else."""
    old = {}
    try:
        old = run.manifest.get("artifacts", {})
    except Exception:  # an unreadable manifest keeps nothing
        pass
    keep = {}
    for name, a in old.items():
        p = run.path / a.get("file", "")
        if a.get("status") == "ok" and p.is_file() and sha256_file(p) == a.get("sha256"):
            keep[name] = a
    return {"run": str(run.path.resolve()), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_sha256": sha256_file(run.model_path), "artifacts": keep}


def save(run: Run, manifest: dict, results: dict, **fields) -> None:
    """Add this export's results (and top-level `fields`) to `manifest` and write it atomically, artifacts
    in registry order."""
    manifest["artifacts"].update(results)
    manifest.update(fields)
    manifest["artifacts"] = {n: manifest["artifacts"][n] for n in FORMATS if n in manifest["artifacts"]}
    write_json(run.path / MANIFEST_FILE, manifest)

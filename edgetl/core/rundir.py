"""Run directories: the files that carry a model from train to export to bench.

RUN/
  model.keras      trained Keras model (input: preprocessed NHWC float32 in [-1, 1])
  model-qat.keras  --qat runs: the QAT model (same architecture, QAT-trained top); int8 files come from it
                   when edgetl.json's qat_info.int8_source is "qat"
  labels.txt       one class name per line, in output order
  edgetl.json      metadata: classes, image size, preprocessing, alpha, weights + sha256, seed,
                   config, split file lists, skipped files, history, metrics, timings, versions
  manifest.json    written by export: every artifact with size, sha256 and parity results
  *.png            training curves, confusion matrix; bench/ holds bench results
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from .errors import EdgetlError

META_FILE = "edgetl.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_LOCK = ".manifest.lock"  # export's manifest updates and train's replacement of a run take it
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.keras"
PAUSE_ENV = "EDGETL_PAUSE_AT"
QAT_MODEL_FILE = "model-qat.keras"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def umask() -> int:
    """This process's umask, read without changing it (/proc on Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_dir(parent: str | Path, prefix: str) -> Path:
    """tempfile.mkdtemp in `parent`, with the mode mkdir would give (mkdtemp makes it 0700)."""
    d = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(d, 0o777 & ~umask())
    return d


def _write_atomic(path: str | Path, write, mode: str) -> None:
    """Write through `write(f)` into a temp file in the same folder, then rename it over `path`; the file
    gets the mode open() would give it (mkstemp makes it 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    """Atomic JSON write (temp file in the same folder, then rename)."""
    def dump(f):
        json.dump(obj, f, indent=2, sort_keys=False, default=json_default)
        f.write("\n")

    _write_atomic(path, dump, "w")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomic binary write: a reader never sees a half-written artifact."""
    _write_atomic(path, lambda f: f.write(data), "wb")


def pause_point(name: str) -> None:
    """Fault injection for the reliability tests: with EDGETL_PAUSE_AT naming this point (comma-separated
    names) and EDGETL_PAUSE_DIR a folder, create DIR/<name>.reached and wait (up to 10 min) for
    DIR/<name>.go, so that a test can kill the process exactly here. A no-op otherwise."""
    if name not in os.environ.get(PAUSE_ENV, "").split(","):
        return
    folder = Path(os.environ.get("EDGETL_PAUSE_DIR", "."))
    (folder / f"{name}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + 600
    while not (folder / f"{name}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def json_default(o):
    """json.dump's `default`: numpy scalars and arrays as Python values, paths as strings."""
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def versions(*modules: str) -> dict:
    """Versions of the named packages that are importable (never imports TensorFlow itself)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "edgetl": edgetl_version()}
    for m in modules:
        try:
            out[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            pass
    return out


def edgetl_version() -> str:
    from .. import __version__

    return __version__


class Run:
    """A run directory read back from disk (validated)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise EdgetlError(f"RUN {self.path}: no such folder")
        st = self.path.stat()
        self.identity = (st.st_dev, st.st_ino)  # the folder this Run read: a swapped-in new run differs
        meta_path = self.path / META_FILE
        if not self.path.is_dir() or not meta_path.is_file():
            raise EdgetlError(f"RUN {self.path}: not an edgetl run (no {META_FILE}); create one with `edgetl train`")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgetlError(f"RUN {self.path}: {META_FILE} is corrupt ({e.msg if hasattr(e, 'msg') else e})") from None
        if not isinstance(self.meta, dict):
            raise EdgetlError(f"RUN {self.path}: {META_FILE} is corrupt (not a JSON object); re-run `edgetl train`")
        for k in ("classes", "image_size", "preprocessing"):
            if k not in self.meta:
                raise EdgetlError(f"RUN {self.path}: {META_FILE} lacks {k!r}; re-run `edgetl train`")
        self._check_types()

    def replaced(self) -> bool:
        """Whether RUN's path now names another folder than the one read (a train --overwrite swapped one in)."""
        try:
            st = self.path.stat()
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self.identity

    def _check_types(self) -> None:
        """The fields every stage relies on have the types edgetl writes (an edited file fails here, in one line)."""
        # (imported here: images needs numpy, and core.outdir uses this module with the standard library alone)
        from .images import PIXEL_SIZES, spec_problem

        m, bad = self.meta, None
        size = m["image_size"]
        if not (isinstance(m["classes"], list) and m["classes"] and all(isinstance(c, str) for c in m["classes"])):
            bad = "'classes' is not a list of class names"
        elif isinstance(size, bool) or not isinstance(size, int) or size not in PIXEL_SIZES:
            bad = f"'image_size' is {size!r}, not a size in pixels"
        elif problem := spec_problem(m["preprocessing"]):
            bad = f"'preprocessing' {problem}"
        if bad:
            raise EdgetlError(f"RUN {self.path}: {META_FILE} {bad}; re-run `edgetl train`")

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def preprocessing(self) -> dict:
        return dict(self.meta["preprocessing"])

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def require_model(self) -> Path:
        if not self.model_path.exists():
            raise EdgetlError(f"RUN {self.path}: no trained model ({MODEL_FILE}); re-run `edgetl train`")
        return self.model_path

    @property
    def qat_graph(self) -> bool:
        """A --qat run whose model.keras is tensorflow-model-optimization's fake-quant graph (edgetl.json
        records no int8_source): its int8 files come from the graph's own ranges, its float files from the
        graph with the fake-quant nodes stripped."""
        return bool(self.meta.get("qat")) and "int8_source" not in (self.meta.get("qat_info") or {})

    def int8_source(self) -> tuple[str, Path]:
        """("qat" | "ptq", the Keras file int8 formats are converted from), as `edgetl train` recorded it:
        model-qat.keras when its int8 file beat post-training int8 on val, else model.keras."""
        info = self.meta.get("qat_info") or {}
        if self.qat_graph:
            return "qat", self.model_path
        if self.meta.get("qat") and info.get("int8_source") == "qat":
            return "qat", self.path / info.get("qat_model", QAT_MODEL_FILE)
        return "ptq", self.model_path

    def split_items(self, which: str) -> list[tuple[str, int]]:
        """(path, label) items of the run's 'train' or 'val' split, as recorded at training time."""
        items = self.meta.get("split", {}).get(which, [])
        return [(p, int(y)) for p, y in items]

    @property
    def manifest(self) -> dict:
        """manifest.json; entries that are not objects are left out (export rebuilds them)."""
        p = self.path / MANIFEST_FILE
        if not p.exists():
            return {"artifacts": {}}
        try:
            m = json.loads(p.read_text())
        except OSError as e:
            raise EdgetlError(f"RUN {self.path}: cannot read {MANIFEST_FILE} ({e.strerror}); fix its permissions") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            m = None
        if not isinstance(m, dict) or not isinstance(m.get("artifacts"), dict):
            raise EdgetlError(f"RUN {self.path}: {MANIFEST_FILE} is corrupt; re-run `edgetl export {self.path}`")
        m["artifacts"] = {n: a for n, a in m["artifacts"].items() if isinstance(a, dict)}
        return m

    def check_labels(self) -> None:
        """The class names must match the split lists: each recorded image's label names a class whose
        folder name is on its path (checked where the paths name any class at all: symlinked class folders
        may resolve elsewhere). Swapped or renamed names are one line, before they mislabel every file."""
        classes = self.classes
        split = self.meta.get("split") or {}
        for which in ("train", "val", "test"):
            items = [(str(p), y) for p, y in (split.get(which) or []) if isinstance(y, int)]
            wrong = []  # (label, the class whose folders hold its images)
            for i, c in enumerate(classes):
                parts = [set(Path(p).parts) for p, y in items if y == i]
                other = {o: sum(o in ps for ps in parts) for o in classes if o != c}
                worst = max(other, key=other.get, default=None)
                if parts and not any(c in ps for ps in parts) and worst is not None and other[worst] > 0:
                    wrong.append((i, worst))
            if len(wrong) >= 2:  # names moved between labels; one alone may be a class folder linked elsewhere
                i, worst = wrong[0]
                raise EdgetlError(f"RUN {self.path}: {META_FILE} names label {i} {classes[i]!r}, but its {which} "
                                  f"images lie in {worst}/ folders (e.g. {next(p for p, y in items if y == i)}); "
                                  f"restore the class order of {LABELS_FILE} or re-run `edgetl train`")

    def write_meta(self) -> None:
        write_json(self.path / META_FILE, self.meta)

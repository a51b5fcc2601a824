"""Runners: load a model file (a path or bytes in memory) and run it on uint8 pixels or preprocessed inputs.

The one place TFLite (ai_edge_litert's Interpreter) and ONNX (onnxruntime) files are run: export's parity
check, the base cache's features, bench and predict all come through here. Labels, input size,
preprocessing and quantization come from the file's own metadata (edgetl.core.artifact), so a single
.tflite/.onnx file is enough. The Keras model's runner lives with the model code (edgetl.model.runner)
and is reached through the format registry, so nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from . import amx as amx_control
from . import artifact, cpu, images
from .errors import EdgetlError, first_line
from .formats import FORMATS, Format, format_of_file
from .images import preprocess, quantize

# what edgetl's int8 ONNX files declare in their metadata ("int8_weights"): s8 weights whose K-neighbour
# pairs keep |w1| + |w2| <= 128 (export.onnx_int8), exact on every CPU; "u8" (zero point 128) is too
INT8_WEIGHTS = "s8-pairs"
EXACT_INT8_WEIGHTS = {INT8_WEIGHTS: "s8 weights, bounded pairs", "u8": "u8 weights"}
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


class RuntimeSkipped(EdgetlError):
    """The artifact cannot run in this environment (e.g. Keras model without TensorFlow)."""


MAX_THREADS = 256  # runtimes' thread pools: more is a typo, not a machine


def check_threads(threads, flag: str = "--threads") -> int:
    try:
        t = int(threads)
    except (TypeError, ValueError):
        raise EdgetlError(f"{flag} {threads!r}: must be a whole number >= 1") from None
    if not 1 <= t <= MAX_THREADS:
        raise EdgetlError(f"{flag} {threads}: must be from 1 to {MAX_THREADS}")
    return t


def tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


class Runner:
    """A loaded model, from a file path or from the file's bytes in memory.

    `run(x)` is one raw batch-1 call (what bench times); `outputs(x)` and `predict_pixels(pixels)` do the
    input quantization and output dequantization around it. `meta` is the artifact metadata (labels,
    preprocessing, quantization): `load()` reads it from the file; callers that pass bytes and only use
    `outputs()` / `io()` on preprocessed inputs need none.
    """

    integrity: str | None = None  # how load() checked the file (identify_checked)

    def __init__(self, model: Path | bytes, fmt: Format, meta: dict | None = None, threads: int = 1):
        self.source, self.format, self.meta, self.threads = model, fmt, dict(meta or {}), threads
        self.name = str(model) if isinstance(model, (str, Path)) else fmt.name
        self.classes: list[str] = list(self.meta.get("classes") or [])
        self.spec: dict | None = dict(self.meta["preprocessing"]) if self.meta.get("preprocessing") else None
        self.image_size: int | None = int(self.spec["size"][0]) if self.spec else None
        self.load_seconds = 0.0
        self.session = ""  # how the runtime was set up, where that matters for the answers
        self.amx: dict = {}  # what load(amx=...) did to this process ({"amx": status, "amx_reason": why})
        # (scale, zero point, dtype) of an integer input / output tensor
        self.in_q: tuple[float, int, np.dtype] | None = None
        self.out_q: tuple[float, int, np.dtype] | None = None
        self.in_dtype = np.dtype(np.float32)

    # -- input / output conversion with the model's own quantization parameters -----------------------
    def to_input(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 (N,H,W,3) -> what the input tensor holds (quantized if it is integer)."""
        if self.in_q is None:
            return np.ascontiguousarray(x, dtype=self.in_dtype)
        scale, zp, dt = self.in_q
        return quantize(x, scale, zp, dt)

    def from_output(self, y: np.ndarray) -> np.ndarray:
        if self.out_q is None:
            return np.asarray(y, dtype=np.float32)
        scale, zp, _ = self.out_q
        return (y.astype(np.float32) - zp) * np.float32(scale)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N,H,W,3) at the model's size -> model-ready input (preprocessed, quantized)."""
        if pixels.ndim == 3:
            pixels = pixels[None]
        if tuple(pixels.shape[1:3]) != (self.image_size, self.image_size):
            raise EdgetlError(f"{self.name}: expects {self.image_size}x{self.image_size} images, got "
                              f"{pixels.shape[1]}x{pixels.shape[2]}")
        return self.to_input(preprocess(pixels, self.spec))

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_many(self, xs: np.ndarray) -> np.ndarray:
        """Model-ready inputs (N, ...) -> raw outputs (N, ...); batch 1 unless a runner does better."""
        return np.concatenate([self.run(xs[i:i + 1]) for i in range(len(xs))]) if len(xs) else np.zeros((0,))

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 inputs (N,H,W,3) -> float32 outputs (N, D)."""
        return self._rows(self.from_output(self.run_many(self.to_input(x))), len(x))

    def predict_prepared(self, xs: np.ndarray) -> np.ndarray:
        """Model-ready inputs (N, ...) -> probabilities (N, classes)."""
        y = self._rows(self.from_output(self.run_many(xs)), len(xs))
        return y[:, :len(self.classes)] if self.classes else y

    def _rows(self, y: np.ndarray, n: int) -> np.ndarray:
        """Outputs as one row per input ((0, classes) for no inputs)."""
        return y.reshape(n, -1) if n else np.zeros((0, max(1, len(self.classes))), np.float32)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.predict_prepared(self.prepare(pixels))

    def close(self) -> None:
        pass


class TFLiteRunner(Runner):
    """A .tflite file on LiteRT's interpreter (ai_edge_litert), `threads` CPU threads. Integer input and
    output tensors are (de)quantized with the interpreter's own parameters. keep_tensors=True keeps every
    intermediate tensor readable after a call (`outputs_and_tensor`), at the cost of memory."""

    def __init__(self, model, fmt=None, meta=None, threads: int = 1, keep_tensors: bool = False):
        super().__init__(model, fmt or FORMATS["tflite-fp32"], meta, threads)
        import warnings

        from ai_edge_litert.interpreter import Interpreter

        t0 = time.perf_counter()
        try:
            src = {"model_path": str(model)} if isinstance(model, (str, Path)) else {"model_content": bytes(model)}
            with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is meant for debugging
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
                self.interp = Interpreter(**src, num_threads=threads, experimental_preserve_all_tensors=keep_tensors)
            self.interp.allocate_tensors()
        except Exception as e:  # the interpreter raises ValueError/RuntimeError with long texts
            raise EdgetlError(f"{self.name}: LiteRT cannot load it ({first_line(e)})") from None
        self.load_seconds = time.perf_counter() - t0
        self.inp, self.out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.in_dtype = np.dtype(self.inp["dtype"])
        self.in_q, self.out_q = _tflite_quant(self.inp), _tflite_quant(self.out)
        shape = list(self.inp["shape"])
        if self.image_size and len(shape) == 4 and shape[1] != self.image_size:
            raise EdgetlError(f"{self.name}: input tensor {shape} does not match its metadata size {self.image_size}")

    def run(self, x):
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"]).copy()

    def tensor(self, prefix: str) -> dict:
        """The details of the last tensor whose name starts with `prefix` (the converter names a tensor
        after the Keras layer that makes it, e.g. "model/layer/..."), for `tensor_values`."""
        found = [t for t in self.interp.get_tensor_details() if t["name"].split(";")[0].startswith(prefix)]
        if not found:
            raise EdgetlError(f"{self.name}: no tensor named {prefix}*")
        return found[-1]

    def tensor_values(self, x: np.ndarray, tensor: dict) -> np.ndarray:
        """What `tensor` (from `tensor()`) holds after each preprocessed input of x, dequantized to float32
        (N, ...). Needs keep_tensors=True."""
        scale, zp = tensor["quantization"]
        values = []
        for i in range(len(x)):
            self.run(self.to_input(x[i:i + 1]))
            v = self.interp.get_tensor(tensor["index"]).astype(np.float32)
            values.append((v - zp) * np.float32(scale) if scale else v)
        return np.concatenate(values) if values else np.zeros((0, *(int(s) for s in tensor["shape"][1:])), np.float32)

    def io(self) -> dict:
        """Names, shapes, dtypes and quantization of the input and output tensors (artifact metadata)."""
        def q(t):
            return None if t is None else {"scale": t[0], "zero_point": t[1], "dtype": np.dtype(t[2]).name}

        return {"in_name": self.inp["name"], "in_shape": [int(s) for s in self.inp["shape"]],
                "in_dtype": self.in_dtype.name, "out_name": self.out["name"],
                "out_dtype": np.dtype(self.out["dtype"]).name, "qi": q(self.in_q), "qo": q(self.out_q)}


def _tflite_quant(detail: dict):
    dt = np.dtype(detail["dtype"])
    if dt.kind not in "iu":
        return None
    scale, zp = detail.get("quantization", (0.0, 0))
    if not scale:
        qp = detail.get("quantization_parameters") or {}
        scales, zps = qp.get("scales", []), qp.get("zero_points", [])
        if len(scales) == 0:
            return None
        scale, zp = float(scales[0]), int(zps[0])
    return float(scale), int(zp), dt


class ONNXRunner(Runner):
    """An .onnx file on onnxruntime's CPU provider, `threads` intra-op threads, sequential execution.
    Which session an int8 file gets is `session` (see session_mode); float inputs and outputs are
    passed through, integer ones are (de)quantized with the parameters stored in the metadata."""

    BATCH = 16  # inputs per call when the graph's batch dimension is free (parity over many images)

    def __init__(self, model, fmt=None, meta=None, threads: int = 1, precise: bool | None = None):
        """precise: session.x64quantprecision=1 on (True) or off (False); None lets the file and the
        CPU decide (see session_mode)."""
        super().__init__(model, fmt or FORMATS["onnx-fp32"], meta, threads)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads == 1:  # no spinning helper threads when a single core is asked for
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        auto = precise is None
        if auto:
            self.session = session_mode(self.meta)
            precise = self.session.startswith("x64quantprecision")
        t0 = time.perf_counter()
        self.sess = self._open(ort, so, precise, fall_back=auto)
        self.load_seconds = time.perf_counter() - t0
        i, o = self.sess.get_inputs()[0], self.sess.get_outputs()[0]
        self.in_name, self.out_name, self.in_shape = i.name, o.name, i.shape
        self.in_dtype = np.dtype(ONNX_DTYPES.get(i.type, "float32"))
        self.out_type = ONNX_DTYPES.get(o.type, o.type)
        q = self.meta.get("quantization") or {}
        if self.in_dtype.kind in "iu" and q.get("input"):
            self.in_q = (float(q["input"]["scale"]), int(q["input"]["zero_point"]), self.in_dtype)
        if q.get("output") and self.out_type in ("int8", "uint8"):
            self.out_q = (float(q["output"]["scale"]), int(q["output"]["zero_point"]), np.dtype(self.out_type))

    def _open(self, ort, so, precise: bool, fall_back: bool):
        """The session; with precise=True one with session.x64quantprecision=1, checked by one run.
        onnxruntime cannot apply that option to some s8 files (shared or missing per-channel zero
        points): with fall_back those get the default session, and `session` says their sums may
        saturate; without, that is an error."""
        src = str(self.source) if isinstance(self.source, (str, Path)) else bytes(self.source)
        if precise:
            try:
                so.add_session_config_entry("session.x64quantprecision", "1")
                sess = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
                i = sess.get_inputs()[0]
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
                sess.run(None, {i.name: np.zeros(shape, ONNX_DTYPES.get(i.type, "float32"))})
                return sess
            except Exception as e:
                if not fall_back:
                    raise EdgetlError(f"{self.name}: onnxruntime cannot run it with session.x64quantprecision=1 "
                                      f"({first_line(e)})") from None
                so.add_session_config_entry("session.x64quantprecision", "0")
                self.session = ("default (session.x64quantprecision=1 fails on this file: its int8 sums may "
                                "saturate on this CPU)")
        try:
            return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgetlError(f"{self.name}: onnxruntime cannot load it ({first_line(e)})") from None

    def run(self, x):
        return self.sess.run([self.out_name], {self.in_name: x})[0]

    def run_many(self, xs):
        step = 1 if isinstance(self.in_shape[0], int) else self.BATCH
        return np.concatenate([self.run(xs[i:i + step]) for i in range(0, len(xs), step)]) if len(xs) else xs[:0]

    def io(self) -> dict:
        return {"in_name": self.in_name, "in_shape": [s if isinstance(s, int) else None for s in self.in_shape],
                "in_dtype": self.in_dtype.name, "out_name": self.out_name, "out_dtype": self.out_type,
                "qi": None, "qo": None}


def session_mode(meta: dict) -> str:
    """How an onnxruntime session gets exact int8 answers on this CPU. edgetl's int8 files store weights
    that cannot saturate anywhere (EXACT_INT8_WEIGHTS); other int8 files on an x86 CPU without VNNI get
    onnxruntime's session.x64quantprecision=1, which converts s8 weights to u8 at load time."""
    if FORMATS.get(meta.get("format"), FORMATS["onnx-fp32"]).precision != "int8":
        return "default"
    if meta.get("int8_weights") in EXACT_INT8_WEIGHTS:
        return f"default ({EXACT_INT8_WEIGHTS[meta['int8_weights']]}: exact on every CPU)"
    if cpu.u8s8_saturates():
        return "x64quantprecision=1 (s8 weights on an x86 CPU without VNNI)"
    return "default (this CPU does not saturate int8 sums)"


def keras_meta(run_path: Path) -> dict:
    """Metadata for a run's model.keras, in the artifact-metadata shape (from RUN/edgetl.json)."""
    from .rundir import Run

    run = Run(run_path)
    return {"format": "keras", "classes": run.classes, "preprocessing": run.preprocessing,
            "macs": run.meta.get("macs"), "source": {"run": str(run.path), "alpha": run.meta.get("alpha"),
                                                      "image_size": run.image_size}}


def identify(path: str | Path, verify: bool = False) -> tuple[Format, dict]:
    """(registry format, embedded metadata) of an artifact file; clear error for anything else. verify:
    the file's integrity is checked first (check_integrity)."""
    fmt, meta, _ = identify_checked(path, verify)
    return fmt, meta


def identify_checked(path: str | Path, verify: bool = False) -> tuple[Format, dict, str | None]:
    """identify, plus how the file was checked: "manifest", "embedded", "unverified" (no valid seal and no
    manifest entry: named as such in predict's and bench's output) or None (not checked). With `verify`, a
    file beside a run that it was not made from (another model.keras or other labels) is refused."""
    p = Path(path)
    if p.suffix == ".keras" or p.name == FORMATS["keras"].filename:
        if not p.is_file():
            raise EdgetlError(f"{p}: no such model file")
        return FORMATS["keras"], keras_meta(p.parent), None
    checked = check_integrity(p) if verify else None
    meta = artifact.read_meta(p)
    if checked == "unverified" and artifact.SEAL_KEY in meta:  # damage in the seal's own key
        raise EdgetlError(f"{p}: its sealed sha256 cannot be found (damaged); re-export it with `edgetl export` "
                          "(or pass --no-verify)")
    for k in ("classes", "preprocessing"):
        if k not in meta:
            raise EdgetlError(f"{p}: its edgetl metadata lacks {k!r}; re-export it with `edgetl export`")
    if problem := images.spec_problem(meta["preprocessing"]):
        raise EdgetlError(f"{p}: its edgetl metadata's preprocessing {problem}; re-export it with `edgetl export`")
    suffix = ".tflite" if artifact.sniff(p) == "tflite" else ".onnx"
    fmt = FORMATS.get(meta.get("format"))
    if fmt is None or fmt.suffix != suffix:
        try:
            fmt = format_of_file(p)
        except EdgetlError:
            fmt = None
        if fmt is None or fmt.suffix != suffix:  # e.g. an ONNX file named .tflite
            fmt = FORMATS["tflite-fp32" if suffix == ".tflite" else "onnx-fp32"]
    if verify:
        check_belongs(p, meta)
    return fmt, meta, checked


def check_belongs(p: Path, meta: dict) -> None:
    """A file inside a run folder must come from that run: the model.keras it names (embedded model_sha256)
    and its labels. Files copied away from their run are not checked here (their seal is)."""
    from .rundir import LABELS_FILE, META_FILE, MODEL_FILE, Run, sha256_file

    folder = p.parent
    if not ((folder / META_FILE).is_file() and (folder / MODEL_FILE).is_file()):
        return
    fix = f"re-export it with `edgetl export {folder}` (or pass --no-verify)"
    made_from = (meta.get("source") or {}).get("model_sha256")
    if made_from and made_from != _sha_cached(folder / MODEL_FILE, sha256_file):
        raise EdgetlError(f"{p}: made from another {MODEL_FILE} than the one beside it (another run, or a model "
                          f"replaced since); {fix}")
    try:
        classes = Run(folder).classes
    except EdgetlError:
        return
    if list(meta.get("classes") or []) != classes:
        raise EdgetlError(f"{p}: its labels {list(meta.get('classes') or [])} differ from the run's {classes} "
                          f"({META_FILE}, {LABELS_FILE}); {fix}")


_SHA_CACHE: dict = {}


def _sha_cached(path: Path, sha) -> str:
    """sha256 of a file, once per (path, size, mtime) in this process (bench checks several files of one run)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha(path)
    return _SHA_CACHE[key]


def check_integrity(path: str | Path) -> str:
    """artifact.verify, with the file's own errors (missing, empty) in the words read_meta uses."""
    p = Path(path)
    artifact.sniff(p)
    return artifact.verify(p)


def load(path: str | Path, threads: int = 1, allow_keras: bool = True, verify: bool = True,
         amx: str | None = None) -> Runner:
    """Load an artifact file (TFLite/ONNX, by its bytes) or a run's model.keras (needs TensorFlow).
    verify: check the file's sha256 first (check_integrity). amx: "auto", "on" or "off" decides, before
    the runtime starts, whether this process may use AMX (core.amx; irreversible for the process: bench
    and predict call it once per process); None leaves the process as it is."""
    threads = check_threads(threads)
    if amx is not None:
        amx_control.check_mode(amx)
    p = Path(path)
    fmt, meta, checked = identify_checked(p, verify)
    if fmt.runtime == "tensorflow":
        if not allow_keras:
            raise EdgetlError(f"{p}: a Keras model; give an exported .tflite or .onnx file "
                              f"(`edgetl export RUN` writes them)")
        if not tensorflow_installed():
            raise RuntimeSkipped("TensorFlow not installed")
    info = amx_control.control(amx, p) if amx is not None and fmt.runtime != "tensorflow" else {}
    runner = fmt.runner_class()(p, fmt, meta, threads)
    runner.amx = info
    runner.integrity = checked
    return runner


def runtime_versions() -> dict:
    """Versions of the runtimes that are installed (package metadata only: never imports TensorFlow)."""
    from .rundir import versions

    return versions("ai-edge-litert", "onnxruntime", "numpy", "tensorflow", "tf-keras")

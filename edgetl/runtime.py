"""Runtime layer: load any artifact of the format registry and run it on uint8 pixels or model inputs.

TFLite runs through ai_edge_litert's Interpreter, ONNX through onnxruntime, the Keras model through
TensorFlow only when it is installed. Labels, input size, preprocessing and quantization come from
the artifact itself (edgetl.artifact.read_meta), so a single .tflite/.onnx file is enough.
TensorFlow is never imported for TFLite/ONNX (this module runs on a Pi with the light install).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from . import artifact, cpu
from .data import preprocess, quantize
from .errors import EdgetlError
from .formats import FORMATS, Format, format_of_file


class RuntimeSkipped(EdgetlError):
    """The artifact cannot run in this environment (e.g. Keras model without TensorFlow)."""


def check_threads(threads: int, flag: str = "--threads") -> int:
    try:
        t = int(threads)
    except (TypeError, ValueError):
        raise EdgetlError(f"{flag} {threads!r}: must be a whole number >= 1") from None
    if t <= 0:
        raise EdgetlError(f"{flag} {threads}: must be >= 1")
    return t


def tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


class Model:
    """A loaded artifact. `run(x)` takes a model-ready batch-1 input; `predict_pixels` does everything."""

    def __init__(self, path: Path, fmt: Format, meta: dict, threads: int):
        self.path, self.format, self.meta, self.threads = path, fmt, meta, threads
        self.classes: list[str] = list(meta["classes"])
        self.spec: dict = dict(meta["preprocessing"])
        self.image_size: int = int(self.spec["size"][0])
        self.load_seconds: float = 0.0
        self.session: str = ""  # how the runtime was set up, when it matters for the answers
        # (scale, zero_point, dtype) of the model's input/output when they are integer tensors
        self.in_q: tuple[float, int, np.dtype] | None = None
        self.out_q: tuple[float, int, np.dtype] | None = None
        self.in_dtype = np.dtype(np.float32)

    # -- input/output conversion with the interpreter's own quantization params ------------------------
    def to_input(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 (N,H,W,3) -> what the model's input tensor holds (quantized if int)."""
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
            raise EdgetlError(f"{self.path}: expects {self.image_size}x{self.image_size} images, got "
                              f"{pixels.shape[1]}x{pixels.shape[2]}")
        return self.to_input(preprocess(pixels, self.spec))

    def run(self, x: np.ndarray) -> np.ndarray:  # batch-1 raw call (timed by bench)
        raise NotImplementedError

    def predict_prepared(self, xs: np.ndarray) -> np.ndarray:
        """Model-ready inputs (N,...) -> probabilities (N, C), one image at a time (batch-1 graphs)."""
        out = np.empty((len(xs), len(self.classes)), np.float32)
        for i in range(len(xs)):
            out[i] = self.from_output(self.run(xs[i:i + 1])).reshape(-1)[: len(self.classes)]
        return out

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.predict_prepared(self.prepare(pixels))

    def close(self) -> None:
        pass


class TFLiteModel(Model):
    def __init__(self, path, fmt, meta, threads):
        super().__init__(path, fmt, meta, threads)
        from ai_edge_litert.interpreter import Interpreter

        t0 = time.perf_counter()
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads)
            self.interp.allocate_tensors()
        except Exception as e:  # the interpreter raises ValueError/RuntimeError with long texts
            raise EdgetlError(f"{path}: LiteRT cannot load it ({_first_line(e)})") from None
        self.load_seconds = time.perf_counter() - t0
        inp, outp = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.in_index, self.out_index = inp["index"], outp["index"]
        self.in_dtype = np.dtype(inp["dtype"])
        self.in_q = _quant(inp)
        self.out_q = _quant(outp)
        shape = list(inp["shape"])
        if len(shape) == 4 and shape[1] != self.image_size:
            raise EdgetlError(f"{path}: input tensor {shape} does not match its metadata size {self.image_size}")

    def run(self, x):
        self.interp.set_tensor(self.in_index, x)
        self.interp.invoke()
        return self.interp.get_tensor(self.out_index)


def _quant(detail: dict):
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


class ONNXModel(Model):
    def __init__(self, path, fmt, meta, threads):
        super().__init__(path, fmt, meta, threads)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads == 1:  # no spinning helper threads when a single core is asked for
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = self._session_mode(meta)
        t0 = time.perf_counter()
        self.sess = self._open(ort, path, so, self.session.startswith("x64quantprecision"))
        self.load_seconds = time.perf_counter() - t0
        i, o = self.sess.get_inputs()[0], self.sess.get_outputs()[0]
        self.in_name, self.out_name = i.name, o.name
        self.in_dtype = np.dtype({"tensor(float)": np.float32, "tensor(int8)": np.int8,
                                  "tensor(uint8)": np.uint8}.get(i.type, np.float32))
        q = meta.get("quantization") or {}
        if self.in_dtype.kind in "iu" and q.get("input"):
            self.in_q = (float(q["input"]["scale"]), int(q["input"]["zero_point"]), self.in_dtype)
        if q.get("output") and o.type in ("tensor(int8)", "tensor(uint8)"):
            self.out_q = (float(q["output"]["scale"]), int(q["output"]["zero_point"]),
                          np.dtype(np.int8 if o.type == "tensor(int8)" else np.uint8))

    def _open(self, ort, path, so, precise: bool):
        """The session; with precise=True one with session.x64quantprecision=1, checked by one run.
        onnxruntime cannot apply that option to some s8 files (shared or missing per-channel zero
        points): those fall back to the default session, and `session` says their sums may saturate."""
        if precise:
            try:
                so.add_session_config_entry("session.x64quantprecision", "1")
                sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
                i = sess.get_inputs()[0]
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
                dtype = {"tensor(int8)": np.int8, "tensor(uint8)": np.uint8}.get(i.type, np.float32)
                sess.run(None, {i.name: np.zeros(shape, dtype)})
                return sess
            except Exception:
                so.add_session_config_entry("session.x64quantprecision", "0")
                self.session = ("default (session.x64quantprecision=1 fails on this file: its int8 sums may "
                                "saturate on this CPU)")
        try:
            return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgetlError(f"{path}: onnxruntime cannot load it ({_first_line(e)})") from None

    @staticmethod
    def _session_mode(meta: dict) -> str:
        """How the session gets exact int8 answers on this CPU. edgetl's int8 files store GEMM weights
        as u8 (no saturation anywhere); other int8 files on an x86 CPU without VNNI get onnxruntime's
        session.x64quantprecision=1, which converts s8 weights to u8 at load time."""
        if FORMATS.get(meta.get("format"), FORMATS["onnx-fp32"]).precision != "int8":
            return "default"
        if meta.get("int8_weights") == "u8":
            return "default (u8 weights: exact on every CPU)"
        if cpu.u8s8_saturates():
            return "x64quantprecision=1 (s8 weights on an x86 CPU without VNNI)"
        return "default (this CPU does not saturate int8 sums)"

    def run(self, x):
        return self.sess.run([self.out_name], {self.in_name: x})[0]


class KerasModel(Model):
    """The trained Keras model (reference row in bench). Needs TensorFlow; never used by predict."""

    def __init__(self, path, fmt, meta, threads):
        super().__init__(path, fmt, meta, threads)
        if not tensorflow_installed():
            raise RuntimeSkipped("TensorFlow not installed")
        from .tfenv import tf_and_keras

        tf, keras = tf_and_keras()
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        t0 = time.perf_counter()
        self.model = _load_keras(path, meta)
        self.load_seconds = time.perf_counter() - t0
        # The baseline is the model traced once into a graph (tf.function), not eager calls or
        # model.predict (both add large per-call overhead): the strongest plain-TensorFlow batch-1 number.
        size = self.image_size
        self._fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True,
                               input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    def run(self, x):
        return self._fn(x).numpy()

    def other_modes(self) -> dict:
        """The ways people also call a Keras model on one image (bench reports them next to the graph call)."""
        return {"eager_call": lambda x: self.model(x, training=False).numpy(),
                "model_predict": lambda x: self.model.predict(x, verbose=0)}


def _load_keras(path: Path, meta: dict):
    try:
        from . import train  # A's loader knows about QAT models (quantize_scope)

        loader = getattr(train, "load_run_model", None)
    except ImportError:
        loader = None
    if loader is not None:
        return loader(path.parent)
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    return keras.models.load_model(str(path), compile=False)


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:160]


def keras_meta(run_path: Path) -> dict:
    """Metadata for a run's model.keras, in the artifact-metadata shape (from RUN/edgetl.json)."""
    from .rundir import Run

    run = Run(run_path)
    return {"format": "keras", "classes": run.classes, "preprocessing": run.preprocessing,
            "macs": run.meta.get("macs"), "source": {"run": str(run.path), "alpha": run.meta.get("alpha"),
                                                      "image_size": run.image_size}}


def identify(path: str | Path) -> tuple[Format, dict]:
    """(registry format, embedded metadata) of an artifact file; clear error for anything else."""
    p = Path(path)
    if p.suffix == ".keras" or p.name == FORMATS["keras"].filename:
        if not p.is_file():
            raise EdgetlError(f"{p}: no such model file")
        return FORMATS["keras"], keras_meta(p.parent)
    meta = artifact.read_meta(p)
    for k in ("classes", "preprocessing"):
        if k not in meta:
            raise EdgetlError(f"{p}: its edgetl metadata lacks {k!r}; re-export it with `edgetl export`")
    kind = artifact.sniff(p)
    name = meta.get("format")
    if name in FORMATS and FORMATS[name].suffix == (".tflite" if kind == "tflite" else ".onnx"):
        return FORMATS[name], meta
    try:
        fmt = format_of_file(p)
    except EdgetlError:
        fmt = FORMATS["tflite-fp32" if kind == "tflite" else "onnx-fp32"]
    if fmt.suffix != (".tflite" if kind == "tflite" else ".onnx"):  # e.g. an ONNX file named .tflite
        fmt = FORMATS["tflite-fp32" if kind == "tflite" else "onnx-fp32"]
    return fmt, meta


def load(path: str | Path, threads: int = 1, allow_keras: bool = True) -> Model:
    """Load an artifact by its bytes (TFLite/ONNX) or a run's model.keras (needs TensorFlow)."""
    threads = check_threads(threads)
    p = Path(path)
    fmt, meta = identify(p)
    if fmt.runtime == "tensorflow":
        if not allow_keras:
            raise EdgetlError(f"{p}: a Keras model; give an exported .tflite or .onnx file "
                              f"(`edgetl export RUN` writes them)")
        return KerasModel(p, fmt, meta, threads)
    if fmt.runtime == "litert":
        return TFLiteModel(p, fmt, meta, threads)
    return ONNXModel(p, fmt, meta, threads)


def runtime_versions() -> dict:
    """Versions of the runtimes that are installed (metadata only: never imports TensorFlow)."""
    from .rundir import versions

    return versions("ai-edge-litert", "onnxruntime", "numpy", "tensorflow", "tf-keras")

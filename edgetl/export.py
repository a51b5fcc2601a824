"""`edgetl export RUN`: TFLite and ONNX artifacts (float and int8), each parity-checked and self-describing.

Flow: validate everything (run, model file, formats, calibration/validation images) before any work ->
load the Keras model and the run's validation images -> per format: convert to bytes in memory, embed
edgetl metadata, read the metadata back and run the parity check through the deployment runtime
(ai_edge_litert / onnxruntime) -> only then write the file atomically -> manifest.json + result table.
A file that fails its check is never written (and a stale file of that format is removed).
"""

from __future__ import annotations

import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cpu, data as D
from .artifact import embed_onnx, embed_tflite, read_onnx_meta_from_session, read_tflite_meta
from .errors import ArtifactCheckError, EdgetlError, describe
from .formats import FORMATS, Format, parse_formats
from .onnx_int8 import saturation_risks, unsigned_weights
from .rundir import MANIFEST_FILE, Run, sha256_file, write_bytes, write_json

DEFAULT_CALIB = 200
DEFAULT_MAX_DROP = 2.0  # accuracy points an int8 artifact may lose against the Keras model
DEFAULT_SIZE_BUDGET = 30.0  # int8 file size, % of the same family's fp32 file (edgetl.budget; 0 = off)
# Float artifacts: max |p_artifact - p_keras| over the validation set (per-format override: options["max_prob_diff"])
FLOAT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}  # fp16 weights: measured up to 0.019 at 128 px
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"


@dataclass
class ExportContext:
    run: Run
    model: object  # the run's model (a QAT model for QAT runs: int8 formats use its learned ranges)
    float_model: object  # float graph (for QAT runs: the QAT weights with fake-quant stripped)
    float_probs: np.ndarray
    size: int
    spec: dict
    classes: list
    val_x: np.ndarray  # preprocessed float32
    val_y: np.ndarray
    keras_probs: np.ndarray
    macs: int
    qat: bool
    calib_items: list
    calib_n: int
    seed: int
    console: object
    _calib_x: np.ndarray | None = None
    cache: dict = field(default_factory=dict)

    def calibration_inputs(self) -> np.ndarray:
        """Preprocessed calibration images: a seeded sample of the run's training split (decoded once)."""
        if self._calib_x is None:
            items = D.seeded_subset(self.calib_items, self.calib_n, self.seed)
            pix, _, _, _ = D.load_batch(items, self.size)
            if len(pix) == 0:
                raise EdgetlError(f"RUN {self.run.path}: none of the {len(items)} training images could be decoded "
                                  "for int8 calibration")
            self._calib_x = D.preprocess(pix, self.spec)
        return self._calib_x


# ---------------------------------------------------------------------------------------------- checks
def check_run(run_path: str | Path) -> Run:
    run = Run(run_path)
    model_path = run.require_model()
    if model_path.stat().st_size == 0 or not zipfile.is_zipfile(model_path):
        raise EdgetlError(f"RUN {run.path}: {model_path.name} is corrupt (not a Keras archive); re-run `edgetl train`")
    return run


def _existing(items):
    return [(p, y) for p, y in items if Path(p).is_file()]


def check_inputs(run_path, fmt_spec: str | None, int8: bool, calib: int, max_drop: float,
                 size_budget: float = DEFAULT_SIZE_BUDGET):
    """Everything the user can get wrong, checked before TensorFlow is imported."""
    fmts = parse_formats(fmt_spec, int8)
    if not 0 <= size_budget <= 100:
        raise EdgetlError(f"--size-budget {size_budget:g}: must be a percentage of the fp32 file size, "
                          "from 0 (off) to 100")
    if calib < 1:
        raise EdgetlError(f"--calib {calib}: must be a positive number of images")
    if max_drop < 0:
        raise EdgetlError(f"--max-drop {max_drop}: must be >= 0 accuracy points")
    run = check_run(run_path)
    qat = bool(run.meta.get("qat"))
    calib_items = _existing(run.split_items("train"))
    if any(f.needs_calibration for f in fmts) and not qat and not calib_items:
        n = len(run.split_items("train"))
        raise EdgetlError(
            f"RUN {run.path}: int8 export needs training images for calibration, but "
            + (f"none of the {n} recorded training files exist any more" if n else "the run records no training split")
            + "; export float formats only (drop --int8) or re-run `edgetl train`")
    val_items = _existing(run.split_items("val"))
    if not val_items:
        raise EdgetlError(f"RUN {run.path}: no validation images found for the parity check "
                          "(edgetl.json split.val is empty or its files are gone)")
    return run, fmts, calib_items, val_items


# ---------------------------------------------------------------------------------------------- model
def load_model(run: Run):
    """The run's Keras model via train.load_run_model (QAT models open inside quantize_scope)."""
    try:
        from .train import load_run_model
    except ImportError:  # train.py not there yet in a partial checkout
        load_run_model = _load_run_model
    try:
        return load_run_model(run)
    except EdgetlError:
        raise
    except Exception as e:
        raise EdgetlError(f"RUN {run.path}: cannot load {run.model_path.name} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                          "re-run `edgetl train`") from None


def _load_run_model(run: Run):
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    if run.meta.get("qat"):
        from .qat import load_qat_model

        return load_qat_model(run.model_path)
    return keras.models.load_model(run.model_path, compile=False)


def count_macs(model) -> int:
    """Multiply-accumulates per image from the Keras layers (conv, depthwise conv, dense)."""
    total = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # tfmot QuantizeWrapper
        kind = type(inner).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        out_shape = layer.output_shape if not isinstance(layer.output_shape, list) else layer.output_shape[0]
        in_shape = layer.input_shape if not isinstance(layer.input_shape, list) else layer.input_shape[0]
        if kind == "Dense":
            total += int(in_shape[-1]) * int(out_shape[-1])
            continue
        kh, kw = inner.kernel_size
        spatial = int(out_shape[1]) * int(out_shape[2])
        if kind == "Conv2D":
            groups = getattr(inner, "groups", 1) or 1
            total += kh * kw * (int(in_shape[-1]) // groups) * int(out_shape[-1]) * spatial
        else:
            total += kh * kw * int(out_shape[-1]) * spatial
    return int(total)


def strip_quantization(qmodel):
    """Float twin of a QAT model: same (QAT-trained) weights, fake-quant nodes removed.

    Float artifacts of a QAT run come from this graph: converting the fake-quant graph to float formats
    gives files that match neither the QAT nor the float model (measured: ONNX 64% agreement).
    """
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()

    def clone(layer):
        if isinstance(layer, QuantizeLayer):
            return keras.layers.Activation("linear", name=layer.name)
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        cfg = inner.get_config()
        act = getattr(inner, "activation", None)
        if act is not None and not callable(getattr(keras.activations, str(cfg.get("activation")), None)):
            while hasattr(act, "activation"):  # QuantizeAwareActivation keeps the original activation
                act = act.activation
            linear = act is None or type(act).__name__ == "NoOpActivation"
            cfg["activation"] = "linear" if linear else keras.activations.serialize(act)
        return inner.__class__.from_config(cfg)

    fm = keras.models.clone_model(qmodel, clone_function=clone)
    for src, dst in zip(qmodel.layers, fm.layers):
        if not dst.weights:
            continue
        # by short variable name: a wrapper lists its inner kernel (sometimes twice) among quantizer variables
        by_name = {}
        for v in src.weights:
            by_name.setdefault(v.name.split("/")[-1].split(":")[0], v)
        try:
            dst.set_weights([by_name[w.name.split("/")[-1].split(":")[0]].numpy() for w in dst.weights])
        except KeyError as e:
            raise EdgetlError(f"cannot strip quantization from layer {src.name!r} (no variable {e})") from None
    return fm


def keras_predict(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    from .tfenv import tf_and_keras

    tf, _ = tf_and_keras()
    f = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    out = [np.asarray(f(tf.constant(x[i:i + batch]))) for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32)


def _serving_fn(model, size: int, batch: int | None = 1):
    from .tfenv import tf_and_keras

    tf, _ = tf_and_keras()

    @tf.function(input_signature=[tf.TensorSpec([batch, size, size, 3], tf.float32, name=INPUT_NAME)])
    def serve(x):
        return {OUTPUT_NAME: model(x, training=False)}

    return serve


# ---------------------------------------------------------------------------------------------- converters
def _tflite_converter(ctx: ExportContext, quantized: bool = False):
    from .tfenv import tf_and_keras, tflite_converter

    tf, _ = tf_and_keras()
    fn = _serving_fn(ctx.model if quantized else ctx.float_model, ctx.size, 1)
    return tf, tflite_converter(fn)


def convert_tflite_fp32(ctx: ExportContext, fmt: Format) -> bytes:
    _, conv = _tflite_converter(ctx)
    return bytes(conv.convert())


def convert_tflite_fp16(ctx: ExportContext, fmt: Format) -> bytes:
    tf, conv = _tflite_converter(ctx)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    return bytes(conv.convert())


def tflite_int8_bytes(ctx: ExportContext, io: str = "int8") -> bytes:
    """Full-integer TFLite: int8 weights and activations, int8/uint8 (or float32) input and output.

    PTQ runs calibrate on a seeded sample of training images; QAT runs carry their learned ranges in
    the graph's fake-quant nodes and the converter uses those (no calibration).
    """
    key = f"tflite-int8-{io}"
    if key in ctx.cache:
        return ctx.cache[key]
    tf, conv = _tflite_converter(ctx, quantized=True)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if not ctx.qat:
        x = ctx.calibration_inputs()

        def rep():
            for i in range(len(x)):
                yield [x[i:i + 1]]

        conv.representative_dataset = rep
        # int8-only kernels; a QAT graph is left unrestricted (the converter then demands a
        # representative dataset) and its fake-quant nodes quantize every tensor anyway
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float32":
        conv.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
        conv.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
    out = bytes(conv.convert())
    ctx.cache[key] = out
    return out


def convert_tflite_int8(ctx: ExportContext, fmt: Format) -> bytes:
    return tflite_int8_bytes(ctx, fmt.options.get("io", "int8"))


def convert_onnx_fp32(ctx: ExportContext, fmt: Format) -> bytes:
    import tf2onnx

    from .tfenv import tf_and_keras

    tf, _ = tf_and_keras()
    fn = _serving_fn(ctx.float_model, ctx.size, None)
    sig = (tf.TensorSpec([None, ctx.size, ctx.size, 3], tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=fmt.options.get("opset", 17))
    _rename_io(proto)
    return proto.SerializeToString()


def _rename_io(proto) -> None:
    """Stable I/O names ("input", "probabilities") whatever the converter called them."""
    g = proto.graph
    renames = {}
    if g.input and g.input[0].name != INPUT_NAME:
        renames[g.input[0].name] = INPUT_NAME
    if g.output and g.output[0].name != OUTPUT_NAME:
        renames[g.output[0].name] = OUTPUT_NAME
    if not renames:
        return
    for v in list(g.input) + list(g.output):
        v.name = renames.get(v.name, v.name)
    for n in g.node:
        n.input[:] = [renames.get(i, i) for i in n.input]
        n.output[:] = [renames.get(o, o) for o in n.output]


def convert_onnx_int8(ctx: ExportContext, fmt: Format) -> bytes:
    """ONNX int8 QDQ from the int8 TFLite graph (its calibrated or QAT-learned ranges), via tf2onnx.

    Measured (issue 3, benchmarks/bench_export.py): onnxruntime's own static QDQ calibration
    (MinMax/Entropy) loses 15-20 points on MobileNetV2 here and Percentile 5; re-using the TFLite
    converter's per-tensor ranges keeps the int8 ONNX within the TFLite int8 accuracy.
    Input/output stay float32 (QuantizeLinear/DequantizeLinear at the edges), the usual ONNX QDQ form.
    """
    method = fmt.options.get("method", "tflite")
    if method == "ort":
        return onnx_int8_ort(ctx, fmt)
    return onnx_int8_from_tflite(ctx, fmt)


def onnx_int8_from_tflite(ctx: ExportContext, fmt: Format) -> bytes:
    return onnx_from_tflite(tflite_int8_bytes(ctx, "float32"), fmt)


def onnx_from_tflite(tfl: bytes, fmt: Format) -> bytes:
    import tempfile

    import tf2onnx

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.tflite"
        p.write_bytes(tfl)
        proto, _ = tf2onnx.convert.from_tflite(str(p), opset=fmt.options.get("opset", 17))
    _rename_io(proto)
    unsigned_weights(proto)
    return proto.SerializeToString()


def onnx_int8_ort(ctx: ExportContext, fmt: Format, calibrate_method: str = "MinMax",
                  extra_options: dict | None = None, nodes_to_exclude=None) -> bytes:
    """onnxruntime static QDQ quantization of the float ONNX graph (kept for the benchmark comparison)."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    fp32 = converted(ctx, FORMATS["onnx-fp32"])
    x = ctx.calibration_inputs()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(range(len(x)))

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {INPUT_NAME: x[i:i + 1]}

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=fmt.options.get("per_channel", True), activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, calibrate_method),
                        nodes_to_exclude=nodes_to_exclude or [], extra_options=extra_options or {})
        import onnx

        proto = onnx.load(str(dst))
        unsigned_weights(proto)
        return proto.SerializeToString()


CONVERTERS = {
    "tflite-fp32": convert_tflite_fp32,
    "tflite-fp16": convert_tflite_fp16,
    "tflite-int8": convert_tflite_int8,
    "onnx-fp32": convert_onnx_fp32,
    "onnx-int8": convert_onnx_int8,
}


def converted(ctx: ExportContext, fmt: Format) -> bytes:
    """fmt's converter output, made once per export (the size budget's fp32 reference and the ORT int8
    path reuse it)."""
    if fmt.name not in ctx.cache:
        ctx.cache[fmt.name] = CONVERTERS[fmt.name](ctx, fmt)
    return ctx.cache[fmt.name]


# ---------------------------------------------------------------------------------------------- runtimes
def _qparams(detail) -> dict | None:
    scale, zp = detail["quantization"]
    if detail["dtype"] in (np.float32, np.float16) or not scale:
        return None
    return {"scale": float(scale), "zero_point": int(zp), "dtype": np.dtype(detail["dtype"]).name}


def run_tflite(model: bytes, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Probabilities of float32 inputs x through ai_edge_litert (quantizing int8/uint8 I/O as recorded)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    qi, qo = _qparams(inp), _qparams(out)
    probs = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        if qi:
            xi = D.quantize(xi, qi["scale"], qi["zero_point"], inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"])
        if qo:
            y = (y.astype(np.float32) - qo["zero_point"]) * qo["scale"]
        probs.append(np.asarray(y, np.float32).reshape(-1))
    io = {"input": inp, "output": out, "qi": qi, "qo": qo}
    return np.stack(probs), io


def run_onnx(model: bytes, x: np.ndarray, batch: int = 16, precise: bool = False):
    """Probabilities through onnxruntime; precise=True sets session.x64quantprecision=1 (u8 x u8 GEMMs
    on x86 CPUs without VNNI, which cannot saturate)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if precise:
        so.add_session_config_entry("session.x64quantprecision", "1")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    i0, o0 = sess.get_inputs()[0], sess.get_outputs()[0]
    fixed = isinstance(i0.shape[0], int)
    step = 1 if fixed else batch
    out = [sess.run([o0.name], {i0.name: x[i:i + step]})[0] for i in range(0, len(x), step)]
    return np.concatenate(out).astype(np.float32), sess


# ---------------------------------------------------------------------------------------------- metadata
def artifact_meta(ctx: ExportContext, fmt: Format, io: dict, weights_quant: dict | None = None) -> dict:
    from . import __version__

    w = ctx.run.meta.get("weights") or {}
    quant = None
    if io.get("qi") or io.get("qo"):
        quant = {"input": io.get("qi"), "output": io.get("qo")}
    return {
        "edgetl_version": __version__,
        "format": fmt.name,
        "classes": list(ctx.classes),
        "input": {"name": io["in_name"], "shape": io["in_shape"], "layout": "NHWC", "dtype": io["in_dtype"]},
        "output": {"name": io["out_name"], "shape": [1, len(ctx.classes)], "dtype": io["out_dtype"],
                   "kind": "probabilities"},
        "preprocessing": dict(ctx.spec),
        "quantization": quant,
        **({"weights_quantization": weights_quant} if weights_quant else {}),
        **({"int8_weights": "u8"} if fmt.suffix == ".onnx" and fmt.precision == "int8" else {}),
        "macs": int(ctx.macs),
        "source": {"run": str(ctx.run.path.resolve()), "alpha": ctx.run.meta.get("alpha"),
                   "image_size": ctx.size, "weights_sha256": w.get("sha256"), "qat": ctx.qat},
    }


def _tflite_io(model: bytes) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    return {"in_name": inp["name"], "in_shape": [int(s) for s in inp["shape"]],
            "in_dtype": np.dtype(inp["dtype"]).name, "out_name": out["name"],
            "out_dtype": np.dtype(out["dtype"]).name, "qi": _qparams(inp), "qo": _qparams(out)}


def _onnx_io(model: bytes) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    i0, o0 = sess.get_inputs()[0], sess.get_outputs()[0]
    dt = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
    return {"in_name": i0.name, "in_shape": [s if isinstance(s, int) else None for s in i0.shape],
            "in_dtype": dt.get(i0.type, i0.type), "out_name": o0.name, "out_dtype": dt.get(o0.type, o0.type),
            "qi": None, "qo": None}


def embed(ctx: ExportContext, fmt: Format, raw: bytes, weights_quant: dict | None = None) -> tuple[bytes, dict]:
    """Embed edgetl metadata and read it back through the deployment runtime's own loader."""
    if fmt.suffix == ".tflite":
        io = _tflite_io(raw)
        meta = artifact_meta(ctx, fmt, io, weights_quant)
        out = embed_tflite(raw, meta)
        back = read_tflite_meta(out)
    else:
        import onnx
        import onnxruntime as ort

        io = _onnx_io(raw)
        meta = artifact_meta(ctx, fmt, io, weights_quant)
        proto = onnx.load_from_string(raw)
        embed_onnx(proto, meta)
        out = proto.SerializeToString()
        back = read_onnx_meta_from_session(ort.InferenceSession(out, providers=["CPUExecutionProvider"]))
    if back != meta:
        raise ArtifactCheckError(f"{fmt.name}: embedded metadata did not read back intact")
    return out, meta


# ---------------------------------------------------------------------------------------------- compaction
LOSSLESS_CHECK_IMAGES = 8


def compact(fmt: Format, raw: bytes) -> bytes:
    """Lossless size reductions of a converter's output (edgetl.compact), the same for every format
    of a family so that size ratios between formats stay fair."""
    from .compact import compact_onnx, compact_tflite, shorten_onnx_names

    if fmt.suffix == ".tflite":
        return compact_tflite(raw)
    import onnx

    proto = onnx.load_from_string(raw)
    compact_onnx(proto)
    shorten_onnx_names(proto)
    return proto.SerializeToString()


def compact_checked(ctx: ExportContext, fmt: Format, raw: bytes) -> bytes:
    """compact(), then proof that it changed nothing but bytes: same I/O (names, dtypes, shapes,
    quantization) and bit-identical outputs to the raw converter output on validation images."""
    slim = compact(fmt, raw)
    x = ctx.val_x[:LOSSLESS_CHECK_IMAGES]
    if fmt.suffix == ".tflite":
        same_io = _tflite_io(raw) == _tflite_io(slim)
        a, b = run_tflite(raw, x)[0], run_tflite(slim, x)[0]
    else:
        same_io = _onnx_io(raw) == _onnx_io(slim)
        a, b = run_onnx(raw, x)[0], run_onnx(slim, x)[0]
    if not same_io or not np.array_equal(a, b):
        raise ArtifactCheckError(f"{fmt.name}: the compacted file does not behave exactly like the converter's "
                                 f"output ({'outputs differ' if same_io else 'inputs/outputs differ'}); "
                                 "this is an edgetl bug, please report it")
    return slim


# ---------------------------------------------------------------------------------------------- parity
def parity(ctx: ExportContext, fmt: Format, model: bytes, max_drop: float) -> dict:
    t0 = time.perf_counter()
    probs = run_tflite(model, ctx.val_x)[0] if fmt.suffix == ".tflite" else run_onnx(model, ctx.val_x)[0]
    # float files are checked against the float graph; int8 files against the run's model (QAT or float)
    y, kp = ctx.val_y, (ctx.keras_probs if fmt.precision == "int8" else ctx.float_probs)
    acc = float((probs.argmax(1) == y).mean())
    kacc = float((kp.argmax(1) == y).mean())
    res = {
        "n": int(len(y)),
        "accuracy": round(acc, 6),
        "keras_accuracy": round(kacc, 6),
        "agreement": round(float((probs.argmax(1) == kp.argmax(1)).mean()), 6),
        "max_abs_diff": float(np.abs(probs - kp).max()),
        "mean_abs_diff": float(np.abs(probs - kp).mean()),
        "drop_points": round(100.0 * (kacc - acc), 3),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if fmt.precision == "int8" and fmt.suffix == ".onnx":
        res["sessions"] = check_onnx_sessions(fmt, model, probs, ctx.val_x)
    if fmt.precision == "int8":
        res["max_drop"] = max_drop
        res["ok"] = res["drop_points"] <= max_drop
        if not res["ok"]:
            raise ArtifactCheckError(
                f"{fmt.name}: accuracy {100 * acc:.1f}% vs Keras {100 * kacc:.1f}% on {len(y)} validation images "
                f"(drop {res['drop_points']:.1f} points > --max-drop {max_drop:g}; top-1 agreement "
                f"{100 * res['agreement']:.1f}%)", )
    else:
        tol = float(fmt.options.get("max_prob_diff", FLOAT_TOLERANCE.get(fmt.precision, 1e-3)))
        res["tolerance"] = tol
        res["ok"] = res["max_abs_diff"] <= tol
        if not res["ok"]:
            raise ArtifactCheckError(
                f"{fmt.name}: differs from Keras by up to {res['max_abs_diff']:.2g} in probability (tolerance {tol:g}); "
                f"top-1 agreement {100 * res['agreement']:.1f}%, accuracy {100 * acc:.1f}% vs {100 * kacc:.1f}%")
    return res


def check_onnx_sessions(fmt: Format, model: bytes, probs: np.ndarray, x: np.ndarray) -> dict:
    """An int8 ONNX file must give the same answers wherever it runs. From the file: no GEMM-lowered
    layer may hold s8 weights that a non-VNNI x86 CPU can saturate. On this CPU: the default session
    and one with session.x64quantprecision=1 must agree (on a non-VNNI x86 a difference is the
    saturation signature; elsewhere both run the same kernels)."""
    import onnx

    risks = saturation_risks(onnx.load_from_string(model))
    if risks:
        raise ArtifactCheckError(f"{fmt.name}: {len(risks)} GEMM layer(s) hold s8 weights outside [-64, 63] that "
                                 f"CPUs without VNNI can saturate (first: {risks[0]})")
    try:
        precise = run_onnx(model, x, precise=True)[0]
    except Exception as e:  # onnxruntime rejects the file with the option set: not portable either
        raise ArtifactCheckError(f"{fmt.name}: onnxruntime cannot run it with session.x64quantprecision=1 "
                                 f"({describe(e)})") from None
    tol = float(fmt.options.get("session_tolerance", 1e-6))
    diff = float(np.abs(probs - precise).max()) if len(x) else 0.0
    agree = float((probs.argmax(1) == precise.argmax(1)).mean()) if len(x) else 1.0
    if diff > tol:
        raise ArtifactCheckError(f"{fmt.name}: the default session and session.x64quantprecision=1 disagree by up "
                                 f"to {diff:.2g} in probability (top-1 agreement {100 * agree:.1f}%): int8 "
                                 "sums saturate on this CPU")
    return {"x64quantprecision_max_abs_diff": diff, "x64quantprecision_agreement": agree, "tolerance": tol,
            "saturation_risks": 0}


# ---------------------------------------------------------------------------------------------- size budget
FP32_OF = {".tflite": "tflite-fp32", ".onnx": "onnx-fp32"}
BUDGET_RANK_IMAGES = 48  # calibration images on which each candidate layer's output change is measured


def fp32_bytes(ctx: ExportContext, fmt: Format, results: dict) -> int:
    """Size of the fp32 file of fmt's family as this export writes it (made here if not selected)."""
    name = FP32_OF[fmt.suffix]
    r = results.get(name)
    if r and r.get("status") == "ok":
        return int(r["bytes"])
    key = f"{name}-bytes"
    if key not in ctx.cache:
        f = FORMATS[name]
        ctx.cache[key] = len(embed(ctx, f, compact(f, converted(ctx, f)))[0])
    return ctx.cache[key]


def fit_size_budget(ctx: ExportContext, fmt: Format, blob: bytes, meta: dict, par: dict, percent: float,
                    max_drop: float, results: dict):
    """If the int8 file is larger than `percent` % of its fp32 file, give per-tensor weight scales to the
    fewest layers that make it fit (edgetl.budget). The smaller file is kept only if it passes the
    parity check and loses at most budget.MAX_EXTRA_DROP points (PTQ 1.0, QAT 0.5) against the per-channel file; otherwise
    the per-channel file stays, and the reason is reported. Returns (blob, meta, parity, info)."""
    from . import budget as B

    ref = fp32_bytes(ctx, fmt, results)
    limit = int(ref * percent / 100)
    info = {"percent": percent, "fp32_bytes": ref, "limit_bytes": limit, "per_channel_bytes": len(blob),
            "per_tensor_layers": []}
    if len(blob) <= limit:
        info["met"] = True
        return blob, meta, par, info
    src = tflite_int8_bytes(ctx, fmt.options.get("io", "int8") if fmt.suffix == ".tflite" else "float32")
    if "budget-layers" not in ctx.cache:  # one ranking for both families (layer indices are the same)
        ranked = tflite_int8_bytes(ctx, "float32")
        try:
            x = ctx.calibration_inputs()[:BUDGET_RANK_IMAGES]
        except EdgetlError:  # a QAT run whose training images are gone: rank by weight error alone
            x = None
        cands = B.candidates(ranked)
        ctx.cache["budget-layers"] = (B.rank(ranked, cands, lambda m, x: run_tflite(m, x)[0], x) if x is not None
                                      else sorted(cands, key=lambda L: (L.error / L.saved, L.index)))
    layers = ctx.cache["budget-layers"]

    def build(k: int):
        tfl = B.per_tensor(src, [L.index for L in layers[:k]])
        raw = tfl if fmt.suffix == ".tflite" else onnx_from_tflite(tfl, fmt)
        wq = {"per_tensor_layers": k, "rule": "per-channel weights; per-tensor where it fits the size budget "
                                               f"({percent:g} % of fp32)"}
        return embed(ctx, fmt, compact(fmt, raw), wq) + (raw,)

    def not_met(reason: str):
        info.update(met=False, reason=reason)
        return blob, meta, par, info

    k, built = B.smallest_fit(len(layers), build, lambda r: len(r[0]), limit, hint=ctx.cache.get("budget-k"))
    if k is None:
        return not_met(f"{len(layers)} layers can take per-tensor scales (weight error <= {B.MAX_ERROR:g}); "
                       f"with all of them the file is still above {percent:g} % of fp32")
    small, meta2, raw = built
    compact_checked(ctx, fmt, raw)  # the same lossless-compaction proof as the per-channel file had
    try:
        par2 = parity(ctx, fmt, small, max_drop)
    except ArtifactCheckError as e:
        return not_met(f"with {k} layers per-tensor: {e}")
    lost = 100 * (par["accuracy"] - par2["accuracy"])
    allowed = B.MAX_EXTRA_DROP["qat" if ctx.qat else "ptq"]
    if lost > allowed:
        return not_met(f"with {k} layers per-tensor the accuracy falls {lost:.1f} points below the per-channel "
                       f"file's (at most {allowed:g} allowed for a {'QAT' if ctx.qat else 'PTQ'} run)")
    ctx.cache["budget-k"] = k
    info.update(met=True, per_tensor_layers=[L.asdict() for L in layers[:k]], per_channel_parity=par)
    return small, meta2, par2, info


# ---------------------------------------------------------------------------------------------- driver
def export_run(run_path, formats: str | None = None, int8: bool = False, calib: int = DEFAULT_CALIB,
               max_drop: float = DEFAULT_MAX_DROP, keep_going: bool = False, seed: int | None = None,
               console=None, size_budget: float = DEFAULT_SIZE_BUDGET) -> dict:
    """Export, check and write the chosen formats; returns the manifest. Raises on the first failure
    (ArtifactCheckError, exit 3) unless keep_going, in which case it raises after all formats finished."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console()
    run, fmts, calib_items, val_items = check_inputs(run_path, formats, int8, calib, max_drop, size_budget)
    t_start = time.perf_counter()
    size, spec = run.image_size, run.preprocessing
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=False)
    with progress:
        t = progress.add_task("load model", total=1)
        model = load_model(run)
        progress.advance(t)
        t = progress.add_task("validation images", total=len(val_items))
        pix, y, _, skipped = D.load_batch(val_items, size, progress=lambda: progress.advance(t))
        if len(pix) == 0:
            raise EdgetlError(f"RUN {run.path}: none of the {len(val_items)} validation images could be decoded")
        val_x = D.preprocess(pix, spec)
        t = progress.add_task("keras reference", total=1)
        kp = keras_predict(model, val_x)
        qat = bool(run.meta.get("qat"))
        float_model = strip_quantization(model) if qat else model
        fp = keras_predict(float_model, val_x) if qat else kp
        progress.advance(t)
        ctx = ExportContext(run=run, model=model, float_model=float_model, float_probs=fp, size=size, spec=spec, classes=run.classes, val_x=val_x, val_y=y,
                            keras_probs=kp, macs=count_macs(float_model), qat=qat,
                            calib_items=calib_items, calib_n=calib,
                            seed=int(seed if seed is not None else run.meta.get("seed", 0) or 0), console=console)
        manifest = _load_manifest(run)
        results: dict[str, dict] = {}
        failures: list[str] = []
        task = progress.add_task("export", total=len(fmts))
        for fmt in fmts:
            progress.update(task, description=f"export {fmt.name}")
            t0 = time.perf_counter()
            path = run.path / fmt.filename
            try:
                raw = converted(ctx, fmt)
                blob, meta = embed(ctx, fmt, compact_checked(ctx, fmt, raw))
                par = parity(ctx, fmt, blob, max_drop)
                budget = None
                if fmt.precision == "int8" and size_budget:
                    progress.update(task, description=f"export {fmt.name} (size budget)")
                    try:
                        blob, meta, par, budget = fit_size_budget(ctx, fmt, blob, meta, par, size_budget,
                                                                  max_drop, results)
                    except Exception as e:  # the per-channel file is checked and good: keep it, say why
                        budget = {"percent": size_budget, "met": False, "per_tensor_layers": [],
                                  "reason": f"the size-budget step failed ({describe(e)})"}
            except Exception as e:  # a check failure, or a converter crash: one line, never a traceback
                if isinstance(e, EdgetlError):
                    reason, shown = str(e), f"{e} (file not written)"
                else:
                    reason = f"{fmt.name}: conversion failed ({describe(e)})"
                    shown = reason
                _drop_stale(path)
                results[fmt.name] = {"file": fmt.filename, "status": "failed", "reason": reason}
                failures.append(reason)
                if not keep_going:
                    manifest["artifacts"].update(results)
                    _write_manifest(run, manifest)
                    raise ArtifactCheckError(shown) from None
            else:
                write_bytes(path, blob)
                results[fmt.name] = {"file": fmt.filename, "bytes": len(blob), "sha256": sha256_file(path),
                                     "status": "ok", "parity": par, "seconds": round(time.perf_counter() - t0, 2),
                                     "input_dtype": meta["input"]["dtype"]}
                if budget is not None:
                    results[fmt.name]["size_budget"] = budget
            progress.advance(task)
    manifest["artifacts"].update(results)
    manifest["skipped_val"] = skipped
    manifest["checked_on"] = cpu.features()
    manifest["seconds"] = round(time.perf_counter() - t_start, 1)
    _write_manifest(run, manifest)
    _print_table(console, run, results, kp, y, fp if ctx.qat else None)
    if failures:
        for f in failures:
            console.print(f"[red]failed[/]: {f}", highlight=False)
        raise ArtifactCheckError(f"{len(failures)} of {len(fmts)} formats failed (see above); "
                                 f"the others are in {run.path / MANIFEST_FILE}")
    console.print(f"next: [bold]edgetl bench {run.path}[/]", highlight=False)
    return manifest


def _drop_stale(path: Path) -> None:
    if path.exists():
        os.unlink(path)


def _load_manifest(run: Run) -> dict:
    """Keep entries of other formats whose files are still there, unchanged."""
    old = {}
    try:
        old = run.manifest.get("artifacts", {})
    except Exception:
        pass
    keep = {}
    for name, a in old.items():
        p = run.path / a.get("file", "")
        if a.get("status") == "ok" and p.is_file() and sha256_file(p) == a.get("sha256"):
            keep[name] = a
    from datetime import datetime, timezone

    return {"run": str(run.path.resolve()), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_sha256": sha256_file(run.model_path), "artifacts": keep}


def _write_manifest(run: Run, manifest: dict) -> None:
    order = [n for n in FORMATS if n in manifest["artifacts"]]
    manifest["artifacts"] = {n: manifest["artifacts"][n] for n in order}
    write_json(run.path / MANIFEST_FILE, manifest)


def _print_table(console, run: Run, results: dict, kp, y, fp=None) -> None:
    from rich.table import Table

    tab = Table(title=f"edgetl export {run.path}")
    # file names come from the registry (FORMATS[name].filename); manifest.json lists them with sha256
    for c in ("format", "size", "of fp32", "accuracy", "agreement", "max |Δp|", "status"):
        tab.add_column(c, justify="left" if c in ("format", "status") else "right", no_wrap=True)
    tab.add_row("keras", _mb(run.model_path.stat().st_size), "-",
                f"{100 * float((kp.argmax(1) == y).mean()):.1f}%", "-", "-", "QAT ref" if fp is not None else "ref")
    if fp is not None:
        tab.add_row("keras float", "-", "-", f"{100 * float((fp.argmax(1) == y).mean()):.1f}%",
                    "-", "-", "float")
    notes = []
    for name, r in results.items():
        if r["status"] == "ok":
            p, b = r["parity"], r.get("size_budget") or {}
            ref = results.get(FP32_OF[FORMATS[name].suffix], {}).get("bytes") or b.get("fp32_bytes")
            tab.add_row(name, _mb(r["bytes"]), f"{100 * r['bytes'] / ref:.1f}%" if ref else "-",
                        f"{100 * p['accuracy']:.1f}%", f"{100 * p['agreement']:.1f}%",
                        f"{p['max_abs_diff']:.2g}", "[green]ok[/]")
            if b.get("per_tensor_layers"):
                k = len(b["per_tensor_layers"])
                notes.append(f"{name}: {k} layer{' uses' if k == 1 else 's use'} per-tensor weight scales to fit "
                             f"--size-budget {b['percent']:g}% (per-channel file: "
                             f"{100 * b['per_channel_bytes'] / b['fp32_bytes']:.1f}% of fp32, "
                             f"{100 * b['per_channel_parity']['accuracy']:.1f}% accuracy)")
            elif b and not b["met"]:
                notes.append(f"{name}: --size-budget {b['percent']:g}% not met, per-channel file kept: {b['reason']}")
        else:
            tab.add_row(name, "-", "-", "-", "-", "-", "[red]failed[/]")
    console.print(tab)
    for n in notes:
        console.print(n, highlight=False, soft_wrap=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"

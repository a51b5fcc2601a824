"""The converters the format registry names (edgetl.core.formats): Keras -> TFLite fp32 / fp16 / int8
(full integer) with TensorFlow's converter, Keras -> ONNX fp32 and TFLite int8 -> ONNX int8 with tf2onnx.
Each returns the converter's bytes; compaction, metadata and checks come after (export.artifacts)."""

from __future__ import annotations

import time
from pathlib import Path

from ..core.formats import Format
from ..core.runtime import INT8_WEIGHTS
from ..model import bias
from ..model.convert import INPUT_NAME, OUTPUT_NAME, calibrated_tflite, quantize_calibrated, serving_fn
from ..model.tfenv import tf_and_keras, tflite_converter
from .context import ExportContext
from .onnx_int8 import bounded_pairs, float_layers_kept_float, unsigned_activations, unsigned_weights


def _tflite_converter(ctx: ExportContext, quantized: bool = False):
    tf, _ = tf_and_keras()
    fn = serving_fn(ctx.model if quantized else ctx.float_model, ctx.size, 1)
    return tf, tflite_converter(fn)


# every converter takes (context, registry row) and returns the converter's bytes
def tflite_fp32(ctx: ExportContext, fmt: Format) -> bytes:
    _, conv = _tflite_converter(ctx)
    return bytes(conv.convert())


def tflite_fp16(ctx: ExportContext, fmt: Format) -> bytes:
    """float16 weights, float32 activations (the converter's float16 quantization)."""
    tf, conv = _tflite_converter(ctx)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    return bytes(conv.convert())


def tflite_int8_bytes(ctx: ExportContext, io: str = "int8") -> bytes:
    """Full-integer TFLite: int8 weights and activations, int8/uint8 (or float32) input and output.

    The int8 source model (the float model, or the QAT model when `train --qat` chose it) is calibrated on
    a seeded sample of training images (model.convert.int8_tflite, the conversion `train --qat` scores).
    A fake-quant graph (ctx.qat_graph) carries its learned ranges and the converter uses those.
    The ops named in ctx.float_ops (export.control's choice) stay in float; the int8 convs get the plain
    file's bias shifts (model.bias: measured once per export, whatever stays in float).
    """
    key = ("tflite-int8", io, ctx.float_ops)
    if key in ctx.cache:
        return ctx.cache[key]
    if not ctx.qat_graph:
        out = _quantized(ctx, io, ctx.float_ops)
        if ctx.correct_biases:
            out = bias.corrected(out, bias_shifts(ctx))
    else:
        tf, conv = _tflite_converter(ctx, quantized=True)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if io != "float32":
            conv.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
            conv.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
        out = bytes(conv.convert())
    ctx.cache[key] = out
    return out


def calibrated(ctx: ExportContext) -> bytes:
    """The int8 source model's float TFLite file with its calibrated activation ranges, made once per
    export (model.convert.calibrated_tflite)."""
    if "int8-calibrated" not in ctx.cache:
        ctx.cache["int8-calibrated"] = calibrated_tflite(ctx.model, ctx.size, ctx.calibration_inputs())
    return ctx.cache["int8-calibrated"]


def _quantized(ctx: ExportContext, io: str, float_ops: tuple) -> bytes:
    """The converter's int8 file of the calibrated ranges with float_ops in float (no bias correction),
    made once per export."""
    key = ("tflite-int8-converter", io, float_ops)
    if key not in ctx.cache:
        ctx.cache[key] = quantize_calibrated(calibrated(ctx), io, float_ops)
    return ctx.cache[key]


def bias_shifts(ctx: ExportContext) -> dict:
    """The plain int8 file's bias shifts (model.bias), measured once per export."""
    return _bias(ctx)[0]


def bias_record(ctx: ExportContext) -> dict:
    """What the manifest records of the bias correction: convs corrected, images and seconds it took."""
    shifts, seconds = _bias(ctx)
    return {"convs": len(shifts), "images": min(bias.BIAS_IMAGES, ctx.calib_used), "seconds": seconds}


def _bias(ctx: ExportContext) -> tuple[dict, float]:
    if "int8-bias" not in ctx.cache:
        t0 = time.perf_counter()
        shifts = bias.bias_shifts(_quantized(ctx, "float32", ()), calibrated(ctx), ctx.calibration_inputs())
        ctx.cache["int8-bias"] = (shifts, round(time.perf_counter() - t0, 1))
    return ctx.cache["int8-bias"]


def tflite_int8(ctx: ExportContext, fmt: Format) -> bytes:
    """Full-integer TFLite with the row's I/O type (options["io"])."""
    return tflite_int8_bytes(ctx, fmt.options.get("io", "int8"))


def onnx_fp32(ctx: ExportContext, fmt: Format) -> bytes:
    """tf2onnx's conversion of the float graph, with a free batch dimension."""
    import tf2onnx

    tf, _ = tf_and_keras()
    fn = serving_fn(ctx.float_model, ctx.size, None)
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


def onnx_int8(ctx: ExportContext, fmt: Format) -> bytes:
    """ONNX int8 QDQ from the int8 TFLite graph (its calibrated ranges), via tf2onnx, with
    s8 weights whose K-neighbour pairs cannot saturate (export.onnx_int8).

    Measured (benchmarks/bench_export.py): onnxruntime's own static QDQ calibration (MinMax/Entropy)
    loses 15-20 points on MobileNetV2 here and Percentile 5; re-using the TFLite converter's per-tensor
    ranges keeps the int8 ONNX within the TFLite int8 accuracy.
    Input/output stay float32 (QuantizeLinear/DequantizeLinear at the edges), the usual ONNX QDQ form.
    """
    return onnx_from_tflite(tflite_int8_bytes(ctx, "float32"), fmt, ctx.onnx_weights)


def onnx_from_tflite(tfl: bytes, fmt: Format, weights: str = INT8_WEIGHTS) -> bytes:
    """tf2onnx's conversion of a TFLite file (its converter reads a path), I/O renamed, int8 weights in an
    encoding no CPU can saturate (export.onnx_int8): `weights` "s8-pairs" (s8 with bounded pairs, u8
    activations: fast on VNNI and ARM) or "u8" (u8 weights: exact, onnxruntime's u8 x u8 kernels)."""
    import tempfile

    import tf2onnx

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.tflite"
        p.write_bytes(tfl)
        proto, _ = tf2onnx.convert.from_tflite(str(p), opset=fmt.options.get("opset", 17))
    _rename_io(proto)
    if weights == "u8":
        unsigned_weights(proto)
    else:
        bounded_pairs(proto)
        unsigned_activations(proto)
    float_layers_kept_float(proto)
    return proto.SerializeToString()


def converted(ctx: ExportContext, fmt: Format) -> bytes:
    """fmt's converter output (the registry row's converter), made once per export and set of float ops
    (the size budget's fp32 reference reuses it)."""
    key = (fmt.name, ctx.float_ops if fmt.precision == "int8" else (), ctx.onnx_weights if fmt.suffix == ".onnx" else "")
    if key not in ctx.cache:
        ctx.cache[key] = fmt.convert(ctx)
    return ctx.cache[key]

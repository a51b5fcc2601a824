"""Finishing a converter's output: lossless compaction (proved bit-identical on validation images) and
edgetl's metadata embedded in the file (read back through the deployment runtime's own loader). Files
are run through their registry row's runner (core.runtime), as bench and predict run them."""

from __future__ import annotations

import numpy as np

from ..core.artifact import (SEAL_KEY, SEAL_PLACEHOLDER, embed_onnx, embed_tflite, read_onnx_meta_from_session,
                              read_tflite_meta, seal)
from ..core.errors import ArtifactCheckError
from ..core.flatbuffer import compact_tflite, short_name
from ..core.formats import Format
from .context import ExportContext
from .onnx_compact import compact_onnx, shorten_onnx_names

LOSSLESS_CHECK_IMAGES = 8  # validation images on which a compacted file must match the converter's output


def artifact_meta(ctx: ExportContext, fmt: Format, io: dict, weights_quant: dict | None = None) -> dict:
    """The metadata a file carries: labels, I/O tensors (`io`: the runner's io()), preprocessing,
    quantization, MACs and where it came from."""
    from .. import __version__

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
        **({"float_ops": [short_name(n) for n in ctx.float_ops]} if fmt.precision == "int8" and ctx.float_ops else {}),
        **({"int8_weights": ctx.onnx_weights} if fmt.suffix == ".onnx" and fmt.precision == "int8" else {}),
        "macs": int(ctx.macs),
        "source": {"run": str(ctx.run.path.resolve()), "alpha": ctx.run.meta.get("alpha"),
                   "image_size": ctx.size, "weights_sha256": w.get("sha256"), "model_sha256": ctx.model_sha256,
                   "qat": ctx.from_qat(fmt.precision)},
    }


def embed(ctx: ExportContext, fmt: Format, raw: bytes, weights_quant: dict | None = None) -> tuple[bytes, dict]:
    """Embed edgetl metadata, read it back through the deployment runtime's own loader, then seal the file's
    sha256 into it (core.artifact.seal: predict and bench check it before use)."""
    meta = artifact_meta(ctx, fmt, fmt.runner_class()(raw, fmt).io(), weights_quant)
    meta[SEAL_KEY] = SEAL_PLACEHOLDER
    if fmt.suffix == ".tflite":
        out = embed_tflite(raw, meta)
        back = read_tflite_meta(out)
    else:
        import onnx
        import onnxruntime as ort

        proto = onnx.load_from_string(raw)
        embed_onnx(proto, meta)
        out = proto.SerializeToString()
        # onnxruntime's model metadata, as core.artifact.read_meta reads it from a file
        back = read_onnx_meta_from_session(ort.InferenceSession(out, providers=["CPUExecutionProvider"]))
    if back != meta:
        raise ArtifactCheckError(f"{fmt.name}: embedded metadata did not read back intact")
    return seal(out), meta


def compact(fmt: Format, raw: bytes) -> bytes:
    """Lossless size reductions of a converter's output (core.flatbuffer, export.onnx_compact), the same
    for every format of a family so that size ratios between formats stay fair."""
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
    runners = [fmt.runner_class()(m, fmt) for m in (raw, slim)]
    same_io = runners[0].io() == runners[1].io()
    a, b = (r.outputs(x) for r in runners)
    if not same_io or not np.array_equal(a, b):
        raise ArtifactCheckError(f"{fmt.name}: the compacted file does not behave exactly like the converter's "
                                 f"output ({'outputs differ' if same_io else 'inputs/outputs differ'}); "
                                 "this is an edgetl bug, please report it")
    return slim

"""ONNX int8 files whose integer arithmetic is the same on every CPU.

onnxruntime lowers int8 Conv / MatMul / Gemm to a GEMM. On x86 without VNNI (AVX2, AVX-512 without
VNNI) its u8 x s8 GEMM multiplies u8 activations by s8 weights and adds pairs of products in 16-bit
lanes that saturate (vpmaddubsw): 255 x (127 + 127) > 32767. The same file then gives other answers
there than on a VNNI CPU or an Arm board. onnxruntime's own rule (Avx2WeightS8ToU8Transformer) is that
s8 weights within [-64, 63] cannot saturate; `session.x64quantprecision=1` converts the others to u8.

edgetl stores every int8 weight as u8 with zero point 128 instead: the same 8-bit values shifted by
128, so nothing is lost (7-bit weights, the other known fix, measured 0.7 to 2 points lower on the
validation sets). With u8 weights onnxruntime can only pick its u8 x u8 kernels, which widen to 16 bits
before multiplying and cannot saturate, whatever the CPU. Depthwise weights could stay s8 (their
kernels multiply in 16 bits), but with session.x64quantprecision=1 onnxruntime rewrites every s8
weight at load time and fails on per-channel weights without a zero point; u8 leaves it nothing to do.

`saturation_risks` proves the property from the file alone, so any machine can check it.
"""

from __future__ import annotations

import numpy as np

# s8 weights inside this range cannot saturate a u8 x s8 pair sum (onnxruntime's S7 rule)
S7_RANGE = (-64, 63)
# ops whose weight input onnxruntime runs through a GEMM: (op type, weight input index)
GEMM_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1,
                     "MatMulInteger": 1, "QLinearConv": 3, "QLinearMatMul": 3}


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _weights(graph, gemm_only: bool = True):
    """(node, weight initializer name, DequantizeLinear node or None) for every conv / matmul layer
    whose weights are an int8/uint8 initializer, directly or through a DequantizeLinear; with
    gemm_only, depthwise convolutions (not lowered to a GEMM) are left out."""
    from onnx import TensorProto

    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        k = GEMM_WEIGHT_INPUT.get(node.op_type)
        if k is None or node.domain not in ("", "ai.onnx") or len(node.input) <= k:
            continue
        name, dq = node.input[k], None
        src = producer.get(name)
        if src is not None and src.op_type == "DequantizeLinear":
            dq, name = src, src.input[0]
        t = inits.get(name)
        if t is None or t.data_type not in (TensorProto.INT8, TensorProto.UINT8):
            continue
        if gemm_only and node.op_type in ("Conv", "ConvInteger", "QLinearConv") and _attr(node, "group", 1) > 1 \
                and len(t.dims) > 1 and t.dims[1] == 1:
            continue  # depthwise: 16-bit multiplies on every CPU
        yield node, name, dq


def saturation_risks(proto) -> list[str]:
    """GEMM-lowered layers whose s8 weights leave [-64, 63]: the ones a non-VNNI x86 CPU can saturate.
    An empty list proves the file gives the same integer results on every CPU."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    out = []
    for node, name, _ in _weights(proto.graph):
        t = inits[name]
        if t.data_type == TensorProto.INT8:
            w = numpy_helper.to_array(t)
            if w.size and (w.min() < S7_RANGE[0] or w.max() > S7_RANGE[1]):
                out.append(node.output[0] or name)
    return out


def unsigned_weights(proto) -> int:
    """Store the s8 weights of QDQ conv / matmul layers as u8 with zero point 128 (in place; exact:
    u8 - 128 == s8). Zero-point vectors are shared between layers of the same shape. Returns how many
    layers changed."""
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    zps: dict[tuple, str] = {}
    n = 0
    for _, name, dq in list(_weights(g, gemm_only=False)):
        t = inits[name]
        if dq is None or t.data_type != TensorProto.INT8:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        zp = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else \
            np.zeros(scale.shape, np.int8)
        w_u8 = (numpy_helper.to_array(t).astype(np.int16) + 128).astype(np.uint8)
        zp_u8 = (zp.astype(np.int16) + 128).astype(np.uint8)
        key = (zp_u8.shape, zp_u8.tobytes())
        if key not in zps:
            zps[key] = f"{name}_zp_u8"
            g.initializer.append(numpy_helper.from_array(zp_u8, zps[key]))
        w_name = f"{name}_u8"
        if w_name not in inits:
            inits[w_name] = numpy_helper.from_array(w_u8, w_name)
            g.initializer.append(inits[w_name])
        dq.input[:] = [w_name, dq.input[1], zps[key]]
        n += 1
    _drop_unused_initializers(g)
    return n


def _drop_unused_initializers(g) -> None:
    used = {x for node in g.node for x in node.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)

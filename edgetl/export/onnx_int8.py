"""ONNX int8 files whose integer arithmetic is the same on every CPU, on each CPU's fast kernels.

onnxruntime lowers int8 Conv / MatMul / Gemm to a GEMM (MLAS). On x86 without VNNI (AVX2, AVX-512
without VNNI) its u8 x s8 kernels multiply u8 activations by s8 weights with vpmaddubsw, which adds
each PAIR of neighbouring products along the reduction axis K in a saturating 16-bit lane:
255 x (127 + 127) > 32767. Which products are paired (onnxruntime's MLAS sources):
- the GEMM kernels (QgemmU8S8KernelAvx2: MlasGemmU8S8CopyPackBAvx2 interleaves 4 consecutive K rows of
  B, the kernel broadcasts the matching 4 bytes of A) and the M=1 kernel (QgemvU8S8KernelAvx2, the same
  4-row interleave) pair K indices (2j, 2j+1); K blocks and padding keep that (multiples of 4, zeros);
- Conv weights (O, I, kh, kw) enter that GEMM reordered to K = (kh, kw, I), input channel fastest
  (QLinearConv::ReorderFilter, im2col in NHWC), so a pair is two neighbouring input channels of one
  tap, or, when I is odd (the 3-channel first conv), may span two taps;
- the symmetric-conv kernel (ConvSymKernelAvx2, used when I % 4 == 0) reads 4 consecutive input
  channels of one tap: the same pairs.
Depthwise convolutions are not GEMMs: their kernels widen to 16 bits before multiplying.

edgetl keeps s8 weights (so VNNI and Arm CPUs take onnxruntime's u8 x s8 fast path: on AVX-512 VNNI,
u8 x u8 has no VNNI kernel and runs 1.6x slower) and bounds every such pair: |w1| + |w2| <= 128, so a
pair sum is at most 255 x 128 = 32640 and cannot saturate. Per-channel int8 weights reach +-127 in
every channel, so about 9 % of pairs start over the bound; clipping them alone costs 34 points on
hymenoptera, so `bounded_pairs` picks per output channel the smaller change: clip, or requantize the
channel with a slightly coarser scale and clip what remains (docs/quantization.md has the accuracy).
`saturation_risks` proves the property from the file alone, so any machine can check it.
"""

from __future__ import annotations

import numpy as np

# |w1| + |w2| of a K-neighbour pair: 255 x 128 = 32640 fits vpmaddubsw's int16 lane (onnxruntime's own
# S7 rule, every weight in [-64, 63], is the special case that bounds each weight alone)
PAIR_BOUND = 128
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
        if gemm_only and _is_depthwise(node, t):
            continue  # depthwise: 16-bit multiplies on every CPU
        yield node, name, dq


def k_pairs(node, w: np.ndarray) -> np.ndarray:
    """A GEMM-lowered layer's weights as (rows, K/2, 2): each last-axis pair is two weights that MLAS's
    AVX2 u8 x s8 kernels add in one 16-bit lane (K in onnxruntime's order, zero-padded to even)."""
    k = _k_matrix(node, w)
    if k.shape[1] % 2:
        k = np.concatenate([k, np.zeros((k.shape[0], 1), k.dtype)], axis=1)
    return k.reshape(k.shape[0], -1, 2)


def _k_matrix(node, w: np.ndarray) -> np.ndarray:
    """(rows, K): one row per output column of the GEMM, K in the order onnxruntime packs it."""
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):  # (O, I, *kernel) -> (O, *kernel, I)
        return np.moveaxis(w, 1, -1).reshape(w.shape[0], -1)
    if node.op_type == "ConvTranspose":  # (I, O/group, *kernel): the GEMM reduces over I
        return np.moveaxis(w, 0, -1).reshape(-1, w.shape[0])
    if node.op_type == "Gemm" and _attr(node, "transB", 0):  # B is (N, K)
        return w.reshape(w.shape[0], -1)
    return np.swapaxes(w, -1, -2).reshape(-1, w.shape[-2])  # MatMul-like and Gemm: B is (..., K, N)


def _from_k_matrix(node, k: np.ndarray, shape: tuple) -> np.ndarray:
    """Inverse of _k_matrix for a weight of `shape`."""
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        return np.moveaxis(k.reshape(shape[0], *shape[2:], shape[1]), -1, 1)
    if node.op_type == "ConvTranspose":
        return np.moveaxis(k.reshape(*shape[1:], shape[0]), -1, 0)
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        return k.reshape(shape)
    return np.swapaxes(k.reshape(*shape[:-2], shape[-1], shape[-2]), -1, -2)


def saturation_risks(proto) -> list[str]:
    """GEMM-lowered layers holding s8 weights with a K-neighbour pair |w1| + |w2| > 128: the ones a
    non-VNNI x86 CPU can saturate. An empty list proves the file gives the same integer results on
    every CPU."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    out = []
    for node, name, _ in _weights(proto.graph):
        t = inits[name]
        if t.data_type == TensorProto.INT8:
            w = numpy_helper.to_array(t)
            if w.size and int(np.abs(k_pairs(node, w).astype(np.int16)).sum(-1).max()) > PAIR_BOUND:
                out.append(node.output[0] or name)
    return out


def bounded_pairs(proto) -> dict:
    """Keep s8 weights but bring every K-neighbour pair of a GEMM-lowered layer within |w1| + |w2| <= 128
    (in place). Per output channel of a conv with per-channel scales, the choice with the smallest squared
    change of the channel's dequantized weights among: clip the pairs over the bound (their excess split
    between both weights), or requantize the channel with a coarser scale (x f, 1 < f <= 2; its bias
    follows exactly: bias scale = input scale x weight scale) and clip what still exceeds. Other layers
    are clipped. Each s8 weight dequantizer gets an explicit all-zero zero point of its own (onnxruntime's
    session.x64quantprecision=1 converts s8 weights and their zero points to u8 one initializer at a time:
    a missing or shared one makes the session fail). Returns counts: layers, pairs, pairs_changed,
    channels_rescaled, channels."""
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    stats = {"layers": 0, "pairs": 0, "pairs_changed": 0, "channels": 0, "channels_rescaled": 0}
    for node, name, dq in list(_weights(g, gemm_only=False)):
        t = inits[name]
        if dq is None or t.data_type != TensorProto.INT8:
            continue
        if not _is_depthwise(node, t):
            w = numpy_helper.to_array(t)
            k = _k_matrix(node, w)
            scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
            bias = _bias_dq(node, producer, inits)
            rescale = (node.op_type == "Conv" and scale is not None and scale.size == k.shape[0] > 1
                       and _attr(dq, "axis", 1) == 0 and bias is not False)
            new_k, f = _fit_pairs(k, rescale)
            stats["layers"] += 1
            stats["pairs"] += k.shape[0] * ((k.shape[1] + 1) // 2)
            stats["pairs_changed"] += int((_pair_sums(k) > PAIR_BOUND).sum())
            stats["channels"] += k.shape[0]
            stats["channels_rescaled"] += int((f > 1).sum())
            if not np.array_equal(new_k, k):
                t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(_from_k_matrix(node, new_k, w.shape)), name))
            if (f > 1).any():
                _rescale(g, inits, node, dq, scale, f.astype(np.float32), bias, name)
        if len(dq.input) > 2 and dq.input[2] in inits:
            zp = numpy_helper.to_array(inits[dq.input[2]])
        else:
            zp = np.zeros(numpy_helper.to_array(inits[dq.input[1]]).shape, np.int8)
        if f"{name}_zp" not in inits:
            inits[f"{name}_zp"] = numpy_helper.from_array(zp, f"{name}_zp")
            g.initializer.append(inits[f"{name}_zp"])
        dq.input[:] = [dq.input[0], dq.input[1], f"{name}_zp"]
    read = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    dead = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in read]  # old biases
    for n in dead:
        g.node.remove(n)
    _drop_unused_initializers(g)
    return stats


# requantization factors tried per channel: steps of 1/32 up to 2 (a pair of +-127 needs 254/128)
FACTORS = 1 + np.arange(33) / 32


def _pair_sums(k: np.ndarray) -> np.ndarray:
    q = np.abs(k.astype(np.int32))
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), q.dtype)], axis=1)
    return q[:, 0::2] + q[:, 1::2]


def _clip_pairs(q: np.ndarray) -> np.ndarray:
    """(rows, K) integers with every K-neighbour pair pulled within PAIR_BOUND: the excess is split between
    the pair (an odd unit from the larger), signs kept."""
    n = q.shape[1]
    p = q.astype(np.int32)
    if n % 2:
        p = np.concatenate([p, np.zeros((p.shape[0], 1), p.dtype)], axis=1)
    p = p.reshape(p.shape[0], -1, 2)
    mag = np.abs(p)
    excess = np.maximum(mag.sum(-1) - PAIR_BOUND, 0)
    big_first = mag[..., 0] >= mag[..., 1]
    cut = np.stack([np.where(big_first, excess - excess // 2, excess // 2),
                    np.where(big_first, excess // 2, excess - excess // 2)], -1)
    return (np.sign(p) * (mag - cut)).reshape(p.shape[0], -1)[:, :n]


def _fit_pairs(k: np.ndarray, rescale: bool) -> tuple[np.ndarray, np.ndarray]:
    """(new (rows, K) int8, per-row requantization factor): per row the candidate (FACTORS, or 1 alone
    without rescale) whose weights x factor differ least from the old ones (sum of squares)."""
    q = k.astype(np.float64)
    best, best_f, best_err = _clip_pairs(k), np.ones(k.shape[0]), None
    best_err = ((best - q) ** 2).sum(1)
    for f in (FACTORS[1:] if rescale else []):
        cand = _clip_pairs(np.clip(np.rint(q / f), -127, 127).astype(np.int32))
        err = ((cand * f - q) ** 2).sum(1)
        better = err < best_err
        best[better], best_f[better], best_err[better] = cand[better], f, err[better]
    return best.astype(np.int8), best_f


def _bias_dq(node, producer, inits):
    """(bias DequantizeLinear, its float32 scales, input scale) of a QDQ conv; None without a bias; False
    when the bias or its scale is not a constant the rescale can follow."""
    from onnx import numpy_helper

    if len(node.input) < 3 or not node.input[2]:
        return None
    b, x = producer.get(node.input[2]), producer.get(node.input[0])
    if b is None or b.op_type != "DequantizeLinear" or b.input[0] not in inits \
            or x is None or x.op_type != "DequantizeLinear" or x.input[1] not in inits:
        return False
    xs = numpy_helper.to_array(inits[x.input[1]])
    if b.input[1] in inits:
        return b, numpy_helper.to_array(inits[b.input[1]]), xs
    mul = producer.get(b.input[1])  # export.onnx_compact: bias scale = Mul(input scale, weight scale)
    if mul is not None and mul.op_type == "Mul" and mul.input[0] == x.input[1] and mul.input[1] in inits:
        return b, np.multiply(xs, numpy_helper.to_array(inits[mul.input[1]]), dtype=np.float32), xs
    return False


def _unique(inits, base: str) -> str:
    name, i = base, 0
    while name in inits:
        i += 1
        name = f"{base}_{i}"
    return name


def _rescale(g, inits, node, dq, scale, f, bias, name) -> None:
    """Weight scales x f (a new initializer); the conv's bias requantized to input scale x new weight
    scale, in a new DequantizeLinear of its own (a bias may be shared with other layers)."""
    from onnx import helper, numpy_helper

    def add(base, array):
        n = _unique(inits, base)
        inits[n] = numpy_helper.from_array(array, n)
        g.initializer.append(inits[n])
        return n

    new_scale = (scale * f).astype(np.float32)
    dq.input[1] = add(f"{name}_scale", new_scale)
    if bias is None:
        return
    bdq, bs, xs = bias
    new_bs = np.multiply(xs, new_scale, dtype=np.float32)
    bq = numpy_helper.to_array(inits[bdq.input[0]]).astype(np.float64)
    new_bq = np.rint(bq * bs.astype(np.float64) / new_bs.astype(np.float64)).astype(np.int32)
    out = _unique(inits | {o: None for n in g.node for o in n.output}, f"{bdq.input[0]}_rq_dq")
    new = helper.make_node("DequantizeLinear", [add(f"{bdq.input[0]}_rq", new_bq),
                                                add(f"{bdq.input[0]}_rq_scale", new_bs)], [out])
    new.attribute.extend(bdq.attribute)
    g.node.insert(0, new)  # its inputs are initializers
    node.input[2] = out


def unsigned_activations(proto) -> int:
    """Give every activation QuantizeLinear / DequantizeLinear a u8 zero point (s8 zero point + 128, in
    place; the same real values). tf2onnx writes s8 activations, as TFLite has them; with those,
    onnxruntime on x86 left the convs next to MobileNetV2's residual Adds in float (16 of 52, with
    transposes and requantization around them). With u8 activations it fuses every conv, Add, the
    pooling, the classifier and the softmax into integer ops. Returns how many nodes changed."""
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    made: dict[str, str] = {}
    n = 0
    for node in g.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 \
                or (node.op_type == "DequantizeLinear" and node.input[0] in inits):  # weights and biases
            continue
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != TensorProto.INT8:
            continue
        if zp.name not in made:
            made[zp.name] = _unique(inits, f"{zp.name}_u8")
            inits[made[zp.name]] = numpy_helper.from_array(
                (numpy_helper.to_array(zp).astype(np.int16) + 128).astype(np.uint8), made[zp.name])
            g.initializer.append(inits[made[zp.name]])
        node.input[2] = made[zp.name]
        n += 1
    _drop_unused_initializers(g)
    return n


def _is_depthwise(node, t) -> bool:
    return node.op_type in ("Conv", "ConvInteger", "QLinearConv") and _attr(node, "group", 1) > 1 \
        and len(t.dims) > 1 and t.dims[1] == 1


def unsigned_weights(proto) -> int:
    """Store the s8 weights of QDQ conv / matmul layers as u8 with zero point 128 (in place; exact:
    u8 - 128 == s8): onnxruntime then takes its u8 x u8 kernels, which cannot saturate but have no VNNI
    path (benchmarks/bench_export.py compares both encodings). Zero-point vectors are shared between layers of the same shape. Returns how many
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


def float_layers_kept_float(proto) -> int:
    """Give each float Conv / ConvTranspose / Gemm that reads a DequantizeLinear output a private
    DequantizeLinear with the same scale and zero point repeated per channel (in place; the same
    values). onnxruntime's WeightBiasQuantization rewrite, on by default from its basic optimization
    level, quantizes the float weights of such a layer per tensor when its input comes from a
    per-tensor DequantizeLinear: a layer the accuracy control kept in float would run at int8 with one
    weight scale (with the first depthwise conv kept in float, a 12-class model agreed with its TFLite
    twin on 23 % of images). A per-channel input scale is outside that rewrite.
    Returns how many layers changed."""
    from onnx import helper, numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: node for node in g.node for o in node.output}
    repeated: dict[tuple, str] = {}
    added = []  # (index of the producing node, new node)
    for node in g.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or node.input[1] not in inits:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits \
                or numpy_helper.to_array(inits[dq.input[1]]).size != 1:
            continue
        w = inits[node.input[1]].dims
        channels = {"Conv": w[1] * _attr(node, "group", 1), "ConvTranspose": w[0],
                    "Gemm": w[1] if _attr(node, "transB", 0) else w[0]}[node.op_type]
        params = []
        for part in (x for x in dq.input[1:3] if x):
            if (part, channels) not in repeated:
                name = _unique(inits, f"{part}_x{channels}")
                inits[name] = numpy_helper.from_array(
                    np.full(channels, numpy_helper.to_array(inits[part]).reshape(())), name)
                g.initializer.append(inits[name])
                repeated[part, channels] = name
            params.append(repeated[part, channels])
        out = f"{node.input[0]}_for_{node.output[0]}"
        source = next(i for i, x in enumerate(g.node) if x.output and x.output[0] == dq.output[0])
        added.append((source, helper.make_node("DequantizeLinear", [dq.input[0], *params], [out], axis=1)))
        node.input[0] = out
    for source, new in sorted(added, key=lambda a: -a[0]):  # right after the DequantizeLinear it copies
        g.node.insert(source + 1, new)
    return len(added)

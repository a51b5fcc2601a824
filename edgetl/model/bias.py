"""Bias correction of post-training int8 TFLite files: rounding weights and activations to int8 moves the
mean of each conv's output channels, and the shift piles up along the residual stream. Each int8 conv's
int32 bias is moved by the mean difference between the int8 file's output and the float file's on
calibration images, one conv after another in graph order, each measured with the convs before it already
corrected (shifts measured all at once add up along the residual paths and overshoot). After a fused
ReLU / ReLU6, only elements inside the activation's linear range in both files count: a clipped element
says nothing about the bias. Empirical bias correction as NNCF and AIMET apply it; hand-written because
the TFLite converter has none.

Measured effect: docs/quantization.md (calibration variants).
"""

from __future__ import annotations

import os

import numpy as np

from ..core.flatbuffer import load_model, op_names, pack_tflite, schema

BIAS_IMAGES = 64  # calibration images the shifts are measured on
_CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")
_RELU_MAX = {1: np.inf, 3: 6.0}  # ActivationFunctionType RELU, RELU6 -> upper end of the linear range
_EDGE = 1e-3  # values this close to a ReLU's ends count as clipped


def _convs(m) -> list[tuple[int, object]]:
    """(index, op) of subgraph 0's int8 convs that have a bias."""
    names, sg = op_names(), m.subgraphs[0]
    types = schema().TensorType
    out = []
    for j, op in enumerate(sg.operators or []):
        code = m.operatorCodes[op.opcodeIndex]
        if names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) not in _CONVS:
            continue
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and sg.tensors[op.outputs[0]].type == types.INT8:
            out.append((j, op))
    return out


def _prefix(m, j: int) -> bytes:
    """The file cut after op j, whose first output becomes the only output."""
    sg = m.subgraphs[0]
    ops, outs, sigs = sg.operators, sg.outputs, m.signatureDefs
    sg.operators, sg.outputs, m.signatureDefs = ops[:j + 1], [ops[j].outputs[0]], []
    try:
        return pack_tflite(m)
    finally:
        sg.operators, sg.outputs, m.signatureDefs = ops, outs, sigs


def _output(tfl: bytes, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(the file's only output for the batch xs, dequantized, as (values, channels); its raw int8 values or
    None for a float output), run by TFLite's built-in kernels: integer arithmetic that gives the same int8
    values on every CPU (shifts measured with XNNPACK's int8 kernels, which round their own way, helped
    less on the harder cases of docs/quantization.md)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=tfl, num_threads=min(4, os.cpu_count() or 1),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(xs.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], xs.astype(inp["dtype"]))
    it.invoke()
    out = it.get_output_details()[0]
    v = it.get_tensor(out["index"])
    scale, zero = out["quantization"]
    if not scale:
        return v.reshape(-1, v.shape[-1]).astype(np.float32), None
    raw = v.reshape(-1, v.shape[-1])
    return (raw.astype(np.float32) - zero) * scale, raw


def _take_off(m, op, shift: np.ndarray) -> None:
    """Move a conv's int32 bias by -shift (float units, per channel, in steps of its bias scales), in a
    buffer of its own (the converter shares identical buffers)."""
    t = m.subgraphs[0].tensors[op.inputs[2]]
    values = np.frombuffer(bytes(bytearray(m.buffers[t.buffer].data)), np.int32).astype(np.int64)
    values -= np.round(shift / np.asarray(t.quantization.scale, np.float64)).astype(np.int64)
    data = np.frombuffer(np.clip(values, -2**31, 2**31 - 1).astype(np.int32).tobytes(), np.uint8)
    if sum(x.buffer == t.buffer for sg in m.subgraphs for x in sg.tensors) > 1:
        buf = schema().BufferT()
        buf.data = data
        m.buffers.append(buf)
        t.buffer = len(m.buffers) - 1
    else:
        m.buffers[t.buffer].data = data


def bias_shifts(int8: bytes, calibrated: bytes, xs: np.ndarray) -> dict[str, np.ndarray]:
    """{conv name (its output tensor's): per-channel shift in float units to take off its bias}, measured
    on the float-input int8 file `int8` against `calibrated` (model.convert.calibrated_tflite's file, whose
    ops carry the same names) for the first BIAS_IMAGES of the preprocessed images xs, sequentially (module
    docstring)."""
    xs = xs[:BIAS_IMAGES]
    m, f = load_model(int8), load_model(calibrated)
    f_ops = {f.subgraphs[0].tensors[op.outputs[0]].name: j for j, op in enumerate(f.subgraphs[0].operators)}
    shifts: dict[str, np.ndarray] = {}
    for j, op in _convs(m):
        name = m.subgraphs[0].tensors[op.outputs[0]].name
        if name not in f_ops:
            continue
        ref, _ = _output(_prefix(f, f_ops[name]), xs)
        got, raw = _output(_prefix(m, j), xs)
        keep = (raw > -128) & (raw < 127)  # not clipped to the int8 range
        act = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if act in _RELU_MAX:  # inside the activation's linear range in both files
            lo, hi = _EDGE, _RELU_MAX[act] - _EDGE
            keep &= (ref > lo) & (ref < hi) & (got > lo) & (got < hi)
        shift = np.where(keep, got - ref, 0.0).sum(0) / np.maximum(keep.sum(0), 1)
        _take_off(m, op, shift)
        shifts[name.decode()] = shift
    return shifts


def corrected(tfl: bytes, shifts: dict[str, np.ndarray]) -> bytes:
    """tfl with each int8 conv named in shifts given its bias shift (ops kept in float are left alone)."""
    if not shifts:
        return tfl
    m = load_model(tfl)
    for _, op in _convs(m):
        shift = shifts.get(m.subgraphs[0].tensors[op.outputs[0]].name.decode())
        if shift is not None:
            _take_off(m, op, shift)
    return pack_tflite(m)

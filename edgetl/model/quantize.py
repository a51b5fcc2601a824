"""A QAT graph whose fake quantization is the TFLite converter's post-training int8 quantization
(tensorflow-model-optimization, tfmot), and the converter's range calibration applied to it.

What the converter makes of a float Keras model (model.convert.int8_tflite), and so what the graph does:
- weights: symmetric int8 in [-127, 127], one scale per output channel for Conv2D, DepthwiseConv2D and
  Dense (FULLY_CONNECTED). tfmot's default 8-bit scheme differs for two of them: it quantizes a
  DepthwiseConv2D kernel [h, w, C, 1] per axis over its last axis (size 1), i.e. with ONE scale for the
  whole kernel, and Dense kernels per tensor. MobileNetV2 with per-tensor depthwise weights loses tens of
  points, so a graph trained under tfmot's default scheme is trained against the wrong error.
- activations: asymmetric int8, one range per tensor, the min/max over the calibration images.
- BatchNorm is folded into the preceding kernel by the converter and not in the graph: per-channel
  symmetric quantization commutes with the per-channel factor a fold multiplies in (tested).
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..core.errors import EdgetlError
from .bn import bn_layers
from .graph import layers_of_type
from .tfenv import tfmot

_MATCHED: dict = {}


def _matched_classes() -> dict:
    """The tfmot classes of the matched scheme (made once, lazily: tfmot imports TensorFlow)."""
    if _MATCHED:
        return _MATCHED
    tf, keras, _ = tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras import quantizers
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as reg, default_8bit_quantize_scheme as sch)

    class DepthwisePerChannelQuantizer(quantizers.LastValueQuantizer):
        """Symmetric narrow-range int8 per channel for a depthwise kernel [h, w, C, m]: the kernel is viewed
        as [h, w, 1, C*m] (TFLite's channel axis), fake-quantized per channel, and viewed back."""

        def __init__(self, **_):
            super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

        def build(self, tensor_shape, name, layer):
            n = int(tensor_shape[-2]) * int(tensor_shape[-1])

            def variable(suffix, value):
                return layer.add_weight(f"{name}_{suffix}", shape=(n,),
                                        initializer=keras.initializers.Constant(value), trainable=False)

            return {"min_var": variable("min", -6.0), "max_var": variable("max", 6.0)}

        def __call__(self, inputs, training, weights, **kwargs):
            shape = tf.shape(inputs)
            flat = tf.reshape(inputs, tf.concat([shape[:2], [1, -1]], 0))
            return tf.reshape(super().__call__(flat, training, weights, **kwargs), shape)

        def get_config(self):
            return {}

    class DepthwiseQuantizeConfig(reg.Default8BitQuantizeConfig):
        def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",),
                     quantize_output=False):
            super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
            self.weight_quantizer = DepthwisePerChannelQuantizer()

    class Registry(reg.Default8BitQuantizeRegistry):
        def __init__(self):
            super().__init__(disable_per_axis=False)
            self._layer_quantize_map[keras.layers.DepthwiseConv2D] = DepthwiseQuantizeConfig()
            # a Dense kernel [in, out] has its channels last, as the conv quantizer expects
            self._layer_quantize_map[keras.layers.Dense] = reg.Default8BitConvQuantizeConfig(
                ["kernel"], ["activation"], False)

    class Scheme(sch.Default8BitQuantizeScheme):
        def get_quantize_registry(self):
            return Registry()

    DepthwisePerChannelQuantizer.__name__ = "EdgetlDepthwisePerChannelQuantizer"
    DepthwiseQuantizeConfig.__name__ = "EdgetlDepthwiseQuantizeConfig"
    _MATCHED.update(quantizer=DepthwisePerChannelQuantizer, scheme=Scheme,
                    custom_objects={c.__name__: c for c in (DepthwisePerChannelQuantizer, DepthwiseQuantizeConfig)})
    return _MATCHED


def quantize_matched(model):
    """`model` (one flat functional graph) as a QAT graph quantized as the converter quantizes it (module
    docstring). The graph is for training only: the converter cannot turn its per-channel Dense fake-quant
    into FULLY_CONNECTED, so int8 files are converted from its float weights (strip_quantization)."""
    _, _, mot = tfmot()
    if any(type(layer).__name__ in ("Functional", "Model", "Sequential") for layer in model.layers):
        raise EdgetlError("--qat: the model has a nested sub-model; QAT needs one flat functional graph")
    m, q = _matched_classes(), mot.quantization.keras
    try:
        with q.quantize_scope(m["custom_objects"]):
            return q.quantize_apply(q.quantize_annotate_model(model), scheme=m["scheme"]())
    except (ValueError, RuntimeError) as e:
        raise EdgetlError(f"--qat: tensorflow-model-optimization cannot quantize this model "
                          f"({str(e).splitlines()[0][:160]})") from None


def set_input_range(qmodel, scale: float, zero_point: int) -> None:
    """Give the QAT graph's input quantizer the range of an int8 tensor (int8 [-128, 127] with this scale
    and zero point), e.g. the int8 file's tensor the graph reads."""
    layer = qmodel.layers[1]
    if type(layer).__name__ != "QuantizeLayer":
        raise EdgetlError(f"--qat: unexpected QAT graph (first layer {type(layer).__name__})")
    for v in layer.weights:
        name = v.name.split("/")[-1].split(":")[0]
        if name.endswith("_min"):
            v.assign(np.full(v.shape, (-128 - zero_point) * scale, np.float32))
        elif name.endswith("_max"):
            v.assign(np.full(v.shape, (127 - zero_point) * scale, np.float32))


@contextlib.contextmanager
def frozen_bn(model, dropout_off: bool = False):
    """BatchNormalization layers frozen for the block (a frozen tf_keras BN layer runs in inference mode, so
    its statistics stay the float model's), and optionally dropout off; restored afterwards."""
    _, keras, _ = tfmot()
    bns = bn_layers(model)
    drops = layers_of_type(model, keras.layers.Dropout) if dropout_off else []
    saved = [b.trainable for b in bns], [d.rate for d in drops]
    for b in bns:
        b.trainable = False
    for d in drops:
        d.rate = 0.0
    try:
        yield
    finally:
        for b, t in zip(bns, saved[0]):
            b.trainable = t
        for d, r in zip(drops, saved[1]):
            d.rate = r


@contextlib.contextmanager
def _moving_average_decay(holder: dict):
    """Make tfmot's MovingAverageQuantizer use holder['decay'] instead of its hard-coded 0.999, and record
    its (min, max) variables in holder['vars'].

    tfmot 0.8 has no option for this (the decay is a literal in MovingAverageQuantizer.__call__), so the
    method is swapped for the duration of the block; the model must run eagerly so each call reads the
    current value.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers

    cls = quantizers.MovingAverageQuantizer
    original = cls.__call__

    def call(self, inputs, training, weights, **kwargs):
        holder.setdefault("vars", {})[id(weights["min_var"])] = (weights["min_var"], weights["max_var"])
        return quant_ops.MovingAvgQuantize(
            inputs, weights["min_var"], weights["max_var"], ema_decay=holder["decay"], is_training=training,
            num_bits=self.num_bits, per_channel=self.per_axis, symmetric=self.symmetric,
            narrow_range=self.narrow_range)

    cls.__call__ = call
    try:
        yield
    finally:
        cls.__call__ = original


def calibrate_ranges(qmodel, x: np.ndarray, batch_size: int = 32) -> int:
    """Set every activation range of the QAT graph to its min/max over x, the converter's calibration rule
    (tfmot's ranges otherwise start at +-6 and move by an EMA with decay 0.999); BatchNorm statistics
    untouched, dropout off. Returns the number of images used."""
    tf, _, _ = tfmot()
    holder = {"decay": 0.0}  # each pass sets every range to that batch's min/max ...
    lo: dict = {}
    hi: dict = {}
    with frozen_bn(qmodel, dropout_off=True), _moving_average_decay(holder):
        for start in range(0, len(x), batch_size):
            qmodel(tf.constant(x[start:start + batch_size]), training=True)
            for key, (vmin, vmax) in holder.get("vars", {}).items():
                lo[key] = np.minimum(lo.get(key, np.inf), vmin.numpy())
                hi[key] = np.maximum(hi.get(key, -np.inf), vmax.numpy())
    # ... and the range kept is the min/max over all batches
    for key, (vmin, vmax) in holder.get("vars", {}).items():
        vmin.assign(lo[key])
        vmax.assign(hi[key])
    return int(len(x))

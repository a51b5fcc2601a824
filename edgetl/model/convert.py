"""Keras -> TFLite conversion that export and `train --qat` share: the serving function (edgetl's I/O names)
and the post-training full-integer conversion, so that the QAT phase scores the very int8 file export
writes from the same model and calibration images."""

from __future__ import annotations

import numpy as np

from .bias import bias_shifts, corrected
from .tfenv import tf_and_keras, tflite_converter

INPUT_NAME, OUTPUT_NAME = "input", "probabilities"


def serving_fn(model, size: int, batch: int | None = 1):
    """The model's inference as a traced function of (batch, size, size, 3) float32 inputs named INPUT_NAME,
    returning {OUTPUT_NAME: probabilities}."""
    tf, _ = tf_and_keras()

    @tf.function(input_signature=[tf.TensorSpec([batch, size, size, 3], tf.float32, name=INPUT_NAME)])
    def serve(x):
        return {OUTPUT_NAME: model(x, training=False)}

    return serve


def calibrated_tflite(model, size: int, calib_x: np.ndarray) -> bytes:
    """The converter's float TFLite file of a Keras model with its activation ranges recorded (min/max over
    calib_x: preprocessed images fed one at a time in this order), ready for `quantize_calibrated`.
    Calibrating once lets export quantize the same ranges with different ops kept in float."""
    tf, _ = tf_and_keras()
    conv = tflite_converter(serving_fn(model, size, 1))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def rep():
        for i in range(len(calib_x)):
            yield [calib_x[i:i + 1]]

    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv._experimental_calibrate_only = True  # the converter's own switch (used by its QuantizationDebugger)
    return bytes(conv.convert())


def quantize_calibrated(calibrated: bytes, io: str = "int8", float_ops=()) -> bytes:
    """Full-integer TFLite from `calibrated_tflite`'s output, as the converter quantizes it: int8 weights
    (per channel) and activations, int8 / uint8 (or float32) input and output. float_ops: names of ops
    (their first output tensor's name) kept in float, with quantize/dequantize ops around them: the
    converter's `denylisted_nodes`, the mechanism of its QuantizationDebugger."""
    tf, _ = tf_and_keras()
    from tensorflow.lite.python import convert as tfl_convert
    from tensorflow.lite.python.lite import _deduplicate_readonly_buffers

    dtype = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io]
    out = tfl_convert.mlir_quantize(calibrated, input_data_type=dtype, output_data_type=dtype,
                                    denylisted_nodes=list(float_ops) or None)
    return bytes(_deduplicate_readonly_buffers(out))


def int8_tflite(model, size: int, calib_x: np.ndarray, io: str = "int8") -> bytes:
    """Full-integer TFLite of a float Keras model: int8 weights and activations, int8-only kernels, int8 /
    uint8 (or float32) input and output; activation ranges calibrated on calib_x (preprocessed images,
    fed one at a time in this order), conv biases corrected (model.bias) as export corrects them."""
    cal = calibrated_tflite(model, size, calib_x)
    shifts = bias_shifts(quantize_calibrated(cal, "float32"), cal, calib_x)
    return corrected(quantize_calibrated(cal, io), shifts)

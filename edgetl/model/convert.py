"""Keras -> TFLite conversion that export and `train --qat` share: the serving function (edgetl's I/O names)
and the post-training full-integer conversion, so that the QAT phase scores the very int8 file export
writes from the same model and calibration images."""

from __future__ import annotations

import numpy as np

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


def int8_tflite(model, size: int, calib_x: np.ndarray, io: str = "int8") -> bytes:
    """Full-integer TFLite of a float Keras model: int8 weights and activations, int8-only kernels, int8 /
    uint8 (or float32) input and output; activation ranges calibrated on calib_x (preprocessed images,
    fed one at a time in this order)."""
    tf, _ = tf_and_keras()
    conv = tflite_converter(serving_fn(model, size, 1))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def rep():
        for i in range(len(calib_x)):
            yield [calib_x[i:i + 1]]

    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float32":
        conv.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
        conv.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[io]
    return bytes(conv.convert())

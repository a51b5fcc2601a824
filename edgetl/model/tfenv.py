"""The one place TensorFlow is imported (lazily, only by commands that need it).

tensorflow-model-optimization supports Keras 2 only, so edgetl uses tf_keras and sets
TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported.
"""

from __future__ import annotations

import os

from ..core.errors import EdgetlError


def tf_and_keras():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf_keras
    except ImportError:
        raise EdgetlError(
            "this command needs TensorFlow: install the training extra (pip install 'edgetl[train]')"
        ) from None
    tf.get_logger().setLevel("ERROR")
    import warnings

    # TF's own converter calibrates through its deprecated tf.lite.Interpreter (edgetl itself runs
    # artifacts with ai_edge_litert) and warns about input statistics it does not use for full-integer
    # conversion; neither is actionable for a user, so keep them off the console.
    warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")
    warnings.filterwarnings("ignore", message=r"Statistics for quantized inputs were expected.*")
    return tf, tf_keras


def tfmot():
    """(tf, tf_keras, tensorflow_model_optimization)."""
    tf, keras = tf_and_keras()
    import tensorflow_model_optimization

    return tf, keras, tensorflow_model_optimization


def tflite_converter(fn, lower_to_saved_model: bool = True):
    """A TFLiteConverter for a traced tf.function (export's and the base cache's one way to convert).

    The trackable object is a bare tf.Module holding the function, not the Keras model: with the
    model TF re-traces every layer for a temporary SavedModel (~15-30 s instead of ~1 s).
    lower_to_saved_model=False takes the frozen-graph path instead (no SavedModel, so no holder is
    used): for a plain float graph like the cached base, the same flatbuffer ~0.4 s sooner."""
    tf, _ = tf_and_keras()
    holder = tf.Module()
    holder.fn = fn
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], holder)
    conv.experimental_lower_to_saved_model = lower_to_saved_model
    return conv


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    tf, keras = tf_and_keras()
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass

"""The one place TensorFlow is imported (lazily, only by commands that need it).

tensorflow-model-optimization supports Keras 2 only, so edgetl uses tf_keras and sets
TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported.
"""

from __future__ import annotations

import os

from .errors import EdgetlError


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
    return tf, tf_keras


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

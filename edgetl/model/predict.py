"""Predictions of a Keras model through one traced inference function per model, accuracy and confusion
matrices."""

from __future__ import annotations

import weakref

import numpy as np

from ..core.images import preprocess
from .tfenv import tf_and_keras

_TRACED = weakref.WeakKeyDictionary()  # model -> its traced inference function


def traced(model):
    """The model's inference function (training=False), traced once with a free batch dimension.

    Cached weakly, outside the model (nothing is added to what Keras saves or exports): tracing costs
    ~2 s, so a new function per call, or a retrace for every partial last batch, costs more than the
    predictions themselves on small data. The function reads the model's variables at each call, so it
    stays valid when the weights change (fine-tuning, QAT).
    """
    fn = _TRACED.get(model)
    if fn is None:
        tf, _ = tf_and_keras()
        ref = weakref.ref(model)

        @tf.function(input_signature=[tf.TensorSpec([None, *[int(d) for d in model.input_shape[1:]]], tf.float32)])
        def fn(x):
            return ref()(x, training=False)

        _TRACED[model] = fn
    return fn


def predict(model, x: np.ndarray, batch_size: int = 32, progress=None) -> np.ndarray:
    """Outputs of preprocessed float32 inputs (N, ...), in batches; progress(n) after each batch."""
    fn = traced(model)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(np.asarray(fn(np.ascontiguousarray(x[i:i + batch_size], np.float32))))
        if progress is not None:
            progress(len(out[-1]))
    if not out:
        return np.zeros((0, int(model.output_shape[-1])), np.float32)
    return np.concatenate(out).astype(np.float32)


def predict_pixels(model, pixels: np.ndarray, spec: dict, batch_size: int = 32, progress=None) -> np.ndarray:
    """Outputs (base features, or probabilities) of uint8 pixels (N,H,W,3), preprocessed with `spec`,
    one batch at a time (no float copy of the whole set)."""
    parts = [predict(model, preprocess(pixels[i:i + batch_size], spec), batch_size, progress)
             for i in range(0, len(pixels), batch_size)]
    return np.concatenate(parts) if parts else predict(model, np.zeros((0, *model.input_shape[1:]), np.float32))


def confusion(y_true, y_pred, n_classes: int) -> list[list[int]]:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm.tolist()


def scores(probs: np.ndarray, labels: np.ndarray) -> tuple[float, list[list[int]]]:
    """(accuracy, confusion matrix rows=true cols=predicted) of probabilities against labels."""
    pred = probs.argmax(1)
    acc = float((pred == labels).mean()) if len(labels) else float("nan")
    return acc, confusion(labels, pred, int(probs.shape[1]))


def evaluate(model, pixels, labels, spec, batch_size: int = 32) -> tuple[float, list[list[int]]]:
    """(accuracy, confusion matrix) of a model on uint8 pixels."""
    return scores(predict_pixels(model, pixels, spec, batch_size), labels)


def evaluate_head(head_model, features, labels) -> tuple[float, list[list[int]]]:
    """(accuracy, confusion matrix) of a head model on cached features."""
    return scores(np.asarray(head_model(features, training=False)), labels)

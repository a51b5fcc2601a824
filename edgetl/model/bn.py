"""BatchNormalization statistics: finding the BN layers (QAT wrappers unwrapped), measuring population
statistics exactly (precise BN) and storing them, and giving a randomly initialised base real statistics."""

from __future__ import annotations

import numpy as np

from ..core.console import progress
from ..core.images import preprocess
from .graph import layers_of_type
from .tfenv import tf_and_keras


def bn_layers(model) -> list:
    """The BatchNormalization layers of a flat tf_keras model (QAT wrappers unwrapped)."""
    _, keras = tf_and_keras()
    return layers_of_type(model, keras.layers.BatchNormalization)


def bn_state(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(moving_mean, moving_variance) of every BN layer, as numpy copies (for tests and reports)."""
    return [(np.array(b.moving_mean.numpy()), np.array(b.moving_variance.numpy())) for b in bn_layers(model)]


def estimate_bn_stats(model, pixels_uint8: np.ndarray, spec: dict, console=None, batch_size: int = 32,
                      label: str = "BN statistics") -> list[tuple[np.ndarray, np.ndarray]]:
    """Population (mean, variance) of every BN layer's input over the images, model left unchanged."""
    tf, _ = tf_and_keras()
    layers = bn_layers(model)
    n = len(pixels_uint8)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:  # never a final batch of one image
        starts.pop()
    bounds = [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]
    sums_m = [np.zeros(b.moving_mean.shape, np.float64) for b in layers]
    sums_m2 = [np.zeros(b.moving_mean.shape, np.float64) for b in layers]
    sums_v = [np.zeros(b.moving_mean.shape, np.float64) for b in layers]
    saved = [(b.trainable, b.momentum, b.moving_mean.numpy(), b.moving_variance.numpy()) for b in layers]
    try:
        for b in layers:
            b.trainable = True  # a frozen Keras BN layer ignores training=True; unfreeze for this pass only
            b.momentum = 0.0  # moving statistics := this batch's statistics

        @tf.function(reduce_retracing=True)
        def step(x):
            # Only BN layers change state in training mode; outputs are discarded and no gradient is taken.
            model(x, training=True)
            return [(b.moving_mean.read_value(), b.moving_variance.read_value()) for b in layers]

        with progress(console) as prog:
            task = prog.add_task(label, total=n)
            for s, e in bounds:
                stats = step(tf.constant(preprocess(pixels_uint8[s:e], spec)))
                w = float(e - s)
                for i, (m, v) in enumerate(stats):
                    m = np.asarray(m, np.float64)
                    sums_m[i] += w * m
                    sums_m2[i] += w * m * m
                    sums_v[i] += w * np.asarray(v, np.float64)
                prog.advance(task, e - s)
    finally:
        for b, (trainable, momentum, mm, mv) in zip(layers, saved):
            b.trainable = trainable
            b.momentum = momentum
            b.moving_mean.assign(mm)
            b.moving_variance.assign(mv)
    out = []
    for i in range(len(layers)):
        mean = sums_m[i] / n
        # law of total variance: within-batch variance + variance of the batch means
        out.append((mean, sums_v[i] / n + np.maximum(sums_m2[i] / n - mean * mean, 0.0)))
    return out


def assign_bn_stats(model, stats) -> None:
    """Store (mean, variance) pairs, one per BN layer in bn_layers order, as the moving statistics."""
    for b, (mean, var) in zip(bn_layers(model), stats):
        b.moving_mean.assign(np.asarray(mean).astype(np.float32))
        b.moving_variance.assign(np.asarray(var).astype(np.float32))


def calibrate_random_bn(base, pixels: np.ndarray, spec: dict, n: int = 64, seed: int = 0) -> int:
    """--weights random only: set every BatchNormalization's moving mean/variance to the statistics of
    n seeded training images (one forward pass in training mode with momentum 0). Without it, a randomly
    initialised MobileNetV2's features shrink to ~1e-11 and no head can learn from them (tests,
    latency work). Returns the number of images used."""
    bns = bn_layers(base)
    idx = np.sort(np.random.default_rng(seed).permutation(len(pixels))[:n])
    saved = [layer.momentum for layer in bns]
    try:
        for layer in bns:
            layer.momentum = 0.0
        base(preprocess(pixels[idx], spec), training=True)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return int(len(idx))

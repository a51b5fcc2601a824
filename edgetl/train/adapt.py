"""Domain adaptation without labels: re-estimate BatchNormalization statistics on a new domain (AdaBN).

A model trained on one camera / lighting / colour balance meets images from another: the features
shift, and the base's BatchNormalization layers normalise them with the OLD domain's moving mean and
variance. `adapt_bn` re-estimates those statistics on the new domain (AdaBN: Li et al., "Revisiting
Batch Normalization for Practical Domain Adaptation", 2016), using unlabelled images only. Weights,
biases, BN gamma/beta and the head are untouched.

Measuring (precise-BN, not a momentum-decayed guess): every BN layer is switched to training mode
with momentum 0, so after each batch its moving mean/variance hold exactly that batch's statistics
(with every earlier layer normalised by batch statistics too). We read them after every batch and
combine them over the whole data set with the law of total variance:
    mean = E_b[mean_b],  var = E_b[var_b] + Var_b(mean_b)   (batches weighted by size)
then restore each layer's trainable flag, momentum and statistics. Keras' own moving average cannot
do this: its fixed momentum (0.999 in MobileNetV2) barely moves in the few steps a small data set gives.

Applying ("relative" AdaBN, when the source domain's images are available): a transfer model's BN
statistics are ImageNet's, and its head was fit to features normalised with them; overwriting them
with the new domain's statistics also moves features that did not shift (measured on hymenoptera,
alpha 0.35, 160 px: plain AdaBN on a low-light copy 0.81 -> 0.77, relative 0.81 -> 0.88). So we
measure both domains the same way and map each channel's stored statistics by the measured change
(see adapt_bn). Without reference images we fall back to plain AdaBN and say so.

Also here: `shift_pixels`, simple synthetic domain shifts (low light, colour cast, grayscale, ...)
used by the tests and benchmarks/bench_compare.py to check that adaptation really recovers accuracy.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.console import progress
from ..core.data import seeded_subset
from ..core.errors import EdgetlError
from ..core.images import decode_all, decoding_of
from ..model.bn import assign_bn_stats, bn_layers, estimate_bn_stats

SHIFTS = ("low-light", "colour-cast", "grayscale", "low-contrast", "blur")


def adapt_bn(model, pixels_uint8: np.ndarray, spec: dict, console=None, reference_pixels: np.ndarray | None = None,
             batch_size: int = 32):
    """Re-estimate the moving mean/variance of every BatchNormalization layer for the new domain.

    pixels_uint8: (N, H, W, 3) uint8 images of the NEW domain (no labels), already resized to the
    model's input size; spec: the run's preprocessing spec (core.images.preprocessing_spec).
    reference_pixels: images of the domain the model was trained on (the source run's training
    images; `source_pixels(run)` decodes them). With them ("relative" AdaBN) each channel's stored
    statistics are mapped by the measured source -> new-domain change:
        mean' = mu_new + (mean - mu_src) * s,  var' = var * s^2,  s = sqrt((var_new + eps) / (var_src + eps))
    which is exact for a per-channel affine shift and leaves the model unchanged when both domains
    agree. This matters for transfer models: their BN statistics are ImageNet's while the head was
    fit to features normalised with them, so plainly replacing them by the new domain's statistics
    (classic AdaBN, used when no reference is given) also moves the features of an unshifted domain
    and can cost accuracy. Returns the same model object, updated in place (weights, gamma/beta and
    the head untouched). Raises EdgetlError for too few images, a wrong size or no BN layers.
    """
    t0 = time.perf_counter()
    layers = bn_layers(model)
    if not layers:
        raise EdgetlError("--adapt-bn: the model has no BatchNormalization layers to re-estimate")
    _check_pixels(model, pixels_uint8, "images of the new domain")
    if reference_pixels is not None:
        _check_pixels(model, reference_pixels, "reference (source-domain) images")
    target = estimate_bn_stats(model, pixels_uint8, spec, console, batch_size, "new-domain BN statistics")
    if reference_pixels is None:
        method, source, stats = "adabn", None, target
    else:
        source = estimate_bn_stats(model, reference_pixels, spec, console, batch_size, "source-domain BN statistics")
        method = "adabn-relative"
        stats = [_relative(b, t, s) for b, t, s in zip(layers, target, source)]
    assign_bn_stats(model, stats)
    info = {"method": method, "bn_layers": len(layers), "images": int(len(pixels_uint8)),
            "reference_images": None if reference_pixels is None else int(len(reference_pixels)),
            "batch_size": int(batch_size), "seconds": round(time.perf_counter() - t0, 3)}
    model._edgetl_adapt_info = info  # read by callers that record metadata (train --from --adapt-bn)
    if console is not None:
        how = (f"relative to {info['reference_images']} source-domain images" if source is not None
               else "no source-domain images: plain AdaBN")
        console.print(f"adapt-bn: re-estimated {len(layers)} BatchNormalization layers on {info['images']} "
                      f"new-domain images ({how}) in {info['seconds']:.1f} s; no labels used")
    return model


def _relative(bn, target, source) -> tuple[np.ndarray, np.ndarray]:
    """A BN layer's stored statistics mapped by the measured source -> target change of its input."""
    (mt, vt), (ms, vs) = target, source
    mo = bn.moving_mean.numpy().astype(np.float64)
    vo = bn.moving_variance.numpy().astype(np.float64)
    s = np.sqrt((vt + bn.epsilon) / (vs + bn.epsilon))
    return mt + (mo - ms) * s, vo * s * s


def _check_pixels(model, pixels, what: str) -> None:
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or len(pixels) < 2:
        raise EdgetlError(f"--adapt-bn: needs at least 2 {what} (got {len(pixels)})")
    want = tuple(int(d) for d in model.input_shape[1:3])
    if tuple(pixels.shape[1:3]) != want:
        raise EdgetlError(f"--adapt-bn: {what} are {pixels.shape[1]}x{pixels.shape[2]} px, "
                          f"the model expects {want[0]}x{want[1]}")


def source_pixels(run, console=None, limit: int | None = 1000) -> np.ndarray | None:
    """Decode the source run's recorded training images (the reference for relative AdaBN); a seeded
    subset of `limit` images on large data (statistics need no more). Returns None (and says so) when
    fewer than 2 of them can still be read."""
    items = run.split_items("train")
    if limit is not None:
        items = seeded_subset(items, limit, int(run.meta.get("seed", 0)))
    items = [(p, y) for p, y in items if Path(p).is_file()]
    pixels = []
    if len(items) >= 2:
        with progress(console) as prog:
            task = prog.add_task("decode source-run images", total=len(items))
            pixels = decode_all(items, run.image_size, progress=lambda: prog.advance(task),
                                decoding=decoding_of(run.preprocessing))[0]
    if len(pixels) < 2:
        if console is not None:
            console.print(f"[yellow]adapt-bn:[/] the training images of {run.path} are no longer readable; "
                          "falling back to plain AdaBN")
        return None
    return pixels


def adapt_info(model) -> dict:
    """What the last adapt_bn call on this model did ({} if never adapted)."""
    return dict(getattr(model, "_edgetl_adapt_info", {}) or {})


def shift_pixels(pixels: np.ndarray, kind: str) -> np.ndarray:
    """A synthetic domain shift of uint8 RGB images (N,H,W,3) or (H,W,3), deterministic.

    low-light: x * 0.3 (a dark camera); colour-cast: per-channel gains (warm, yellowish light);
    grayscale: luminance copied to R, G, B; low-contrast: 0.35 * (x - 128) + 160 (hazy, washed out);
    blur: 5x5 box blur (out-of-focus lens).
    """
    x = np.asarray(pixels).astype(np.float32)
    if kind == "low-light":
        y = x * 0.3
    elif kind == "colour-cast":
        y = x * np.array([1.25, 0.95, 0.45], np.float32) + np.array([20, 10, 0], np.float32)
    elif kind == "grayscale":
        g = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
        y = np.repeat(g[..., None], 3, axis=-1)
    elif kind == "low-contrast":
        y = (x - 128.0) * 0.35 + 160.0
    elif kind == "blur":
        y = _box_blur(x, 5)
    else:
        raise EdgetlError(f"shift {kind!r}: accepted values are {', '.join(SHIFTS)}")
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _box_blur(x: np.ndarray, k: int) -> np.ndarray:
    # Separable box blur with edge padding, numpy only (Pillow would need one call per image).
    pad = k // 2
    hw = (x.ndim - 3, x.ndim - 2)
    widths = [(0, 0)] * x.ndim
    widths[hw[0]] = (pad, pad)
    widths[hw[1]] = (pad, pad)
    p = np.pad(x, widths, mode="edge")
    c = np.cumsum(p, axis=hw[0], dtype=np.float64)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=hw[0])), c], axis=hw[0])
    y = (np.take(c, range(k, c.shape[hw[0]]), axis=hw[0]) - np.take(c, range(0, c.shape[hw[0]] - k), axis=hw[0])) / k
    c = np.cumsum(y, axis=hw[1])
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=hw[1])), c], axis=hw[1])
    y = (np.take(c, range(k, c.shape[hw[1]]), axis=hw[1]) - np.take(c, range(0, c.shape[hw[1]] - k), axis=hw[1])) / k
    return y.astype(np.float32)

"""The frozen base as a cached TFLite file, per backbone (alpha, size, weights sha256); and the frozen bottom
of a fine-tuned base (the layers below the cut), per backbone and cut.

Base features are the only heavy compute of `edgetl train`. TFLite (XNNPACK) runs the frozen base ~3x
faster than TensorFlow and, unlike TensorFlow, needs nothing imported: with a cached copy the features
are computed on one core while the main thread is still importing TensorFlow. The copy is made once
per backbone (~1 s: the same converter path as `edgetl export`), checked against the Keras base before
it is used, and carries its key inside (artifact.embed_tflite), so a stale or foreign file is never
used for another backbone. A sidecar sha256 catches any other change to the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..core import flatbuffer
from ..core.artifact import embed_tflite, read_tflite_meta
from ..core.rundir import write_bytes
from ..core.runtime import TFLiteRunner
from .tfenv import tf_and_keras, tflite_converter


CACHE_ENV = "EDGETL_CACHE_DIR"
BASE_CACHE_VERSION = 1
BASE_CACHE_RTOL = 1e-3  # max |Keras - TFLite| feature difference, relative to the largest feature


def cache_dir() -> Path:
    """$EDGETL_CACHE_DIR, else $XDG_CACHE_HOME/edgetl, else ~/.cache/edgetl."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgetl"


def base_cache_key(weights: dict, alpha: float, image_size: int, cut: str | None = None) -> dict | None:
    """What identifies a cached base (or, with `cut`, the bottom of the base up to that layer); None when
    the base has no stable identity (random weights)."""
    if not weights.get("sha256"):
        return None
    key = {"kind": "edgetl-base", "version": BASE_CACHE_VERSION, "alpha": float(alpha),
           "image_size": int(image_size), "pooling": "avg", "weights_sha256": weights["sha256"]}
    return key if cut is None else {**key, "kind": "edgetl-bottom", "cut": cut}


def base_cache_path(key: dict) -> Path:
    cut = f"-{key['cut']}" if key.get("cut") else ""
    return cache_dir() / "bases" / (f"mobilenetv2-a{key['alpha']}-{key['image_size']}-"
                                    f"{key['weights_sha256'][:16]}{cut}.tflite")


def read_base_cache(key: dict) -> tuple[bytes | None, str]:
    """(model bytes, "") if a valid cached base for `key` exists, else (None, why not)."""
    path = base_cache_path(key)
    try:
        buf = path.read_bytes()
        digest = _digest_path(path).read_text().strip()
    except FileNotFoundError:
        return None, "not cached yet"
    except OSError as e:
        return None, f"{path}: {e.strerror}"
    try:  # the sidecar sha256 catches any change to the file; the embedded key, a file for another base
        ok = hashlib.sha256(buf).hexdigest() == digest and flatbuffer.is_tflite(buf) and read_tflite_meta(buf) == key
    except Exception:  # a damaged file: rebuilt by the caller
        ok = False
    return (buf, "") if ok else (None, f"{path} is damaged or for another backbone: rebuilt")


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def tflite_copy(model, check_x: np.ndarray, key: dict | None = None) -> tuple[bytes | None, str]:
    """A frozen Keras model (the base, or its bottom) converted to TFLite (carrying `key` inside, if given)
    and checked on `check_x` (>= 1 preprocessed image) against Keras. Returns (bytes, "") or (None, why not
    usable)."""
    tf, _ = tf_and_keras()
    size = int(check_x.shape[1])

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def serve(x):
        return model(x, training=False)

    try:
        raw = tflite_converter(serve, lower_to_saved_model=False).convert()
    except Exception as e:  # the TensorFlow path still works: report and go on without a copy
        return None, f"TFLite conversion failed ({type(e).__name__})"
    buf = embed_tflite(bytes(raw), key) if key is not None else bytes(raw)
    # the reference: the function just traced for the converter (a new tf.function would trace again)
    want = np.concatenate([np.asarray(serve(check_x[i:i + 1])).reshape(1, -1) for i in range(len(check_x))])
    try:
        got = TFLiteRunner(buf).outputs(check_x)
    except Exception as e:  # the runtime rejects the file: TensorFlow instead
        return None, f"TFLite runtime failed ({type(e).__name__}: {str(e)[:120]})"
    diff = float(np.abs(want - got).max())
    if diff > BASE_CACHE_RTOL * max(1.0, float(np.abs(want).max())):
        return None, f"TFLite base differs from Keras by {diff:.2g}: not used"
    return buf, ""


def write_base_cache(base, key: dict, check_x: np.ndarray) -> tuple[bytes | None, str]:
    """Convert the frozen Keras base (or bottom) to TFLite, check it on `check_x` (>= 1 preprocessed image)
    against Keras, store it atomically in the cache. Returns (bytes, "") or (None, why not used)."""
    buf, why = tflite_copy(base, check_x, key)
    if buf is None:
        return None, why
    path = base_cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buf)  # (each write atomic; a crash between the two leaves a mismatch: rebuilt)
        write_bytes(_digest_path(path), (hashlib.sha256(buf).hexdigest() + "\n").encode())
    except OSError as e:  # a read-only home still trains (and uses the converted copy this time)
        return buf, f"not cached: {path.parent}: {e.strerror}"
    return buf, ""

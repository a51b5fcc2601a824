"""MobileNetV2 backbone: weight resolution (Keras cache/download, local file, mirror dir) and features."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

from .errors import EdgetlError

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MIN_SIZE, MAX_SIZE = 96, 224
WEIGHTS_ENV = "EDGETL_WEIGHTS_DIR"
KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


PRETRAINED_SIZES = (96, 128, 160, 192, 224)


def check_backbone_options(alpha: float, image_size: int, weights: str = "imagenet") -> None:
    """Validate before any work. Pretrained weights exist for 96-224 px (Keras' sizes); random
    weights (tests, latency work) accept any multiple of 32 from 32 to 224."""
    if alpha not in ALPHAS:
        raise EdgetlError(f"--alpha {alpha}: accepted values are {', '.join(str(a) for a in ALPHAS)}")
    if weights == "random":
        if not (32 <= image_size <= MAX_SIZE and image_size % 32 == 0):
            raise EdgetlError(f"--image-size {image_size}: with --weights random use a multiple of 32 from 32 to 224")
        return
    if image_size not in PRETRAINED_SIZES:
        raise EdgetlError(
            f"--image-size {image_size} with --alpha {alpha}: pretrained MobileNetV2 accepts "
            f"{', '.join(map(str, PRETRAINED_SIZES))}")


def keras_weights_name(alpha: float, rows: int = 224) -> str:
    """Keras' own file name for the no-top ImageNet weights (keras.applications.mobilenet_v2)."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def resolve_weights(weights: str, alpha: float, image_size: int) -> dict:
    """Find the weights file. Returns {'source', 'path', 'sha256'} or {'source': 'random', ...}.

    `imagenet`: the mirror directory named by $EDGETL_WEIGHTS_DIR first, then Keras' cache
    (~/.keras/models), then Keras' normal download (keras.utils.get_file, which caches). `random`:
    no pretrained weights. Anything else: a local .h5 path.
    """
    from .rundir import sha256_file

    if weights == "random":
        return {"source": "random", "path": None, "sha256": None}
    if weights != "imagenet":
        p = Path(weights).expanduser()
        if not p.is_file():
            raise EdgetlError(f"--weights {weights}: no such file (give 'imagenet', 'random' or a path to a .h5)")
        return {"source": "file", "path": str(p.resolve()), "sha256": sha256_file(p)}
    # Keras publishes per-resolution files; the 224 px file loads at any size 96-224 (same shapes).
    names = [keras_weights_name(alpha, r) for r in dict.fromkeys((image_size, 224)) if r in (96, 128, 160, 192, 224)]
    mirror = os.environ.get(WEIGHTS_ENV)
    if mirror:
        for n in names:
            if (Path(mirror) / n).is_file():
                p = Path(mirror) / n
                return {"source": f"${WEIGHTS_ENV}", "path": str(p.resolve()), "sha256": sha256_file(p)}
    for n in names:
        if (_keras_cache_dir() / n).is_file():
            p = _keras_cache_dir() / n
            return {"source": "keras-cache", "path": str(p), "sha256": sha256_file(p)}
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    try:
        path = keras.utils.get_file(names[0], KERAS_BASE_URL + names[0], cache_subdir="models")
    except Exception as e:
        raise EdgetlError(
            f"--weights imagenet: cannot download {names[0]} ({type(e).__name__}); offline, pass "
            f"--weights PATH.h5 or set {WEIGHTS_ENV} to a folder holding Keras' weight files") from None
    return {"source": "keras-download", "path": str(path), "sha256": sha256_file(path)}


def build_base(alpha: float, image_size: int, weights_path: str | None):
    """Keras MobileNetV2 without top, global-average pooled output (flat functional graph)."""
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    try:
        return keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False,
            weights=weights_path, pooling="avg")
    except ValueError as e:
        raise EdgetlError(f"--weights {weights_path}: cannot load into MobileNetV2 alpha {alpha} "
                          f"({str(e).splitlines()[0][:160]})") from None


_FEATURE_FNS = weakref.WeakKeyDictionary()  # model -> its traced inference function


def feature_fn(base, batch_size: int = 32):
    """A compiled inference function of the frozen base (faster than Keras predict on small data).

    Traced once per model with a None batch dimension and cached (weakly, outside the model, so
    nothing is added to what Keras saves or exports): tracing costs ~2 s, so a new function per call,
    or a retrace for every partial last batch, costs more than the features themselves on small data.
    """
    from .tfenv import tf_and_keras

    try:
        return _FEATURE_FNS[base]
    except (KeyError, TypeError):
        pass
    tf, _ = tf_and_keras()
    shape = [None, *[int(d) for d in base.input_shape[1:]]]
    ref = weakref.ref(base)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def f(x):
        return ref()(x, training=False)

    try:
        _FEATURE_FNS[base] = f
    except TypeError:  # pragma: no cover - unhashable model object
        pass
    return f


def extract_features(base, pixels: np.ndarray, spec: dict, batch_size: int = 32, progress=None) -> np.ndarray:
    """Base features of uint8 pixels (N,H,W,3), preprocessed with `spec`, in batches."""
    from .data import preprocess

    f = feature_fn(base)
    out = []
    for i in range(0, len(pixels), batch_size):
        x = preprocess(pixels[i:i + batch_size], spec)
        out.append(np.asarray(f(x)))
        if progress is not None:
            progress(len(x))
    if not out:
        return np.zeros((0, int(base.output_shape[-1])), np.float32)
    return np.concatenate(out).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the frozen base as a cached TFLite file (per backbone: alpha, size, weights sha256)
# ------------------------------------------------------------------------------------------------
# Why: base features are the only heavy compute of `edgetl train`. TFLite (XNNPACK) runs the frozen
# base ~3x faster than TensorFlow and, unlike TensorFlow, needs nothing imported: with a cached copy
# the features are computed on one core while the main thread is still importing TensorFlow. The copy
# is made once per backbone (~1 s: the same converter path as `edgetl export`), checked against the
# Keras base before it is used, and carries its key inside (artifact.embed_tflite), so a stale or
# foreign file is never used for another backbone.
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


def base_cache_key(weights: dict, alpha: float, image_size: int) -> dict | None:
    """What identifies a cached base; None when the base has no stable identity (random weights)."""
    if not weights.get("sha256"):
        return None
    return {"kind": "edgetl-base", "version": BASE_CACHE_VERSION, "alpha": float(alpha),
            "image_size": int(image_size), "pooling": "avg", "weights_sha256": weights["sha256"]}


def base_cache_path(key: dict) -> Path:
    return cache_dir() / "bases" / (f"mobilenetv2-a{key['alpha']}-{key['image_size']}-"
                                    f"{key['weights_sha256'][:16]}.tflite")


def read_base_cache(key: dict) -> tuple[bytes | None, str]:
    """(model bytes, "") if a valid cached base for `key` exists, else (None, why not)."""
    from .artifact import is_tflite, read_tflite_meta

    import hashlib

    path = base_cache_path(key)
    try:
        buf = path.read_bytes()
        digest = _digest_path(path).read_text().strip()
    except FileNotFoundError:
        return None, "not cached yet"
    except OSError as e:
        return None, f"{path}: {e.strerror}"
    try:  # the sidecar sha256 catches any change to the file; the embedded key, a file for another base
        ok = hashlib.sha256(buf).hexdigest() == digest and is_tflite(buf) and read_tflite_meta(buf) == key
    except Exception:  # a damaged file: rebuilt by the caller
        ok = False
    return (buf, "") if ok else (None, f"{path} is damaged or for another backbone: rebuilt")


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_base_cache(base, key: dict, check_x: np.ndarray) -> tuple[bytes | None, str]:
    """Convert the frozen Keras base to TFLite, check it on `check_x` (>= 1 preprocessed image) against
    the Keras base, store it atomically in the cache. Returns (bytes, "") or (None, why not used)."""
    import hashlib

    from .artifact import embed_tflite
    from .rundir import write_bytes
    from .tfenv import tf_and_keras, tflite_converter

    tf, _ = tf_and_keras()
    size = int(key["image_size"])

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def serve(x):
        return base(x, training=False)

    try:
        raw = tflite_converter(serve, lower_to_saved_model=False).convert()
    except Exception as e:  # the TensorFlow features path still works: report and go on without a cache
        return None, f"TFLite conversion failed ({type(e).__name__})"
    buf = embed_tflite(bytes(raw), key)
    # the reference: the function just traced for the converter (a new tf.function would trace again)
    want = np.concatenate([np.asarray(serve(check_x[i:i + 1])) for i in range(len(check_x))])
    try:
        got = TFLiteBase(buf)(check_x)
    except Exception as e:  # the runtime rejects the file: TensorFlow features instead
        return None, f"TFLite runtime failed ({type(e).__name__}: {str(e)[:120]})"
    diff = float(np.abs(want - got).max())
    if diff > BASE_CACHE_RTOL * max(1.0, float(np.abs(want).max())):
        return None, f"TFLite base differs from Keras by {diff:.2g}: not used"
    path = base_cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buf)  # (each write atomic; a crash between the two leaves a mismatch: rebuilt)
        write_bytes(_digest_path(path), (hashlib.sha256(buf).hexdigest() + "\n").encode())
    except OSError as e:  # a read-only home still trains (and uses the converted copy this time)
        return buf, f"not cached: {path.parent}: {e.strerror}"
    return buf, ""


class TFLiteBase:
    """The frozen base from its TFLite copy (ai_edge_litert, XNNPACK): preprocessed float32 NHWC in,
    (N, features) out. One instance per thread (an interpreter is not thread-safe)."""

    def __init__(self, model: bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_content=model, num_threads=threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # batch 1 per invoke: on one XNNPACK thread as fast per image as larger batches, no resize
        rows = []
        for i in range(len(x)):
            self.interp.set_tensor(self.inp, x[i:i + 1])
            self.interp.invoke()
            rows.append(self.interp.get_tensor(self.out)[0].copy())
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)

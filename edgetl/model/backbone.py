"""MobileNetV2 backbone: option checks, weight resolution (mirror dir, Keras cache/download, local file) and
the frozen, average-pooled base."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import EdgetlError
from .tfenv import tf_and_keras

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
PRETRAINED_SIZES = (96, 128, 160, 192, 224)  # Keras publishes ImageNet weights for these input sizes
MAX_SIZE = 224
WEIGHTS_ENV = "EDGETL_WEIGHTS_DIR"
KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


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
    from ..core.rundir import sha256_file

    if weights == "random":
        return {"source": "random", "path": None, "sha256": None}
    if weights != "imagenet":
        p = Path(weights).expanduser()
        if not p.is_file():
            raise EdgetlError(f"--weights {weights}: no such file (give 'imagenet', 'random' or a path to a .h5)")
        return {"source": "file", "path": str(p.resolve()), "sha256": sha256_file(p)}
    # Keras publishes per-resolution files; the 224 px file loads at any size 96-224 (same shapes).
    names = [keras_weights_name(alpha, r) for r in dict.fromkeys((image_size, 224)) if r in PRETRAINED_SIZES]
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
    _, keras = tf_and_keras()
    try:
        return keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False,
            weights=weights_path, pooling="avg")
    except (ValueError, OSError, KeyError) as e:  # wrong architecture, or an unreadable HDF5 file
        raise EdgetlError(f"--weights {weights_path}: cannot load into MobileNetV2 alpha {alpha} "
                          f"({str(e).splitlines()[0][:160]})") from None

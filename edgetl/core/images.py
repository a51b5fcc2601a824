"""Images: robust decoding (any format Pillow reads, EXIF applied), the one preprocessing function,
input quantization, seeded augmentation, and a decoding thread pool. numpy + Pillow only."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

# MobileNetV2's own preprocessing (keras.applications.mobilenet_v2.preprocess_input, mode "tf"):
# RGB pixels in [0, 255] -> x / 127.5 - 1 -> [-1, 1]. Recorded in every run and every artifact.
# jpeg_draft: a JPEG is decoded at the coarsest DCT scale (libjpeg's 1/2, 1/4 or 1/8) that keeps both sides at
# least this many times the input size, then resized as any image (docs/benchmarks.md: 4x faster decoding of
# 3000x2058 photos, pixels within 2.1 of 255 on average, the same accuracy). Images smaller than twice the
# input decode in full; a spec without the key (0) decodes every image in full.
# antialias false: bilinear sampled at half-pixel centres, tf.image.resize's default (what Keras'
# image_dataset_from_directory feeds a model). Pillow's antialiasing filter blurs a downscaled photo, and the
# frozen ImageNet features do better on the sharper image (docs/accuracy.md#resizing: +0.5 points of test
# accuracy on average over 16 data set / width / size cases, 13 better, 2 worse). A spec without the key
# antialiases.
MOBILENET_V2_PREPROCESSING = {
    "color": "RGB",
    "layout": "NHWC",
    "resize": "bilinear",
    "antialias": False,
    "jpeg_draft": 2,
    "scale": 1.0 / 127.5,
    "offset": -1.0,
    "range": [-1.0, 1.0],
    "name": "mobilenet_v2",
}


def preprocessing_spec(image_size: int) -> dict:
    return {**MOBILENET_V2_PREPROCESSING, "size": [int(image_size), int(image_size)]}


class Decoding(NamedTuple):
    """How an image file becomes input pixels, as a preprocessing spec records it."""

    jpeg_draft: int = 0  # 0: decode in full
    antialias: bool = True  # False: point-sampled bilinear (see MOBILENET_V2_PREPROCESSING)


PIXEL_SIZES = range(8, 4097)  # image sizes a run or an artifact may record


def spec_problem(spec) -> str | None:
    """What makes a recorded preprocessing spec unusable (an edited file), in a few words; None when it is fine:
    a size of two pixel counts, numeric scale and offset, and when present a true/false antialias and a whole
    jpeg_draft >= 0 (bool("false") would silently antialias)."""
    if not isinstance(spec, dict):
        return "is not an object"
    size = spec.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v in PIXEL_SIZES for v in size)):
        return f"has 'size' {size!r}, not two pixel counts (height, width)"
    for k in ("scale", "offset"):
        if isinstance(spec.get(k), bool) or not isinstance(spec.get(k), (int, float)):
            return f"has {k!r} {spec.get(k)!r}, not a number"
    if "antialias" in spec and not isinstance(spec["antialias"], bool):
        return f"has 'antialias' {spec['antialias']!r}, not true or false"
    if "jpeg_draft" in spec and (type(spec["jpeg_draft"]) is not int or spec["jpeg_draft"] < 0):
        return f"has 'jpeg_draft' {spec['jpeg_draft']!r}, not a whole number >= 0"
    return None


def decoding_of(spec: dict | None) -> Decoding:
    """The decoding a preprocessing spec asks for (a spec without a key: that key's default)."""
    spec = spec or {}
    return Decoding(int(spec.get("jpeg_draft") or 0), bool(spec.get("antialias", True)))


def preprocess(pixels: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 RGB pixels (N,H,W,3) or (H,W,3), already resized -> float32 model input."""
    return pixels.astype(np.float32) * np.float32(spec["scale"]) + np.float32(spec["offset"])


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Preprocessed float32 -> an integer input tensor, the way TFLite's own QUANTIZE kernel does it
    (float32 x / scale, rounded half away from zero, + zero point, saturated). The one function export's
    parity check, bench and predict use. MobileNetV2's [-1, 1] pixels at scale 1/127.5 fall exactly
    halfway between two int8 steps, so a different rounding rule (numpy's half-to-even) or adding the
    zero point before rounding moves half the input values by one step."""
    v = np.asarray(x, np.float32) / np.float32(scale)
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)) + np.float32(zero_point)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


class ImageDecodeError(Exception):
    pass


def load_image(path: str | Path, size: int | tuple[int, int], decoding: Decoding = Decoding()) -> np.ndarray:
    """Decode any common image to uint8 RGB (size, size, 3), EXIF orientation applied, resized as
    `decoding` says: a JPEG at a reduced DCT scale when its jpeg_draft > 0, the bilinear resize
    antialiased or point-sampled (see MOBILENET_V2_PREPROCESSING).

    Grayscale, palette, RGBA (composited on white), CMYK and 16-bit images are converted; anything
    Pillow cannot decode fully (zero bytes, truncated, text named .jpg, a header claiming more pixels
    than Pillow's decompression-bomb limit) raises ImageDecodeError.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    h, w = (size, size) if isinstance(size, int) else size
    try:
        if Path(path).stat().st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
    except OSError as e:
        raise ImageDecodeError(f"cannot read ({e.strerror or type(e).__name__})") from None
    try:
        with Image.open(path) as im:
            if decoding.jpeg_draft and im.format in ("JPEG", "MPO"):  # (a square box: EXIF may rotate it next)
                side = decoding.jpeg_draft * max(w, h)
                im.draft(None, (side, side))
            im.load()  # force a full decode: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            if im.size != (w, h):  # point-sampled: output pixel centre x + 0.5 reads input (x + 0.5) * W / w
                im = im.resize((w, h), Image.BILINEAR) if decoding.antialias else im.transform(
                    (w, h), Image.Transform.AFFINE, (im.width / w, 0, 0, 0, im.height / h, 0), resample=Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageDecodeError("not a readable image (unknown format or not an image file)") from None
    except Image.DecompressionBombError as e:  # a header claiming more pixels than Pillow will decode
        raise ImageDecodeError(f"too large to decode ({str(e).split(',')[0]})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"unexpected decoded shape {arr.shape}")
    return arr


def _to_rgb(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    if im.mode == "RGB;16" or im.mode.startswith("BGR"):
        im = im.convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def augment_image(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One light random view of a uint8 (H,W,3) image: horizontal flip, crop 80-100% + resize, brightness.

    Hand-written in numpy/Pillow so augmentation stays outside the model graph and is exactly seeded.
    """
    from PIL import Image

    h, w = img.shape[:2]
    out = img[:, ::-1] if rng.random() < 0.5 else img
    scale = rng.uniform(0.8, 1.0)
    ch, cw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = np.ascontiguousarray(out[y0:y0 + ch, x0:x0 + cw])
    if (ch, cw) != (h, w):
        crop = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))
    factor = rng.uniform(0.8, 1.2)
    return np.clip(crop.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def strong_augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One strong random view of a uint8 (H,W,3) image, drawn fresh every fine-tuning epoch: random-resized
    crop (35-100 % of the area, aspect 3/4-4/3; the whole image after 10 misses) back to (H,W), horizontal
    flip, brightness, contrast and saturation each x U(0.8, 1.2)."""
    import math

    from PIL import Image

    h, w = img.shape[:2]
    ch, cw = h, w
    for _ in range(10):
        area = rng.uniform(0.35, 1.0) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        tw, th = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if tw <= w and th <= h:
            ch, cw = th, tw
            break
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = img[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    if (ch, cw) != (h, w):
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.BILINEAR))
    x = out.astype(np.float32) * np.float32(rng.uniform(0.8, 1.2))
    mean = x.mean()
    x = (x - mean) * np.float32(rng.uniform(0.8, 1.2)) + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * np.float32(rng.uniform(0.8, 1.2)) + grey
    return np.clip(x, 0, 255).astype(np.uint8)


def augment_views(pixels: np.ndarray, view: int, seed: int, start: int = 0) -> np.ndarray:
    """View number `view` (1..N) of each image; image i's view depends only on (seed, start+i, view)."""
    out = np.empty_like(pixels)
    for i in range(len(pixels)):
        out[i] = augment_image(pixels[i], np.random.default_rng([seed, start + i, view]))
    return out


def feature_views(augment: int) -> list[tuple[str, int]]:
    """The order in which base features are computed and stacked, the same on both feature paths (the
    cached TFLite base and TensorFlow): train originals, val, test, then each augmented train view
    (view 0 = the image itself)."""
    return [("train", 0), ("val", 0), ("test", 0)] + [("train", v) for v in range(1, augment + 1)]


def view_pixels(pixels: np.ndarray, view: int, seed: int, start: int = 0) -> np.ndarray:
    return augment_views(pixels, view, seed, start) if view else pixels


def decode_item(item, size: int, decoding: Decoding = Decoding()):
    """Decode one (path, label) item: (uint8 pixels, None), or (None, skip record naming the file and why)
    when the file cannot be decoded. Safe on any thread (Pillow releases the GIL while decoding)."""
    try:
        return load_image(item[0], size, decoding), None
    except ImageDecodeError as e:
        return None, {"file": item[0], "reason": str(e)}


def decode_all(items, size: int, workers: int = 2, progress=None, decoding: Decoding = Decoding()):
    """Decode (path, label) items to (uint8 pixels, labels, paths, skipped) on `workers` threads. Bad
    files are skipped and reported, never fatal."""
    def one(item):
        out = decode_item(item, size, decoding)
        if progress is not None:
            progress()
        return out

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, items))
    return collect(items, results, size)


def collect(items, results, size: int):
    """(pixels (N,size,size,3) uint8, labels (N,) int64, paths, skipped) from items and their
    `decode_item` results, in item order; skipped files are left out of the first three."""
    pix, labels, paths, skipped = [], [], [], []
    for (path, label), (arr, skip) in zip(items, results):
        if skip is not None:
            skipped.append(skip)
        else:
            pix.append(arr)
            labels.append(label)
            paths.append(path)
    arr = np.stack(pix) if pix else np.zeros((0, size, size, 3), np.uint8)
    return arr, np.asarray(labels, dtype=np.int64), paths, skipped

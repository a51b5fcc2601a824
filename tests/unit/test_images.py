"""Image decoding: every odd file decodes correctly or is skipped and named; the one preprocessing and
input-quantization functions; seeded augmentation; the decoding pool keeps item order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.core import images
from factory import RED, exif_rotated, make_odd_files
from edgetl.core.images import Decoding, ImageDecodeError, load_image

@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("odd")
    return d, make_odd_files(d)


def test_odd_files_decode_or_are_refused(odd):
    d, kinds = odd
    for name, want in kinds.items():
        if want == "skip":
            with pytest.raises(ImageDecodeError):
                load_image(d / name, 32)
        else:
            arr = load_image(d / name, 32)
            assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8, name


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "gone.jpg", 8)


def test_colour_conversions_are_correct(odd):
    d, _ = odd
    for name in ("rgba.png", "cmyk.jpg", "with space.jpg", "anim.gif"):
        mean = load_image(d / name, 16).reshape(-1, 3).mean(0)
        assert np.abs(mean - np.array(RED)).max() < 12, (name, mean)
    grey = load_image(d / "gray.png", 16)
    assert np.ptp(grey, axis=2).max() == 0  # grey replicated to 3 equal channels
    deep = load_image(d / "deep16.png", 16)
    assert abs(int(deep[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1  # 16-bit scaled, not clipped to 255


def test_rgba_transparency_composited_on_white(tmp_path):
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", 8).min() == 255


def test_exif_orientation_applied(tmp_path):
    exif_rotated(tmp_path / "exif.jpg")
    arr = load_image(tmp_path / "exif.jpg", (60, 30))  # (h, w): portrait after rotation
    top, bottom = arr[:20].reshape(-1, 3).mean(0), arr[-20:].reshape(-1, 3).mean(0)
    # Orientation 6: stored left (red) becomes top after rotating 90 degrees clockwise
    assert top[0] > 150 and top[2] < 100, top
    assert bottom[2] > 150 and bottom[0] < 100, bottom


def test_decode_all_skips_bad_files_and_keeps_item_order(odd):
    d, kinds = odd
    names = sorted(kinds)
    items = [(str(d / n), i) for i, n in enumerate(names)]
    ticks = []
    pix, labels, paths, skipped = images.decode_all(items, 16, workers=3, progress=lambda: ticks.append(1))
    good = [i for i, n in enumerate(names) if kinds[n] == "ok"]
    assert len(ticks) == len(items)
    assert labels.tolist() == good and labels.dtype == np.int64
    assert paths == [items[i][0] for i in good]
    assert pix.shape == (len(good), 16, 16, 3) and pix.dtype == np.uint8
    np.testing.assert_array_equal(pix[0], load_image(paths[0], 16))
    assert [Path(s["file"]).name for s in skipped] == [n for n in names if kinds[n] == "skip"]
    assert all(s["reason"] for s in skipped)


def test_decode_item_and_collect_are_the_pools_parts(odd):
    """decode_item + collect give decode_all's answer (the pieces another decoding loop can reuse)."""
    d, kinds = odd
    items = [(str(d / n), 0) for n in sorted(kinds)]
    one = images.collect(items, [images.decode_item(it, 12) for it in items], 12)
    pool = images.decode_all(items, 12)
    np.testing.assert_array_equal(one[0], pool[0])
    assert (one[1].tolist(), one[2], one[3]) == (pool[1].tolist(), pool[2], pool[3])
    assert images.decode_item((str(d / "zero.jpg"), 1), 12) == (None, {"file": str(d / "zero.jpg"),
                                                                       "reason": "empty file (0 bytes)"})


def test_collect_of_nothing_has_the_image_shape():
    pix, labels, paths, skipped = images.collect([], [], 24)
    assert pix.shape == (0, 24, 24, 3) and pix.dtype == np.uint8 and len(labels) == 0
    assert paths == [] and skipped == []


def test_preprocess_is_mobilenet_v2s():
    spec = images.preprocessing_spec(32)
    assert spec["size"] == [32, 32] and spec["name"] == "mobilenet_v2"
    px = np.array([0, 1, 127, 128, 255], np.uint8)
    x = images.preprocess(px, spec)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, px / 127.5 - 1.0, atol=1e-6)


def test_quantize_rounds_like_tflite():
    """Float32 division, ties away from zero, zero point added after rounding, saturation.
    MobileNetV2 pixels sit exactly on ties at scale 1/127.5."""
    x = np.array([0.125, -0.125, 0.375, -0.375, 0.625, 100.0, -100.0], np.float32)  # ties at ±0.5, ±1.5, 2.5
    assert images.quantize(x, 0.25, 0, np.int8).tolist() == [1, -1, 2, -2, 3, 127, -128]
    assert images.quantize(x, 0.25, -1, np.int8).tolist() == [0, -2, 1, -3, 2, 127, -128]  # round, then add
    assert images.quantize(x, 0.25, 128, np.uint8).tolist() == [129, 127, 130, 126, 131, 255, 0]
    # every uint8 pixel -> [-1, 1] -> int8 at the scale the converter picks for that range
    px = np.arange(256, dtype=np.uint8)
    q = images.quantize(images.preprocess(px, images.MOBILENET_V2_PREPROCESSING), 1 / 127.5, -1, np.int8)
    q = q.astype(int)
    # pixel values sit on ties: rounding away from zero leaves one gap at 0 and merges two values at an end
    assert q.min() == -128 and np.all(np.diff(q) >= 0) and np.diff(q).max() <= 2 and len(np.unique(q)) >= 254


def test_augmented_views_depend_only_on_seed_image_and_view():
    px = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    a = images.augment_views(px, 1, seed=3)
    np.testing.assert_array_equal(a, images.augment_views(px, 1, seed=3))
    np.testing.assert_array_equal(a[2:], images.augment_views(px[2:], 1, seed=3, start=2))  # chunking-proof
    assert not np.array_equal(a, images.augment_views(px, 2, seed=3))
    assert not np.array_equal(a, images.augment_views(px, 1, seed=4))
    assert a.shape == px.shape and a.dtype == np.uint8
    assert images.view_pixels(px, 0, seed=3) is px
    assert images.feature_views(2) == [("train", 0), ("val", 0), ("test", 0), ("train", 1), ("train", 2)]


def _photo(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    """A JPEG with detail at every scale (smooth gradients plus noise), like a camera photo."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=2)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=92)


def test_large_jpegs_decode_at_a_reduced_dct_scale(tmp_path):
    """jpeg_draft=2: a JPEG at least twice the input size is decoded at libjpeg's coarsest DCT scale that
    keeps both sides >= 2x the input, then resized: close to the full decode, not equal to it."""
    _photo(tmp_path / "big.jpg", (1200, 900))
    full = load_image(tmp_path / "big.jpg", 64)
    drafted = load_image(tmp_path / "big.jpg", 64, Decoding(jpeg_draft=2))
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft(None, (128, 128))
        im.load()
        assert im.size == (300, 225)  # 1/4: at 1/8 the short side (113) would be < 128
        want = np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(drafted, want)
    diff = np.abs(full.astype(int) - drafted.astype(int))
    assert 0 < diff.mean() < 3, diff.mean()
    np.testing.assert_array_equal(load_image(tmp_path / "big.jpg", 64, Decoding(jpeg_draft=0)), full)


def test_jpeg_draft_leaves_small_and_non_jpeg_images_alone(tmp_path):
    _photo(tmp_path / "small.jpg", (100, 90))  # < 2x 64 px: decoded in full
    Image.open(tmp_path / "small.jpg").save(tmp_path / "big.png")
    _photo(tmp_path / "big.jpg", (1200, 900))
    Image.open(tmp_path / "big.jpg").save(tmp_path / "big.png")
    for name in ("small.jpg", "big.png"):
        np.testing.assert_array_equal(load_image(tmp_path / name, 64, Decoding(jpeg_draft=2)),
                                      load_image(tmp_path / name, 64))


def test_decoding_comes_from_the_spec():
    assert images.decoding_of(images.preprocessing_spec(224)) == Decoding(jpeg_draft=2, antialias=False)
    # a spec written without the keys: every image decoded in full and resized with antialiasing
    assert images.decoding_of({"size": [224, 224], "resize": "bilinear"}) == Decoding(0, True)
    assert images.decoding_of(None) == Decoding(0, True)


def _half_pixel_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reference: tf.image.resize(method="bilinear", antialias=False) written out in numpy (output pixel
    x samples the input at (x + 0.5) * in / out - 0.5, edges clamped)."""
    def axis(n_out, n_in):
        x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        f = np.floor(x)
        return np.clip(f, 0, n_in - 1).astype(int), np.clip(np.ceil(x), 0, n_in - 1).astype(int), x - f

    (y0, y1, ly), (x0, x1, lx) = axis(h, a.shape[0]), axis(w, a.shape[1])
    a = a.astype(np.float64)
    lx, ly = lx[None, :, None], ly[:, None, None]
    top = a[y0][:, x0] * (1 - lx) + a[y0][:, x1] * lx
    bottom = a[y1][:, x0] * (1 - lx) + a[y1][:, x1] * lx
    return top * (1 - ly) + bottom * ly


@pytest.mark.parametrize("shape", [(375, 500), (97, 61), (10, 12), (20, 100)])  # down, down, up, up and down
def test_point_sampled_resize_is_tensorflows_bilinear(tmp_path, shape):
    """antialias=False resizes as tf.image.resize does by default (within Pillow's 8-bit rounding); the
    antialiased resize averages over the whole downscaled footprint, so on a noisy image it differs."""
    a = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    want = _half_pixel_bilinear(a, 32, 24)
    point = load_image(tmp_path / "x.png", (32, 24), Decoding(antialias=False)).astype(np.float64)
    assert np.abs(point - want).max() < 1 + 1e-9
    smooth = load_image(tmp_path / "x.png", (32, 24), Decoding(antialias=True)).astype(np.float64)
    if shape[0] > 32 and shape[1] > 24:
        assert np.abs(smooth - want).mean() > 10


def test_bench_decodes_each_file_as_its_spec_says(tmp_path):
    """Files of the same size whose specs differ in jpeg_draft or antialias get their own decoded eval sets."""
    from edgetl.bench.targets import Target, prepare_eval

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        _photo(data / c / "big.jpg", (1200, 900), seed=len(c) + ord(c))
    spec = images.preprocessing_spec(64)
    specs = {"spec": spec, "full": {k: v for k, v in spec.items() if k != "jpeg_draft"},
             "smooth": {k: v for k, v in spec.items() if k != "antialias"}}
    targets = [Target(tmp_path / f"{n}.tflite", n, meta={"classes": ["a", "b"], "preprocessing": s})
               for n, s in specs.items()]
    sets = prepare_eval(targets, data, tmp_path, None)
    assert len(sets) == 3 and len({t.eval_key for t in targets}) == 3
    items = [(str(data / c / "big.jpg"), i) for i, c in enumerate("ab")]
    decoded = []
    for t, decoding in zip(targets, (Decoding(2, False), Decoding(0, False), Decoding(2, True))):
        decoded.append(np.load(sets[t.eval_key]["pixels"]))
        np.testing.assert_array_equal(decoded[-1], images.decode_all(items, 64, decoding=decoding)[0])
    assert not np.array_equal(decoded[0], decoded[1]) and not np.array_equal(decoded[0], decoded[2])

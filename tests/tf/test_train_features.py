"""Base features through the backbone's cached TFLite copy (computed while TensorFlow imports): the copy is
made once per backbone then reused with the same result as TensorFlow's features; a damaged or foreign
file is rebuilt; an unwritable cache or a runtime that rejects the file still trains; the pipeline's
features do not depend on how many threads compute them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import factory
from edgetl.core import artifact
from edgetl.core.images import decode_all, decoding_of, preprocessing_spec
from edgetl.model import basecache
from edgetl.model import features


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """The weights of a random alpha-0.35 MobileNetV2 saved as a file: a stand-in for ImageNet weights (a
    weights file has a sha256, so its base is cached as theirs is; random weights have none)."""
    from edgetl.model.backbone import build_base

    path = tmp_path_factory.mktemp("weights") / "random-a0.35.h5"
    build_base(0.35, 96, None).save_weights(str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return factory.image_folder(tmp_path_factory.mktemp("features") / "data", per_class=8, size=40)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("base-cache")


def _train(data, out, weights_file, cache, **options) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_CACHE_DIR", str(cache))
        return factory.train_run(data, out, **{"weights": str(weights_file), "image_size": 96, "epochs": 3,
                                               **options}).meta


@pytest.fixture(scope="module")
def first(data, weights_file, cache, tmp_path_factory) -> dict:
    """The first run on this backbone: it makes the cached copy."""
    return _train(data, tmp_path_factory.mktemp("first") / "run", weights_file, cache)


def _key(meta: dict) -> dict:
    return basecache.base_cache_key(meta["weights"], 0.35, 96)


def test_base_cache_is_made_once_then_used_with_the_same_result(first, data, weights_file, cache, tmp_path):
    feats = first["features"]
    assert feats["engine"] == "tflite" and feats["base_cache_status"] == "created" and feats["thread_seconds"] > 0
    cached = Path(feats["base_cache"])
    assert cached.parent == cache / "bases" and cached.is_file()
    assert artifact.read_tflite_meta(cached.read_bytes()) == _key(first)  # the file says what it is
    assert "base_cache" in first["timings"]
    second = _train(data, tmp_path / "second", weights_file, cache)
    assert second["features"]["base_cache_status"] == "hit" and "base_cache" not in second["timings"]
    assert list(second["timings"])[:5] == ["validate", "weights", "import_tensorflow", "build_model", "decode"]
    assert second["metrics"]["val_accuracy"] == first["metrics"]["val_accuracy"]
    assert np.allclose(second["history"]["head"]["val_loss"], first["history"]["head"]["val_loss"], atol=1e-6)
    # the TensorFlow path gives the same model (features agree to ~1e-5)
    tf_path = _train(data, tmp_path / "tf", weights_file, cache, base_cache=False)
    assert tf_path["features"] == {"engine": "tensorflow", "base_cache": None}
    assert tf_path["metrics"]["val_accuracy"] == first["metrics"]["val_accuracy"]
    assert np.allclose(tf_path["history"]["head"]["val_loss"], first["history"]["head"]["val_loss"], atol=1e-3)
    # the saved Keras model (TensorFlow end to end) reproduces what the run recorded from TFLite features
    from edgetl.core.rundir import Run
    from edgetl.model.load import load_run_model
    from edgetl.model.predict import evaluate

    run = Run(tmp_path / "second")
    px, y, _, _ = decode_all(run.split_items("val"), 96, decoding=decoding_of(run.preprocessing))
    acc = evaluate(load_run_model(run), px, y, run.preprocessing)[0]
    assert acc == pytest.approx(second["metrics"]["val_accuracy"])


def test_damaged_or_foreign_cache_file_is_rebuilt(first, data, weights_file, cache, tmp_path):
    key = _key(first)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_CACHE_DIR", str(cache))
        path = basecache.base_cache_path(key)
        assert path.parent == cache / "bases"
        valid, why = basecache.read_base_cache(key)
        assert valid is not None and why == ""
        mid = len(valid) // 2
        flipped = valid[:mid] + bytes([valid[mid] ^ 0x10]) + valid[mid + 1:]  # one bit in the weights: key intact
        foreign = artifact.embed_tflite(valid, {**key, "weights_sha256": "0" * 64})
        for bad in (b"not a flatbuffer", valid[:mid], flipped, foreign):
            path.write_bytes(bad)
            got, why = basecache.read_base_cache(key)
            assert got is None and why.endswith("is damaged or for another backbone: rebuilt"), why
    meta = _train(data, tmp_path / "again", weights_file, cache)
    assert meta["features"]["base_cache_status"] == "created", meta["features"]
    assert meta["metrics"]["val_accuracy"] == first["metrics"]["val_accuracy"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGETL_CACHE_DIR", str(cache))
        assert basecache.read_base_cache(key)[0] is not None  # a valid copy is cached again


def test_unwritable_cache_still_trains(first, data, weights_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    meta = _train(data, tmp_path / "ro", weights_file, blocker / "cache")  # cannot be created
    assert meta["features"]["engine"] == "tflite"
    assert meta["features"]["base_cache_status"].startswith("not cached:")
    assert meta["metrics"]["val_accuracy"] == first["metrics"]["val_accuracy"]


def test_runtime_rejecting_the_cached_base_falls_back_to_tensorflow(first, data, weights_file, cache, tmp_path,
                                                                     monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("delegate refused the model")

    monkeypatch.setattr(features, "TFLiteRunner", broken)
    meta = _train(data, tmp_path / "broken", weights_file, cache)
    assert meta["features"]["engine"] == "tensorflow"
    assert meta["features"]["base_cache_status"] == "failed: RuntimeError: delegate refused the model"
    assert meta["metrics"]["val_accuracy"] == first["metrics"]["val_accuracy"]


def test_pipeline_results_do_not_depend_on_the_threads(first, cache, tmp_path, monkeypatch):
    from edgetl.core.images import augment_views, preprocess
    from edgetl.core.runtime import TFLiteRunner

    monkeypatch.setenv("EDGETL_CACHE_DIR", str(cache))
    base, _ = basecache.read_base_cache(_key(first))
    train = [(p, int(y)) for p, y in first["split"]["train"]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    val = [(p, int(y)) for p, y in first["split"]["val"]] + [(str(broken), 0)]
    test = val[:3]  # (the pipeline takes any items as the test part: its images after train and val)
    spec = preprocessing_spec(96)
    out = []
    for workers in (1, 3):
        with features.FeaturePipeline(train + val + test, len(train), 96, spec, augment=1, seed=0,
                                      workers=workers, base=base, n_val=len(val)) as pipe:
            (tr_px, _, _, tr_skip), (va_px, va_y, _, va_skip), (te_px, te_y, _, _) = pipe.decoded()
            assert pipe.started()
            out.append(pipe.features())
    assert tr_skip == [] and [s["file"] for s in va_skip] == [str(broken)] and len(va_y) == len(val) - 1
    decoding = decoding_of(spec)
    assert np.array_equal(tr_px, decode_all(train, 96, decoding=decoding)[0])
    assert np.array_equal(va_px, decode_all(val, 96, decoding=decoding)[0])
    assert np.array_equal(te_px, va_px[:3]) and len(te_y) == 3
    (f_tr, f_va, f_te), (f_tr3, f_va3, f_te3) = out
    assert np.array_equal(f_tr, f_tr3) and np.array_equal(f_va, f_va3) and np.array_equal(f_te, f_te3)
    # stacked as core.images.feature_views orders them: train originals, then the augmented train view
    runner = TFLiteRunner(base)
    assert np.array_equal(f_va, runner.outputs(preprocess(va_px, spec)))
    assert np.array_equal(f_te, f_va[:3])
    assert np.array_equal(f_tr[:len(tr_px)], runner.outputs(preprocess(tr_px, spec)))
    assert np.array_equal(f_tr[len(tr_px):], runner.outputs(preprocess(augment_views(tr_px, 1, 0), spec)))


def test_pipeline_without_a_base_only_decodes(data):
    items = [(str(p), 0) for p in sorted((data / "train" / "cats").iterdir())]
    with features.FeaturePipeline(items, 3, 32, preprocessing_spec(32), augment=0, seed=0, workers=2) as pipe:
        (tr_px, *_), (va_px, *_), (te_px, *_) = pipe.decoded()
        pipe.start_features(None)
        assert not pipe.started()
    assert tr_px.shape == (3, 32, 32, 3) and len(va_px) == len(items) - 3 and len(te_px) == 0


def test_images_are_resized_as_keras_image_dataset_from_directory_does(tmp_path):
    """The default preprocessing resizes as Keras' image_dataset_from_directory (tf.image.resize, bilinear,
    not antialiased) does, within 8-bit rounding, on lossless files downscaled, upscaled and both at once."""
    from PIL import Image

    from edgetl.core.images import load_image
    from edgetl.model.tfenv import tf_and_keras

    _, keras = tf_and_keras()
    rng = np.random.default_rng(0)
    shapes = {"down.png": (375, 500), "up.png": (40, 50), "mixed.png": (50, 300)}
    (tmp_path / "c").mkdir()
    for name, (h, w) in shapes.items():
        smooth = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
        arr = np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "c" / name)
    ds = keras.utils.image_dataset_from_directory(tmp_path, image_size=(64, 96), shuffle=False, batch_size=8)
    want = next(iter(ds))[0].numpy()
    spec = preprocessing_spec(64)
    for i, path in enumerate(ds.file_paths):
        got = load_image(path, (64, 96), decoding_of(spec)).astype(np.float64)
        assert np.abs(got - want[i]).max() < 1 + 1e-3, path

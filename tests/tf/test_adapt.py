"""BatchNorm statistics and domain adaptation on a tiny model: adapt_bn re-estimates BN statistics without
labels and touches nothing else; relative AdaBN on the same domain changes nothing; estimate_bn_stats is the
exact population statistic; bad input is one EdgetlError."""

from __future__ import annotations

import numpy as np
import pytest

import factory
from edgetl.core.errors import EdgetlError
from edgetl.core.images import preprocessing_spec
from edgetl.model.bn import bn_layers, bn_state, estimate_bn_stats
from edgetl.model.tfenv import tf_and_keras
from edgetl.train.adapt import adapt_bn, adapt_info, shift_pixels


@pytest.fixture(scope="module")
def tiny():
    model, px = factory.tiny_model(seed=1)
    return model, px, preprocessing_spec(32)


@pytest.fixture
def restore(tiny):
    """Every weight of the tiny model put back after the test."""
    model = tiny[0]
    saved = [w.numpy().copy() for w in model.weights]
    yield
    for v, w in zip(model.weights, saved):
        v.assign(w)


def _snapshot(model):
    return {w.name: w.numpy().copy() for w in model.weights}


def test_adapt_bn_changes_only_bn_statistics(tiny, restore):
    model, px, spec = tiny
    before = _snapshot(model)
    flags = [(b.trainable, b.momentum) for b in bn_layers(model)]
    out = adapt_bn(model, shift_pixels(px, "low-light"), spec, factory.quiet_console(), reference_pixels=px,
                   batch_size=8)
    assert out is model
    after = _snapshot(model)
    stats = [n for n in before if "moving_mean" in n or "moving_variance" in n]
    assert len(stats) == 2 * len(bn_layers(model)) > 0
    changed = [n for n in stats if not np.allclose(before[n], after[n], rtol=1e-3, atol=1e-6)]
    assert len(changed) > len(stats) // 2, "BN statistics were not re-estimated"
    for n in before:  # kernels, BN gamma/beta, the head: untouched
        if n not in stats:
            assert np.array_equal(before[n], after[n]), n
    assert [(b.trainable, b.momentum) for b in bn_layers(model)] == flags
    info = adapt_info(model)
    assert info["method"] == "adabn-relative" and info["images"] == 24 and info["reference_images"] == 24
    assert info["bn_layers"] == len(bn_layers(model)) and info["batch_size"] == 8


def test_plain_adabn_stores_the_new_domain_statistics(tiny, restore):
    model, px, spec = tiny
    dark = shift_pixels(px, "low-light")
    want = estimate_bn_stats(model, dark, spec, batch_size=8)
    adapt_bn(model, dark, spec, None, batch_size=8)
    assert adapt_info(model)["method"] == "adabn" and adapt_info(model)["reference_images"] is None
    for (m, v), (mw, vw) in zip(bn_state(model), want):
        np.testing.assert_allclose(m, mw.astype(np.float32))
        np.testing.assert_allclose(v, vw.astype(np.float32))


def test_adapt_bn_relative_to_the_same_domain_is_identity(tiny, restore):
    model, px, spec = tiny
    before = bn_state(model)
    adapt_bn(model, px, spec, None, reference_pixels=px, batch_size=8)
    for (m0, v0), (m1, v1) in zip(before, bn_state(model)):
        np.testing.assert_allclose(m1, m0, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v1, v0, rtol=1e-4, atol=1e-6)


def test_estimate_bn_stats_is_exact_population_statistics(tiny):
    """Batches of 8 combined by the law of total variance == one batch of all 24 images (first BN layer,
    whose input does not depend on other BN layers)."""
    model, px, spec = tiny
    before = _snapshot(model)
    s8 = estimate_bn_stats(model, px, spec, batch_size=8)
    s24 = estimate_bn_stats(model, px, spec, batch_size=24)
    np.testing.assert_allclose(s8[0][0], s24[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s8[0][1], s24[0][1], rtol=2e-3, atol=1e-5)
    after = _snapshot(model)
    assert all(np.array_equal(before[n], after[n]) for n in before), "estimate_bn_stats changed the model"
    # and it is the plain statistic of the first BN layer's input
    _, keras = tf_and_keras()
    bn0 = bn_layers(model)[0]
    x = keras.Model(model.input, bn0.input)(spec["scale"] * px.astype(np.float32) + spec["offset"]).numpy()
    np.testing.assert_allclose(s8[0][0], x.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(s8[0][1], x.var(axis=(0, 1, 2)), rtol=1e-2, atol=1e-4)


def test_adapt_bn_bad_input(tiny):
    model, px, spec = tiny
    with pytest.raises(EdgetlError, match="at least 2"):
        adapt_bn(model, px[:1], spec)
    with pytest.raises(EdgetlError, match="expects 32x32"):
        adapt_bn(model, np.zeros((4, 40, 40, 3), np.uint8), spec)
    with pytest.raises(EdgetlError, match="reference"):
        adapt_bn(model, px, spec, reference_pixels=np.zeros((4, 40, 40, 3), np.uint8))
    _, keras = tf_and_keras()
    inp = keras.Input((32, 32, 3))
    no_bn = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inp)))
    with pytest.raises(EdgetlError, match="no BatchNormalization"):
        adapt_bn(no_bn, px, spec)

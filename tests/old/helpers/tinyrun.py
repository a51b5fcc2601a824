"""Tiny run directories for export/QAT unit tests (run-dir contract: flat tf_keras MobileNetV2 + Dense head).

Built here so the export tests do not depend on `edgetl train`; the integration tests use the real
`hymenoptera_run` fixture instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def build_tiny_model(n_classes: int = 2, size: int = 32, alpha: float = 0.35, seed: int = 0):
    from edgetl.backbone import build_base
    from edgetl.tfenv import tf_and_keras

    _, keras = tf_and_keras()
    keras.utils.set_random_seed(seed)
    base = build_base(alpha, size, None)
    x = keras.layers.Dropout(0.2)(base.output)
    out = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(base.input, out)


def set_bn_stats(model, x) -> None:
    """Random-init MobileNetV2 with BN at its initial stats (mean 0, var 1) shrinks activations to ~1e-12,
    so every image gets the same output. One training-mode pass with momentum 0 sets real BN statistics."""
    import tensorflow as tf

    bns = [l for l in model.layers if type(l).__name__ == "BatchNormalization"]
    old = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 0.0
    model(tf.constant(x), training=True)
    for b, m in zip(bns, old):
        b.momentum = m
        # Variance floor at the layer's median: channels with a near-zero variance on a few images would
        # amplify any rounding ~1000x (fp16 weights moved probabilities by 0.11, int8 by 0.28 on average).
        g, beta, mu, var = b.get_weights()
        b.set_weights([g, beta, mu, np.maximum(var, np.median(var))])


def make_tiny_run(run: Path, data: Path, size: int = 32, epochs: int = 10, seed: int = 0, qat: bool = False) -> Path:
    """A run dir over an image folder made by conftest.make_image_folder (train/ and val/ layout).

    The head (and BN statistics) get a few epochs on the colour-coded images so the model is not at chance.
    """
    from edgetl import data as D
    from edgetl.rundir import write_json

    split = D.scan(data)
    model = build_tiny_model(len(split.classes), size, seed=seed)
    spec = D.preprocessing_spec(size)
    x, y, _, _ = D.load_batch(split.train, size)
    _, keras = __import__("edgetl.tfenv").tfenv.tf_and_keras()
    set_bn_stats(model, D.preprocess(x, spec))
    for layer in model.layers[:-1]:  # random frozen base (BN in inference mode), trained head
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    if epochs:
        model.fit(D.preprocess(x, spec), y, epochs=epochs, batch_size=8, verbose=0)
    for layer in model.layers:
        layer.trainable = True
    # Temper the head (same argmax): a random base gives huge logits, and a chaotic random net then turns
    # fp16 weight rounding into large probability jumps that a trained model does not show.
    xv, _, _, _ = D.load_batch(split.val, size)
    feats = keras.Model(model.input, model.layers[-3].output)(D.preprocess(np.concatenate([x, xv]), spec)).numpy()
    head = model.layers[-1]
    w, b = head.get_weights()
    top = float(np.abs(feats @ w + b).max())
    if top > 2.0:
        head.set_weights([w * (2.0 / top), b * (2.0 / top)])
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "model.keras")
    (run / "labels.txt").write_text("\n".join(split.classes) + "\n")
    meta = {
        "edgetl_version": "0.1.0", "created": "test", "classes": split.classes, "image_size": size,
        "alpha": 0.35, "preprocessing": spec, "weights": {"source": "random", "path": None, "sha256": None},
        "seed": seed, "config": {}, "qat": qat,
        "split": {"data_root": str(data), "layout": split.layout,
                  "train": [[p, y] for p, y in split.train], "val": [[p, y] for p, y in split.val]},
        "skipped": [], "metrics": {},
    }
    write_json(run / "edgetl.json", meta)
    return run

"""The seed project's training recipe, run as a whole process by bench_train.py (the baseline to beat).

Keras MobileNetV2 (frozen, ImageNet weights), MobileNetV2 preprocess_input, GlobalAveragePooling2D,
Dense(128, relu), Dense(n, softmax); model.fit for 10 epochs on image_dataset_from_directory batches,
so the frozen base is recomputed for every image in every epoch. Uses TensorFlow's default tf.keras,
as the seed did. Prints one JSON line with what it did (files found, accuracies) and saves the model.

usage: seed_recipe.py DATA_WITH_TRAIN_AND_VAL OUT_DIR --alpha 0.35 --size 224 --weights FILE.h5 [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

T0 = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(a.seed)
    root = Path(a.data)
    val_dir = next(root / n for n in ("val", "validation") if (root / n).is_dir())
    kw = dict(image_size=(a.size, a.size), batch_size=a.batch_size, label_mode="int", seed=a.seed)
    train_ds = keras.utils.image_dataset_from_directory(root / "train", shuffle=True, **kw)
    val_ds = keras.utils.image_dataset_from_directory(val_dir, shuffle=False, **kw)
    n_train, n_val = len(train_ds.file_paths), len(val_ds.file_paths)
    classes = train_ds.class_names
    # image_dataset_from_directory lists .bmp/.gif/.jpeg/.jpg/.png and decodes them inside the tf.data
    # pipeline; a file it cannot decode raises during fit (the seed had no skip logic). Record what it did.
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = val_ds.prefetch(tf.data.AUTOTUNE)

    base = keras.applications.MobileNetV2(input_shape=(a.size, a.size, 3), alpha=a.alpha, include_top=False,
                                          weights=a.weights)
    base.trainable = False
    inputs = keras.Input((a.size, a.size, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t_fit = time.perf_counter()
    h = model.fit(train_ds, validation_data=val_ds, epochs=a.epochs, verbose=2)
    fit_s = time.perf_counter() - t_fit
    Path(a.out).mkdir(parents=True, exist_ok=True)
    model.save(Path(a.out) / "seed_model.keras")
    print(json.dumps({
        "recipe": "seed", "keras": keras.__version__, "tensorflow": tf.__version__,
        "classes": classes, "n_train_files": n_train, "n_val_files": n_val,
        "val_accuracy": float(h.history["val_accuracy"][-1]),
        "val_accuracy_best_epoch": float(max(h.history["val_accuracy"])),
        "fit_seconds": round(fit_s, 2), "in_process_seconds": round(time.perf_counter() - T0, 2),
    }))


if __name__ == "__main__":
    main()

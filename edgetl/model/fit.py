"""The training loops train and compare share: the head on cached features (fit_head) and the one Keras
Sequence of pixel batches (pixel_batches, compare's from-scratch arm). Fine-tuning is model.finetune."""

from __future__ import annotations

import numpy as np

from ..core.console import progress
from ..core.images import augment_image, preprocess
from .tfenv import tf_and_keras


def fit_head(head_model, train_xy, val_xy, epochs: int, lr: float, batch_size: int, patience: int, seed: int,
             console=None, desc: str = "head") -> dict:
    """Train the head on cached features: Adam(lr), mean sparse cross-entropy, batches of `batch_size`
    reshuffled (seeded) every epoch, dropout on; early stopping on val loss (`patience` epochs without
    improvement), the best epoch's weights restored at the end.

    A GradientTape loop over Keras' own layers, optimizer and loss rather than `model.fit`: on a few
    hundred cached feature vectors an epoch is ~1 ms of arithmetic, and fit's per-epoch machinery
    (iterator, callbacks, logs, its validation pass) cost ~35 ms, i.e. most of the head phase. One
    traced function runs a whole epoch; validation is one direct call of the head on the val features.
    The settings have no defaults here: they are the recipe's (model.recipe.Recipe), given by the caller.
    """
    tf, keras = tf_and_keras()
    x, y = np.asarray(train_xy[0], np.float32), np.asarray(train_xy[1], np.int64)
    xv, yv = np.asarray(val_xy[0], np.float32), np.asarray(val_xy[1], np.int64)
    opt = keras.optimizers.Adam(lr)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    variables = head_model.trainable_variables
    opt.build(variables)  # slots made here, so the epoch function is traced once, not twice
    shuffle = np.random.default_rng(seed)
    n_feat = x.shape[1]

    # (a tf.range loop becomes one graph while-loop; iterating a tf.data set inside a tf.function
    # instead becomes a dataset scan that costs ~50 ms per epoch here)
    @tf.function(input_signature=[tf.TensorSpec([None, n_feat], tf.float32), tf.TensorSpec([None], tf.int64)])
    def epoch(xs, ys):
        total, correct = tf.constant(0.0), tf.constant(0.0)
        for i in tf.range(0, tf.shape(xs)[0], batch_size):
            xb, yb = xs[i:i + batch_size], ys[i:i + batch_size]
            with tf.GradientTape() as tape:
                pb = head_model(xb, training=True)
                loss = loss_fn(yb, pb)
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            total += loss * tf.cast(tf.shape(yb)[0], tf.float32)
            correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(pb, 1), yb), tf.float32))
        return total / tf.cast(tf.shape(xs)[0], tf.float32), correct / tf.cast(tf.shape(xs)[0], tf.float32)

    hist: dict = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best_loss, best_epoch, best_weights, wait, stopped = np.inf, 0, None, 0, None
    with progress(console) as prog:
        task = prog.add_task(desc, total=epochs)
        for e in range(epochs):
            order = shuffle.permutation(len(x))  # seeded reshuffle every epoch
            loss, acc = (float(v) for v in epoch(x[order], y[order]))
            pv = np.asarray(head_model(xv, training=False), np.float64)
            val_loss = float(-np.mean(np.log(np.clip(pv[np.arange(len(yv)), yv], 1e-7, 1.0)))) if len(yv) else 0.0
            val_acc = float((pv.argmax(1) == yv).mean()) if len(yv) else 0.0
            for k, v in (("loss", loss), ("accuracy", acc), ("val_loss", val_loss), ("val_accuracy", val_acc)):
                hist[k].append(v)
            prog.update(task, advance=1, description=f"{desc} loss {loss:.3f} val_acc {val_acc:.3f}")
            if val_loss < best_loss:
                best_loss, best_epoch, best_weights, wait = val_loss, e, head_model.get_weights(), 0
            else:
                wait += 1
                if wait >= patience:
                    stopped = e
                    break
        prog.update(task, completed=epochs)
    if best_weights is not None:
        head_model.set_weights(best_weights)
    hist["best_epoch"] = best_epoch + 1
    hist["stopped_epoch"] = stopped + 1 if stopped is not None else None
    return hist


def pixel_batches(pixels, labels, spec: dict, batch_size: int, seed: int, views: int = 0,
                  order_salt: tuple = (), sorted_batches: bool = False):
    """A Keras Sequence of (preprocessed pixels, labels) batches for model.fit, built per batch (no float
    copy of the whole data set in memory): every image, plus `views` seeded augmented views of each.

    The order is reshuffled every epoch from (seed, *order_salt, epoch); augmented views are drawn fresh
    every epoch from (seed, image, view, epoch + 1), since the model changes between epochs anyway.
    sorted_batches reads each batch's images in index order.
    """
    _, keras = tf_and_keras()
    index = [(i, v) for v in range(views + 1) for i in range(len(pixels))]

    class PixelBatches(keras.utils.Sequence):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            return np.random.default_rng([seed, *order_salt, self.epoch]).permutation(len(index))

        def __len__(self):
            return (len(index) + batch_size - 1) // batch_size

        def __getitem__(self, b):
            sel = self.order[b * batch_size:(b + 1) * batch_size]
            if sorted_batches:
                sel = np.sort(sel)
            xs = np.stack([self._view(*index[j]) for j in sel])
            return preprocess(xs, spec), labels[[index[j][0] for j in sel]]

        def _view(self, i: int, v: int) -> np.ndarray:
            if v == 0:
                return pixels[i]
            return augment_image(pixels[i], np.random.default_rng([seed, i, v, self.epoch + 1]))

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return PixelBatches()

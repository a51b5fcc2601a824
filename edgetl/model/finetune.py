"""Fine-tuning the top of the base, as train and compare both do it.

The base is split at a block boundary (`--fine-tune`: 'on' cuts at block_12_add, so blocks 13-16 and Conv_1
train). The frozen bottom runs as a TFLite copy (model.basecache: cached per backbone and cut), which is
what makes an epoch cheap: every epoch, a pool of threads turns freshly augmented training images
(core.images.strong_augment) into bottom outputs, in order, while the main thread trains the top
(BatchNorm frozen: inference mode) and the head on them with Adam: one epoch of linear warm-up to the peak
learning rate, then a cosine decay to 0. Val images go through the bottom once.

The keep rule: the best epoch (most val images right, then the lowest val loss) is kept only if it gets at
least KEEP_MIN_IMAGES more val images right than the frozen head AND has a lower val loss; otherwise the
weights from before fine-tuning are restored. Where the data is too small for fine-tuning to gain
(`too_small`), train says so in one line instead of spending the time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from ..core.console import progress
from ..core.errors import EdgetlError
from ..core.images import preprocess, strong_augment
from ..core.runtime import TFLiteRunner
from .basecache import read_base_cache, tflite_copy, write_base_cache
from .tfenv import tf_and_keras

BASE_LAYERS = 154  # Keras MobileNetV2(include_top=False, pooling="avg"): layers after its input, any alpha/size
# Block boundaries of that base (the same layer names for every alpha and size): the last layer of the
# frozen bottom, and how many of base.layers lie above it (what --fine-tune LAYERS counts, from the top).
CUTS = (("block_16_project_BN", 4), ("block_15_add", 12), ("block_14_add", 21), ("block_13_project_BN", 30),
        ("block_12_add", 39), ("block_11_add", 48), ("block_10_project_BN", 57), ("block_9_add", 65),
        ("block_8_add", 74), ("block_7_add", 83), ("block_6_project_BN", 92), ("block_5_add", 101),
        ("block_4_add", 110), ("block_3_project_BN", 119), ("block_2_add", 128), ("block_1_project_BN", 137),
        ("expanded_conv_project_BN", 146))
DEFAULT_CUT = ("block_12_add", 39)  # --fine-tune on
# below these, fine-tuning did not beat the frozen head on the data it was measured on (48 and 98 training
# images per class); 1.5 % of the val images must be at least 2 images for the keep rule to tell a gain
MIN_IMAGES_PER_CLASS = 100
MIN_VAL_IMAGES = 134
KEEP_MIN_IMAGES = 2
LOOKAHEAD = 2  # batches each producer thread may run ahead of training


def fine_tune_cut(value) -> tuple[str, int] | None:
    """--fine-tune's value as (cut layer, layers above it), or None for 'off' (0 layers is an error: it would
    silently mean off). LAYERS is rounded to the nearest block boundary (ties: fewer layers)."""
    text = str(value).strip().lower()
    if text == "off":
        return None
    if text == "on":
        return DEFAULT_CUT
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 1 <= n <= BASE_LAYERS:
        raise EdgetlError(f"--fine-tune {value}: give 'on' (the top {DEFAULT_CUT[1]} layers), a number of layers "
                          f"1-{BASE_LAYERS} (MobileNetV2's base has {BASE_LAYERS}), or 'off'")
    return min(CUTS, key=lambda c: (abs(c[1] - n), c[1]))


def too_small(train_y: np.ndarray, n_classes: int, n_val: int) -> str | None:
    """The line train prints instead of fine-tuning data this small; None when fine-tuning may gain."""
    per_class = int(np.bincount(np.asarray(train_y, np.int64), minlength=n_classes).min())
    if per_class < MIN_IMAGES_PER_CLASS:
        size = f"{per_class} images/class"
    elif n_val < MIN_VAL_IMAGES:
        size = f"{n_val} val images"
    else:
        return None
    return f"fine-tuning skipped: {size}; on data this small it did not beat the frozen head"


def keeps(before: dict, best: dict) -> bool:
    """The keep rule, on val scores ({"correct", "loss"}) of the frozen head and of the best fine-tuned
    epoch: at least KEEP_MIN_IMAGES more val images right and a lower val loss."""
    return best["correct"] >= before["correct"] + KEEP_MIN_IMAGES and best["loss"] < before["loss"]


def warmup_cosine(peak: float, warmup: int, total: int):
    """Keras learning-rate schedule: linear warm-up to `peak` over `warmup` steps (step 1 already at
    peak / warmup), then a cosine decay to 0 at step `total`. (Keras' own CosineDecay warm-up starts at 0,
    a step that does nothing; this is the schedule the recipe was measured with.)"""
    tf, keras = tf_and_keras()
    warmup, total = max(int(warmup), 1), max(int(total), 1)

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            s = tf.cast(step, tf.float32) + 1.0
            frac = tf.clip_by_value((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
            return tf.where(s <= warmup, peak * s / warmup, 0.5 * peak * (1.0 + tf.cos(math.pi * frac)))

        def get_config(self):
            return {"peak": peak, "warmup": warmup, "total": total}

    return WarmupCosine()


class Bottom:
    """The frozen layers below the cut, run on preprocessed images by its TFLite copy (one interpreter per
    thread), or by TensorFlow when no copy could be made."""

    def __init__(self, model):
        self.model, self.tflite = model, None
        self.shape = tuple(int(d) for d in model.output_shape[1:])
        self._local = threading.local()

    def make_copy(self, key: dict | None, check_x: np.ndarray) -> str:
        """Give the bottom its TFLite copy: from the cache under `key` (made and stored there the first
        time), or, with no key (a base changed by --from or --adapt-bn, random weights), made for this run
        only. Returns how: "hit", "created", "made for this run", or why TensorFlow runs it instead."""
        if key is not None:
            buf, why = read_base_cache(key)
            status = "hit"
            if buf is None:
                buf, why = write_base_cache(self.model, key, check_x)
                status = why or "created"
        else:
            buf, why = tflite_copy(self.model, check_x)
            status = "made for this run"
        self.tflite = buf
        if buf is None:
            from .predict import traced

            traced(self.model)  # traced here, once, not by the first of several threads
            return f"TensorFlow ({why})"
        return status

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.tflite is None:
            from .predict import predict

            return predict(self.model, x).reshape(len(x), *self.shape)
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = TFLiteRunner(self.tflite)
        return runner.outputs(x).reshape(len(x), *self.shape)


class TopTuner:
    """The base split at `cut` into a frozen Bottom and a trainable top that shares the base's layers, with
    the head on top: fitting it changes the base and head in place (an assembled model sees the change).
    Call `bottom.make_copy` before use."""

    def __init__(self, base, head_model, cut: str, spec: dict, workers: int = 2):
        _, keras = tf_and_keras()
        try:
            cut_out = base.get_layer(cut).output
        except ValueError:
            raise EdgetlError(f"--fine-tune: the base has no layer {cut!r} (not a Keras MobileNetV2)") from None
        self.bottom = Bottom(keras.Model(base.input, cut_out, name="bottom"))
        self.top = keras.Model(cut_out, base.output, name="top")
        inp = keras.Input(self.bottom.shape, name="bottom_output")
        self.net = keras.Model(inp, head_model(self.top(inp)), name="top_and_head")
        self.cut, self.spec, self.workers = cut, spec, max(1, int(workers))
        self.layers = sum(1 for _ in self.top.layers[1:])  # (its first layer is the cut's input)
        self.trainable_params = 0

    def bottom_outputs(self, pixels: np.ndarray, chunk: int = 32) -> np.ndarray:
        """Bottom outputs of uint8 pixels, chunks in parallel on `workers` threads."""
        starts = range(0, len(pixels), chunk)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="edgetl-bottom") as pool:
            parts = list(pool.map(lambda s: self.bottom(preprocess(pixels[s:s + chunk], self.spec)), starts))
        return np.concatenate(parts) if parts else np.zeros((0, *self.bottom.shape), np.float32)

    def probs(self, h: np.ndarray) -> np.ndarray:
        from .predict import predict

        return predict(self.net, h)

    def _set_trainable(self, on: bool) -> None:
        """The top's layers trainable except BatchNormalization (inference mode, statistics kept); off: all
        frozen again (how the model is saved)."""
        self.top.trainable = on  # (a model's flag is set on each of its layers)
        for layer in self.top.layers:
            if on and "BatchNormalization" in type(layer).__name__:
                layer.trainable = False

    def _epoch_batches(self, px, y, order, batch_size: int, seed: int, epoch: int):
        """(bottom outputs, labels) of each batch of `order`, made on the thread pool in order: freshly
        augmented images (seeded by image and epoch), preprocessed, through the bottom."""
        def make(sel):
            views = np.stack([strong_augment(px[i], np.random.default_rng([seed, int(i), 7, epoch])) for i in sel])
            return self.bottom(preprocess(views, self.spec)), y[sel]

        batches = iter([order[i:i + batch_size] for i in range(0, len(order), batch_size)])
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="edgetl-producer")
        try:
            pending = deque(pool.submit(make, b) for b in islice(batches, LOOKAHEAD * self.workers))
            while pending:
                out = pending.popleft().result()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(pool.submit(make, nxt))
                yield out
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def fit(self, train_px, train_y, val_h, val_y, epochs: int = 8, lr: float = 1e-4, batch_size: int = 32,
            seed: int = 0, console=None) -> dict:
        """Fine-tune for `epochs`, then keep the best epoch or restore the weights from before (the keep
        rule). Returns the history, what was kept, and the val accuracy / confusion of the weights left."""
        tf, keras = tf_and_keras()
        y = np.asarray(train_y, np.int64)
        self._set_trainable(True)
        variables = self.net.trainable_variables
        self.trainable_params = int(sum(int(np.prod(v.shape)) for v in variables))
        steps = math.ceil(len(y) / batch_size)
        opt = keras.optimizers.Adam(warmup_cosine(lr, steps, steps * epochs))
        opt.build(variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        @tf.function(input_signature=[tf.TensorSpec([None, *self.bottom.shape], tf.float32),
                                      tf.TensorSpec([None], tf.int64)])
        def step(h, yb):
            with tf.GradientTape() as tape:
                p = self.net(h, training=True)
                loss = loss_fn(yb, p)
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss, tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, 1), yb), tf.float32))

        hist: dict = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        before = self.net.get_weights()
        rec = [_val_scores(self.probs(val_h), val_y)]
        best, best_weights = None, None
        t0, waited = time.perf_counter(), 0.0
        try:
            with progress(console) as prog:
                task = prog.add_task("fine-tune", total=epochs)
                for e in range(1, epochs + 1):
                    order = np.random.default_rng([seed, 104729, e]).permutation(len(y))
                    total = correct = 0.0
                    tw = time.perf_counter()
                    for h, yb in self._epoch_batches(train_px, y, order, batch_size, seed, e):
                        waited += time.perf_counter() - tw
                        loss, right = step(h, yb)
                        total, correct = total + float(loss) * len(yb), correct + float(right)
                        tw = time.perf_counter()
                    rec.append(_val_scores(self.probs(val_h), val_y))
                    for k, v in (("loss", total / len(y)), ("accuracy", correct / len(y)),
                                 ("val_loss", rec[-1]["loss"]), ("val_accuracy", rec[-1]["accuracy"])):
                        hist[k].append(v)
                    if best is None or (rec[e]["correct"], -rec[e]["loss"]) > (rec[best]["correct"], -rec[best]["loss"]):
                        best, best_weights = e, self.net.get_weights()
                    prog.update(task, advance=1, description=f"fine-tune loss {hist['loss'][-1]:.3f} "
                                                             f"val_acc {rec[-1]['accuracy']:.3f}")
        finally:
            self._set_trainable(False)
        kept = keeps(rec[0], rec[best])
        self.net.set_weights(best_weights if kept else before)
        final = rec[best] if kept else rec[0]
        return {**hist, "val_loss_before": rec[0]["loss"], "val_accuracy_before": rec[0]["accuracy"],
                "best_epoch": best, "kept": bool(kept), "val_accuracy_after": final["accuracy"],
                "confusion_matrix": final["confusion_matrix"], "seconds": round(time.perf_counter() - t0, 3),
                "waited_for_bottom_seconds": round(waited, 3)}


def _val_scores(probs: np.ndarray, y: np.ndarray) -> dict:
    from .predict import scores

    y = np.asarray(y, np.int64)
    p = np.asarray(probs, np.float64)
    acc, cm = scores(probs, y)
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0)))) if len(y) else 0.0
    return {"loss": loss, "accuracy": acc, "correct": int(round(acc * len(y))) if len(y) else 0,
            "confusion_matrix": cm}

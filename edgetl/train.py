"""The train stage: frozen ImageNet MobileNetV2 + new head on cached features, optional fine-tuning.

Public Python API (export, compare and adapt build on it; the CLI is a thin wrapper around `train`):

    cfg = TrainConfig(data="DATA", out="runs/x", alpha=0.35, image_size=224, ...)
    validate(cfg) -> Prepared            check every option + scan DATA, no TensorFlow imported
    train(cfg, console=None) -> TrainResult(path, meta)      the whole `edgetl train` command
    load_run_model(run) -> tf_keras.Model                     a run's model (QAT runs inside quantize_scope)

  Building blocks (each usable on its own):
    decode_split(items, size, console)          -> (uint8 pixels, labels, paths, skipped)  (Decoder: threads)
    augment_views(pixels, n_views, seed, ...)   N seeded numpy views (flip / crop / brightness) per image
    compute_features(base, pixels, spec, ...)   frozen-base features in batches, rich progress bar
    build_head(n_features, n_classes, head, dropout, seed) -> head model on features
    fit_head(head_model, train_xy, val_xy, ...) -> history (early stopping on val loss, best restored)
    assemble(base, head_model) -> ONE flat functional graph (head layers applied to base.output; the
                                   layer objects, hence the weights, are shared with head_model)
    split_model(model) -> (base, head_model)     inverse of assemble (used by --from / adapt)
    fine_tune(model, layers, train pixels+labels, val ..., epochs, lr) -> history
                                 top LAYERS of base.layers trainable, BatchNormalization frozen
                                 (trainable=False => inference mode in Keras 2); augmented views are
                                 made fresh per epoch; if no epoch beats the head's val loss, the
                                 weights from before fine-tuning are kept (history["kept_weights_before"])
    calibrate_random_bn(base, pixels, spec)      --weights random only: BN statistics from the data
    predict_probs(model, pixels, spec)  /  evaluate(model, pixels, labels, spec) -> (acc, confusion)

Model input = preprocessed float32 NHWC in [-1, 1] (edgetl.data.preprocess); output = softmax
probabilities (N, n_classes). Head layers are named "head_*" so split_model can find them.

Where the time goes (hymenoptera, alpha 0.35, 224 px, 2 cores, ~5.4 s in all): the main thread
imports TensorFlow (~2.4 s) and builds the Keras base (~1.1 s) while a second thread decodes the images
and computes their base features with the backbone's cached TFLite copy (FeaturePipeline; the copy is
made once per backbone, edgetl.backbone); the head trains on the cached features (~0.6 s, a GradientTape
loop); the run is written (~0.5 s) while a helper process draws the PNGs (edgetl.report.PlotProcess).
The seed recipe instead recomputes the base for every image in every epoch.
Hooks (CONTRACTS.md): --qat -> edgetl.qat.qat_phase, --adapt-bn -> edgetl.adapt.adapt_bn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backbone, data as datamod, rundir
from .errors import EdgetlError

HEADS = ("linear", "dense128")
QAT_LOSSES = ("distill", "labels")  # --qat-loss: QAT fine-tunes towards the float model's probabilities, or the labels
HEAD_PREFIX = "head_"
DEFAULT_ALPHA = 1.0
DEFAULT_SIZE = 224
# Keras MobileNetV2(include_top=False, pooling="avg") has 154 layers after its input, for every alpha
# and size; --fine-tune LAYERS counts from the top of base.layers (as in Keras' transfer-learning guide).
BASE_LAYERS = 154
FT_LR_FACTOR = 0.05  # default fine-tune lr = 20x lower than the head lr (issue: 10-100x lower)


@dataclass
class Recipe:
    """The options `edgetl train` and `edgetl compare` share (compare.CompareConfig extends it too), so
    both commands have one set of defaults."""

    data: str
    out: str = "runs/run"
    alpha: float | None = None  # None -> 1.0 (or the --from run's)
    image_size: int | None = None  # None -> 224 (or the --from run's)
    weights: str = "imagenet"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    dropout: float = 0.2
    head: str = "linear"
    patience: int = 5
    fine_tune: int = 0
    fine_tune_epochs: int = 5
    fine_tune_lr: float | None = None  # None -> lr * FT_LR_FACTOR
    val_split: float = 0.2
    seed: int = 0
    overwrite: bool = False
    workers: int = 2  # image decoding (and TFLite feature) threads

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def recipe(self) -> dict:
        """Just the shared options (e.g. to make a TrainConfig from a CompareConfig)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)}


@dataclass
class TrainConfig(Recipe):
    """Every `edgetl train` option (recorded verbatim in edgetl.json["config"])."""

    augment: int = 0
    from_run: str | None = None
    qat: bool = False
    qat_epochs: int = 5
    qat_lr: float = 1e-4
    qat_loss: str = "distill"  # one of QAT_LOSSES
    adapt_bn: bool = False
    feature_batch: int = 32
    base_cache: bool = True  # features from the backbone's cached TFLite copy (edgetl.backbone)


@dataclass
class Prepared:
    """Validated options + the scanned data split (no TensorFlow needed to build it)."""

    cfg: TrainConfig
    split: datamod.Split
    alpha: float
    image_size: int
    from_meta: dict | None = None


@dataclass
class TrainResult:
    path: Path
    meta: dict
    timings: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# validation (before any work, before TensorFlow)
# ------------------------------------------------------------------------------------------------
def validate(cfg: TrainConfig) -> Prepared:
    """Check every option and scan DATA; raise EdgetlError naming the flag/file. Never imports TF."""
    if cfg.data is None or str(cfg.data) == "":
        raise EdgetlError("DATA: missing; give an image folder (DATA/<class>/*.jpg or DATA/{train,val}/<class>/)")
    if cfg.head not in HEADS:
        raise EdgetlError(f"--head {cfg.head}: accepted values are {', '.join(HEADS)}")
    for flag, v, lo in (("--epochs", cfg.epochs, 1), ("--batch-size", cfg.batch_size, 1),
                        ("--patience", cfg.patience, 1), ("--augment", cfg.augment, 0),
                        ("--fine-tune", cfg.fine_tune, 0), ("--fine-tune-epochs", cfg.fine_tune_epochs, 1),
                        ("--qat-epochs", cfg.qat_epochs, 1), ("--workers", cfg.workers, 1)):
        if int(v) != v or v < lo:
            raise EdgetlError(f"{flag} {v}: must be an integer >= {lo}")
    if cfg.fine_tune > BASE_LAYERS:
        raise EdgetlError(f"--fine-tune {cfg.fine_tune}: MobileNetV2's base has {BASE_LAYERS} layers; "
                          f"use 1-{BASE_LAYERS} (e.g. 20-40 to tune the last blocks) or 0 for off")
    if cfg.augment > 32:
        raise EdgetlError(f"--augment {cfg.augment}: at most 32 extra views per image")
    if not (cfg.lr > 0 and cfg.lr < 1):
        raise EdgetlError(f"--lr {cfg.lr}: must be between 0 and 1")
    if not (0 < cfg.qat_lr < 1):
        raise EdgetlError(f"--qat-lr {cfg.qat_lr}: must be between 0 and 1")
    if cfg.qat_loss not in QAT_LOSSES:
        raise EdgetlError(f"--qat-loss {cfg.qat_loss}: accepted values are {', '.join(QAT_LOSSES)}")
    if cfg.fine_tune_lr is not None and not (0 < cfg.fine_tune_lr < 1):
        raise EdgetlError(f"--fine-tune-lr {cfg.fine_tune_lr}: must be between 0 and 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise EdgetlError(f"--dropout {cfg.dropout}: must be in [0, 1)")
    if not 0.0 < cfg.val_split < 1.0:
        raise EdgetlError(f"--val-split {cfg.val_split}: must be between 0 and 1 (exclusive)")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise EdgetlError(f"--out {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise EdgetlError(f"--out {out} exists and is not a folder")

    from_meta = None
    alpha, size = cfg.alpha, cfg.image_size
    if cfg.from_run is not None:
        try:
            frun = rundir.Run(cfg.from_run)
            frun.require_model()
        except EdgetlError as e:  # (D) name the flag: "--from X: not an edgetl run ..."
            msg = str(e)
            raise EdgetlError("--from " + msg[4:] if msg.startswith("RUN ") else f"--from: {msg}") from None
        if out.resolve() == frun.path.resolve():
            raise EdgetlError(f"--out {out}: must differ from --from {frun.path} (the source run is never modified)")
        from_meta = frun.meta
        if from_meta.get("qat"):
            raise EdgetlError(f"--from {frun.path}: a QAT run cannot be trained further; use the run it was made from")
        f_alpha, f_size = from_meta.get("alpha"), frun.image_size
        if alpha is not None and f_alpha is not None and float(alpha) != float(f_alpha):
            raise EdgetlError(f"--alpha {alpha}: differs from --from run's alpha {f_alpha}; omit --alpha")
        if size is not None and int(size) != f_size:
            raise EdgetlError(f"--image-size {size}: differs from --from run's image size {f_size}; omit --image-size")
        alpha, size = f_alpha, f_size
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    size = DEFAULT_SIZE if size is None else int(size)
    if cfg.from_run is None:
        backbone.check_backbone_options(alpha, size, cfg.weights)
        if cfg.weights not in ("imagenet", "random") and not Path(cfg.weights).expanduser().is_file():
            raise EdgetlError(f"--weights {cfg.weights}: no such file (give 'imagenet', 'random' or a path to a .h5)")

    if cfg.qat:
        _require_hook("qat", "qat_phase", "--qat")
    if cfg.adapt_bn:
        _require_hook("adapt", "adapt_bn", "--adapt-bn")

    split = datamod.scan(cfg.data, cfg.val_split, cfg.seed)
    if from_meta is not None and list(split.classes) != list(from_meta["classes"]):
        raise EdgetlError(f"--from {cfg.from_run}: class names differ: DATA has {split.classes}, "
                          f"the run has {list(from_meta['classes'])}")
    return Prepared(cfg, split, alpha, size, from_meta)


def _require_hook(module: str, func: str, flag: str):
    """The owner's hook function, or a one-line error if it does not exist yet (checked before work)."""
    import sys

    if f"edgetl.{module}" in sys.modules:
        return None
    if importlib.util.find_spec(f"edgetl.{module}") is None:
        raise EdgetlError(f"{flag}: not available in this edgetl (edgetl/{module}.py with {func}() is missing)")
    return None


def _load_hook(module: str, func: str, flag: str):
    try:
        mod = importlib.import_module(f"edgetl.{module}")
    except ImportError as e:
        raise EdgetlError(f"{flag}: cannot import edgetl.{module} ({e})") from None
    fn = getattr(mod, func, None)
    if fn is None:
        raise EdgetlError(f"{flag}: not available in this edgetl (edgetl.{module}.{func} is missing)")
    return fn


# ------------------------------------------------------------------------------------------------
# data: decoding and augmentation (numpy / Pillow)
# ------------------------------------------------------------------------------------------------
class Decoder:
    """Decode (path, label) items to uint8 pixels; any number of threads may call `work()` at once
    (Pillow releases the GIL while decoding). Bad files are skipped and reported, never fatal."""

    def __init__(self, items, size: int, progress=None):
        self.items, self.size, self.progress = list(items), size, progress
        self.results: list = [None] * len(self.items)
        self._next = 0
        self._finished = 0
        self._lock = threading.Lock()
        self._all_done = threading.Condition(self._lock)
        self.error: BaseException | None = None

    def work(self) -> None:
        try:
            while True:
                with self._lock:
                    i = self._next
                    self._next += 1
                if i >= len(self.items) or self.error is not None:
                    return
                path, _ = self.items[i]
                try:
                    self.results[i] = (datamod.load_image(path, self.size), None)
                except datamod.ImageDecodeError as e:
                    self.results[i] = (None, {"file": path, "reason": str(e)})
                with self._lock:
                    self._finished += 1
                    if self._finished == len(self.items):
                        self._all_done.notify_all()
                if self.progress is not None:
                    self.progress()
        except BaseException as e:  # re-raised by collect() in the caller's thread
            with self._lock:
                self.error = e
                self._all_done.notify_all()

    def wait_all(self) -> None:
        """Block until every item is decoded (by whichever threads claimed them) or one failed."""
        with self._lock:
            self._all_done.wait_for(lambda: self._finished == len(self.items) or self.error is not None)

    def collect(self, start: int = 0, stop: int | None = None):
        """(pixels, labels, paths, skipped) of items[start:stop], all decoded by now."""
        if self.error is not None:
            raise self.error
        pix, labels, paths, skipped = [], [], [], []
        for (path, label), (arr, skip) in zip(self.items[start:stop], self.results[start:stop]):
            if skip is not None:
                skipped.append(skip)
            else:
                pix.append(arr)
                labels.append(label)
                paths.append(path)
        arr = np.stack(pix) if pix else np.zeros((0, self.size, self.size, 3), np.uint8)
        return arr, np.asarray(labels, dtype=np.int64), paths, skipped


def decode_split(items, size: int, console=None, desc: str = "decode", workers: int = 2):
    """Decode (path, label) items to (uint8 pixels, labels, paths, skipped) with a progress bar, on
    `workers` threads. Bad files are skipped and reported, never fatal."""
    with _progress(console) as prog:
        task = prog.add_task(desc, total=len(items))
        dec = Decoder(items, size, progress=lambda: prog.advance(task))
        threads = [threading.Thread(target=dec.work, daemon=True) for _ in range(max(1, workers) - 1)]
        for th in threads:
            th.start()
        dec.work()
        for th in threads:
            th.join()
    return dec.collect()


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


def augment_views(pixels: np.ndarray, view: int, seed: int, start: int = 0) -> np.ndarray:
    """View number `view` (1..N) of each image; image i's view depends only on (seed, start+i, view)."""
    out = np.empty_like(pixels)
    for i in range(len(pixels)):
        out[i] = augment_image(pixels[i], np.random.default_rng([seed, start + i, view]))
    return out


def feature_views(augment: int) -> list[tuple[str, int]]:
    """The order in which base features are computed and stacked, the same on both feature paths (the
    cached TFLite base and TensorFlow): train originals, val originals, then each augmented train view
    (view 0 = the image itself)."""
    return [("train", 0), ("val", 0)] + [("train", v) for v in range(1, augment + 1)]


def view_pixels(pixels: np.ndarray, view: int, seed: int, start: int = 0) -> np.ndarray:
    return augment_views(pixels, view, seed, start) if view else pixels


class FeaturePipeline:
    """Decode every image, then the frozen base's features of every view (train originals, val, then
    `augment` seeded views of the training images) from the base's TFLite copy, on any number of
    threads calling `work()` (each with its own interpreter; Pillow and the interpreter release the GIL).

    The features start once `start_features(model)` is called: at once when the backbone's TFLite copy
    is cached (the features then run while the main thread imports TensorFlow), or after the main
    thread made the copy. `start_features(None)`: decode only (the TensorFlow features path).
    """

    CHUNK = 32

    def __init__(self, items, n_train: int, size: int, spec: dict, augment: int, seed: int,
                 on_decoded=None, on_features=None):
        self.dec = Decoder(items, size, progress=on_decoded)
        self.n_train, self.spec, self.augment, self.seed = n_train, spec, augment, seed
        self.on_features = on_features
        self._model: bytes | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._split_lock = threading.Lock()
        self._split: tuple | None = None
        self._tasks: list | None = None
        self._next = 0
        self._out: dict = {}
        self.error: BaseException | None = None
        self.tflite_error: str | None = None  # the TFLite base failed: use the TensorFlow path
        self.seconds = 0.0  # thread time spent in features (all threads)

    def start_features(self, model: bytes | None) -> None:
        if not self._ready.is_set():
            self._model = model
            self._ready.set()

    @property
    def with_features(self) -> bool:
        return self._ready.is_set() and self._model is not None

    def split(self):
        """((train pixels, labels, paths, skipped), (val ...)): decoded by now; stacked once, whichever
        thread asks first (the features and the caller share the arrays)."""
        with self._split_lock:
            if self._split is None:
                self._split = (self.dec.collect(0, self.n_train), self.dec.collect(self.n_train, None))
            return self._split

    def _pixels(self, which: str) -> np.ndarray:
        return self.split()[0 if which == "train" else 1][0]

    def _claim(self):
        with self._lock:
            if self._tasks is None:
                n = {which: len(self._pixels(which)) for which in ("train", "val")}
                self._tasks = [(which, v, s) for which, v in feature_views(self.augment)
                               for s in range(0, n[which], self.CHUNK)]
            i = self._next
            self._next += 1
        return self._tasks[i] if i < len(self._tasks) else None

    def work(self) -> None:
        try:
            self.dec.work()
            self._ready.wait()
            if self._model is None or self.error is not None:
                return
            self.dec.wait_all()
            base = None
            while (task := self._claim()) is not None and self.error is None and self.tflite_error is None:
                t = time.perf_counter()
                which, view, s = task
                px = view_pixels(self._pixels(which)[s:s + self.CHUNK], view, self.seed, s)
                x = datamod.preprocess(px, self.spec)
                try:
                    base = base or backbone.TFLiteBase(self._model)
                    self._out[task] = base(x)
                except Exception as e:  # a cached file the runtime rejects: the caller falls back
                    self.tflite_error = self.tflite_error or f"{type(e).__name__}: {str(e)[:120]}"
                    return
                with self._lock:
                    self.seconds += time.perf_counter() - t
                if self.on_features is not None:
                    self.on_features(len(px))
        except BaseException as e:  # re-raised by features() in the main thread
            self.error = self.error or e
            self._ready.set()

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """(train features: originals then each augmented view, val features), all computed by now."""
        if self.error is not None:
            raise self.error
        n_feat = next((self._out[k].shape[1] for k in self._tasks), 0)

        def cat(which):
            arrs = [self._out[k] for k in self._tasks if k[0] == which]
            return np.concatenate(arrs) if arrs else np.zeros((0, n_feat), np.float32)

        return cat("train"), cat("val")


# ------------------------------------------------------------------------------------------------
# model pieces
# ------------------------------------------------------------------------------------------------
def compute_features(base, pixels: np.ndarray, spec: dict, batch_size: int = 32, console=None,
                     desc: str = "features", progress=None) -> np.ndarray:
    """Frozen-base features of uint8 pixels, in batches, with a rich progress bar (or a given callback)."""
    if progress is not None:
        return backbone.extract_features(base, pixels, spec, batch_size, progress=progress)
    with _progress(console) as prog:
        task = prog.add_task(desc, total=len(pixels))
        return backbone.extract_features(base, pixels, spec, batch_size, progress=lambda n: prog.advance(task, n))


def build_head(n_features: int, n_classes: int, head: str = "linear", dropout: float = 0.2, seed: int = 0):
    """Head model on base features: Dropout + Dense softmax (or Dropout, Dense(128, relu), Dense softmax)."""
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.layers.Dropout(dropout, seed=seed, name=HEAD_PREFIX + "dropout")]
    if head == "dense128":
        layers += [keras.layers.Dense(128, activation="relu", kernel_initializer=init, name=HEAD_PREFIX + "dense128"),
                   keras.layers.Dropout(dropout, seed=seed + 1, name=HEAD_PREFIX + "dropout2")]
    layers.append(keras.layers.Dense(n_classes, activation="softmax",
                                     kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
                                     name=HEAD_PREFIX + "softmax"))
    inp = keras.Input((n_features,), name=HEAD_PREFIX + "features")
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x, name="head")


def _head_layers(head_model):
    return [layer for layer in head_model.layers if layer.name.startswith(HEAD_PREFIX)
            and not layer.__class__.__name__ == "InputLayer"]


def assemble(base, head_model):
    """ONE flat functional graph: the head's layer objects applied to base.output (weights shared)."""
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    x = base.output
    for layer in _head_layers(head_model):
        x = layer(x)
    return keras.Model(base.input, x, name="edgetl_mobilenetv2")


def split_model(model):
    """(base, head_model) of an assembled model, sharing its layers (inverse of `assemble`)."""
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    heads = [layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX)]
    if not heads:
        raise EdgetlError(f"model {model.name}: no '{HEAD_PREFIX}*' layers; not an edgetl model")
    feat = heads[0].input
    base = keras.Model(model.input, feat, name="base")
    inp = keras.Input((int(feat.shape[-1]),), name=HEAD_PREFIX + "features")
    x = inp
    for layer in heads:
        x = layer(x)
    return base, keras.Model(inp, x, name="head")


def _compile(model, lr: float):
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


class _EpochProgress:
    """A rich progress bar over epochs (a Keras callback)."""

    @staticmethod
    def make(prog, task):
        from .tfenv import tf_and_keras

        _, keras = tf_and_keras()

        class CB(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                prog.update(task, advance=1, description=(
                    f"{prog.tasks[task].fields.get('name', 'train')} "
                    f"loss {logs.get('loss', float('nan')):.3f} val_acc {logs.get('val_accuracy', float('nan')):.3f}"))

        return CB()


def fit_head(head_model, train_xy, val_xy, epochs: int = 30, lr: float = 1e-3, batch_size: int = 32,
             patience: int = 5, seed: int = 0, console=None, desc: str = "head") -> dict:
    """Train the head on cached features: Adam(lr), mean sparse cross-entropy, batches of `batch_size`
    reshuffled (seeded) every epoch, dropout on; early stopping on val loss (`patience` epochs without
    improvement), the best epoch's weights restored at the end.

    A GradientTape loop over Keras' own layers, optimizer and loss rather than `model.fit`: on a few
    hundred cached feature vectors an epoch is ~1 ms of arithmetic, and fit's per-epoch machinery
    (iterator, callbacks, logs, its validation pass) cost ~35 ms, i.e. most of the head phase. One
    traced function runs a whole epoch; validation is one direct call of the head on the val features.
    """
    from .tfenv import tf_and_keras

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
    with _progress(console) as prog:
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


def _history(h: dict) -> dict:
    return {k: [float(v) for v in vals] for k, vals in h.items()}


class _PixelSequence:
    """Batches of preprocessed pixels for model.fit: originals + seeded augmented views, built per batch
    (no float copy of the whole data set in memory)."""

    @staticmethod
    def make(pixels, labels, spec, batch_size, views: int, seed: int):
        from .tfenv import tf_and_keras

        _, keras = tf_and_keras()
        index = [(i, v) for v in range(views + 1) for i in range(len(pixels))]

        class Seq(keras.utils.Sequence):
            def __init__(self):
                super().__init__()
                self.order = np.arange(len(index))
                self.epoch = 0
                self.on_epoch_end()

            def __len__(self):
                return (len(index) + batch_size - 1) // batch_size

            def __getitem__(self, b):
                sel = self.order[b * batch_size:(b + 1) * batch_size]
                xs = []
                for j in sel:
                    i, v = index[j]
                    # fresh views every epoch (the base changes, so nothing is cached here anyway)
                    img = pixels[i] if v == 0 else augment_image(
                        pixels[i], np.random.default_rng([seed, i, v, self.epoch]))
                    xs.append(img)
                return datamod.preprocess(np.stack(xs), spec), labels[[index[j][0] for j in sel]]

            def on_epoch_end(self):
                self.order = np.random.default_rng([seed, 7919, self.epoch]).permutation(len(index))
                self.epoch += 1

        return Seq()


def set_fine_tune_layers(base_layers, n_layers: int) -> int:
    """Unfreeze the top n_layers of the base (Keras layer order, as base.layers[-n:]); BatchNormalization
    stays frozen (trainable=False runs BN in inference mode in Keras 2). Returns how many layers with
    weights became trainable."""
    layers = [layer for layer in base_layers if layer.__class__.__name__ != "InputLayer"]
    top_ids = {id(layer) for layer in (layers[-n_layers:] if n_layers else [])}
    n = 0
    for layer in base_layers:
        is_bn = layer.__class__.__name__.startswith("BatchNormalization")
        layer.trainable = id(layer) in top_ids and not is_bn
        n += int(layer.trainable and bool(layer.weights))
    return n


def fine_tune(model, n_layers: int, train_px, train_y, val_px, val_y, spec: dict, epochs: int = 5,
              lr: float = 5e-5, batch_size: int = 32, augment: int = 0, patience: int = 3, seed: int = 0,
              console=None) -> dict:
    """Fine-tune the assembled model: top n_layers base layers trainable, BN in inference mode,
    head trainable; early stopping on val loss, best weights restored."""
    from .tfenv import tf_and_keras

    _, keras = tf_and_keras()
    heads = {id(layer) for layer in model.layers if layer.name.startswith(HEAD_PREFIX)}
    base_layers = [layer for layer in model.layers if id(layer) not in heads]
    unfrozen = set_fine_tune_layers(base_layers, n_layers)
    for layer in model.layers:
        if id(layer) in heads:
            layer.trainable = True
    _compile(model, lr)
    seq = _PixelSequence.make(train_px, train_y, spec, batch_size, augment, seed)
    val = (datamod.preprocess(val_px, spec), val_y)
    loss_before = float(model.evaluate(val[0], val[1], batch_size=batch_size, verbose=0)[0])
    weights_before = model.get_weights()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    with _progress(console) as prog:
        task = prog.add_task("fine-tune", total=epochs, name="fine-tune")
        h = model.fit(seq, validation_data=val, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False,
                      callbacks=[stop, _EpochProgress.make(prog, task)])
    hist = _history(h.history)
    hist["val_loss_before"] = loss_before
    # early stopping also covers "epoch 0": if no fine-tuning epoch beat the val loss the head reached,
    # keep the weights from before fine-tuning
    hist["kept_weights_before"] = bool(min(hist["val_loss"]) >= loss_before)
    if hist["kept_weights_before"]:
        model.set_weights(weights_before)
    for layer in model.layers:  # leave the saved model fully frozen-flagged except the head
        layer.trainable = id(layer) in heads
    hist["best_epoch"] = 0 if hist["kept_weights_before"] else int(stop.best_epoch) + 1
    hist["unfrozen_layers"] = unfrozen
    return hist


def calibrate_random_bn(base, pixels: np.ndarray, spec: dict, n: int = 64, seed: int = 0) -> int:
    """--weights random only: set every BatchNormalization's moving mean/variance to the statistics of
    n seeded training images (one forward pass in training mode with momentum 0). Without it, a randomly
    initialised MobileNetV2's features shrink to ~1e-11 and no head can learn from them (tests,
    latency work). Returns the number of images used."""
    bns = [layer for layer in base.layers if layer.__class__.__name__.startswith("BatchNormalization")]
    idx = np.sort(np.random.default_rng(seed).permutation(len(pixels))[:n])
    saved = [layer.momentum for layer in bns]
    try:
        for layer in bns:
            layer.momentum = 0.0
        base(datamod.preprocess(pixels[idx], spec), training=True)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return int(len(idx))


def predict_probs(model, pixels: np.ndarray, spec: dict, batch_size: int = 32) -> np.ndarray:
    return backbone.extract_features(model, pixels, spec, batch_size)


def confusion(y_true, y_pred, n_classes: int) -> list[list[int]]:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm.tolist()


def evaluate(model, pixels, labels, spec, batch_size: int = 32) -> tuple[float, list[list[int]]]:
    """(accuracy, confusion matrix rows=true cols=predicted) of a model on uint8 pixels."""
    probs = predict_probs(model, pixels, spec, batch_size)
    pred = probs.argmax(1)
    n = int(probs.shape[1])
    acc = float((pred == labels).mean()) if len(labels) else float("nan")
    return acc, confusion(labels, pred, n)


def _head_eval(head_model, x, y) -> tuple[float, list[list[int]]]:
    probs = np.asarray(head_model(x, training=False))
    pred = probs.argmax(1)
    return float((pred == y).mean()), confusion(y, pred, int(probs.shape[1]))


# ------------------------------------------------------------------------------------------------
# loading runs
# ------------------------------------------------------------------------------------------------
def load_run_model(run):
    """The tf_keras model of a run directory (path or rundir.Run). QAT runs load inside quantize_scope."""
    from .tfenv import tf_and_keras

    run = run if isinstance(run, rundir.Run) else rundir.Run(run)
    path = run.require_model()
    _, keras = tf_and_keras()
    try:
        if run.meta.get("qat"):
            # B (issue 3): qat.quantize_scope = tfmot's scope + fixes for reloading QAT .keras files
            from .qat import load_qat_model

            return load_qat_model(path)
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgetlError(f"RUN {run.path}: cannot load {path.name} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}); re-run `edgetl train`") from None


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


@contextlib.contextmanager
def _native_logs_aside(console):
    """TensorFlow's C++ start-up chatter (absl / oneDNN / CUDA lines) is written to file descriptor 2
    where no Python setting filters it. While the stage runs, fd 2 goes to a temp file and the rich
    console writes to a duplicate of the real stderr; on an unexpected failure the log's tail is shown."""
    import os
    import sys
    import tempfile

    try:
        fd = sys.stderr.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured in tests): nothing to do
        yield
        return
    if getattr(console, "_file", None) not in (None, sys.stderr):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    real = os.fdopen(os.dup(fd), "w", buffering=1)
    log = tempfile.TemporaryFile(mode="w+b")
    os.dup2(log.fileno(), fd)
    console.file = real
    failed = False
    try:
        yield
    except (EdgetlError, KeyboardInterrupt):
        raise
    except BaseException:
        failed = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)
        console.file = None
        real.close()
        if failed:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-20:]
            if tail:
                print("\n".join(["TensorFlow log (last lines):", *tail]), file=sys.stderr)
        log.close()


def _base_model(cfg: TrainConfig, p: Prepared, weights: dict, tr_px, va_px, va_y, spec: dict, console):
    """(frozen base, head model or None, --from info or None, weights record): a new MobileNetV2, or
    the --from run's model split into base and head (evaluated on the new data first)."""
    from .tfenv import set_seed, tf_and_keras

    _, keras = tf_and_keras()
    set_seed(cfg.seed)
    keras.backend.clear_session()
    set_seed(cfg.seed)
    from_info = None
    if p.from_meta is not None:
        model = load_run_model(cfg.from_run)
        base, head_model = split_model(model)
        acc0, cm0 = evaluate(model, va_px, va_y, spec, cfg.feature_batch)
        from_info = {"run": str(Path(cfg.from_run).resolve()), "classes": list(p.from_meta["classes"]),
                     "val_accuracy_before": acc0, "confusion_matrix_before": cm0,
                     "source_val_accuracy": p.from_meta.get("metrics", {}).get("val_accuracy")}
        weights = dict(p.from_meta.get("weights") or weights)
        console.print(f"--from {cfg.from_run}: val accuracy on the new data before any update: [bold]{acc0:.3f}[/]")
    else:
        base = backbone.build_base(p.alpha, p.image_size, weights["path"])
        head_model = None
        if weights["source"] == "random":
            weights["bn_statistics_from_images"] = calibrate_random_bn(base, tr_px, spec, seed=cfg.seed)
    base.trainable = False
    return base, head_model, from_info, weights


def train(cfg: TrainConfig, console=None, prepared: Prepared | None = None) -> TrainResult:
    """The whole `edgetl train`: validate, decode, features, head, fine-tune/QAT hooks, write the run."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with _native_logs_aside(console), contextlib.ExitStack() as cleanup:
        return _train(cfg, console, prepared, cleanup)


def _train(cfg: TrainConfig, console, prepared: Prepared | None, cleanup: contextlib.ExitStack) -> TrainResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name, since):
        timings[name] = round(time.perf_counter() - since, 3)
        return time.perf_counter()

    p = prepared or validate(cfg)
    t = lap("validate", t0)
    split, size, alpha = p.split, p.image_size, p.alpha
    spec = datamod.preprocessing_spec(size)
    n_classes = len(split.classes)

    weights = {"source": "run", "path": None, "sha256": None}
    if p.from_meta is None:  # mirror / Keras cache / local file: instant; a download fails before any work
        weights = backbone.resolve_weights(cfg.weights, alpha, size)
    t = lap("weights", t)
    # The main thread imports TensorFlow (~3 s of one core; it must be the main thread: tf_keras keeps
    # thread-local state set at import time, e.g. the .keras saving format) and builds the Keras base,
    # while a background thread decodes the images and, when the backbone's TFLite copy is cached,
    # computes every base feature with it: both cores busy, neither oversubscribed. Without a cached
    # copy the main thread makes one (~1 s) after building the base; the features then run on both.
    from .tfenv import tf_and_keras

    key = None
    if cfg.base_cache and p.from_meta is None and not cfg.adapt_bn:  # those change the base: TF features
        key = backbone.base_cache_key(weights, alpha, size)
    feat_info: dict = {"engine": "tensorflow", "base_cache": None}
    n_tr = len(split.train)
    views = "+".join(["orig"] + ([f"{cfg.augment} aug"] if cfg.augment else []))
    with _progress(console) as prog:
        t_dec = prog.add_task("decode images", total=n_tr + len(split.val))
        t_feat = prog.add_task(f"base features ({views})", total=(n_tr * (1 + cfg.augment) + len(split.val)),
                               visible=key is not None)
        pipe = FeaturePipeline(split.train + split.val, n_tr, size, spec, cfg.augment, cfg.seed,
                               on_decoded=lambda: prog.advance(t_dec),
                               on_features=lambda n: prog.advance(t_feat, n))
        if key is not None:
            cached, why = backbone.read_base_cache(key)
            feat_info = {"engine": "tflite", "base_cache": str(backbone.base_cache_path(key)),
                         "base_cache_status": "hit" if cached else why}
            if cached is not None:
                pipe.start_features(cached)
        else:
            pipe.start_features(None)
        helpers = [threading.Thread(target=pipe.work, daemon=True) for _ in range(max(1, cfg.workers) - 1)]
        for th in helpers:
            th.start()
        try:
            tf_and_keras()
            t = lap("import_tensorflow", t)
            if key is not None:  # build while the helper finishes decoding and features (no bar of its own)
                base, head_model, from_info, weights = _base_model(cfg, p, weights, None, None, None, spec, console)
                t = lap("build_model", t)
            pipe.dec.work()  # help with any decoding left
            pipe.dec.wait_all()
            (tr_px, tr_y, tr_paths, tr_skip), (va_px, va_y, va_paths, va_skip) = pipe.split()
            skipped = list(split.ignored) + tr_skip + va_skip
            for name, ys in (("train", tr_y), ("val", va_y)):
                missing = [c for i, c in enumerate(split.classes) if not (ys == i).any()]
                if missing:
                    raise EdgetlError(f"DATA {cfg.data}: no decodable {name} images for class(es) {missing} "
                                      f"({len(skipped)} file(s) skipped: "
                                      f"{', '.join(Path(s['file']).name for s in skipped[:5])})")
            prog.update(t_feat, total=len(tr_px) * (1 + cfg.augment) + len(va_px))
            t = lap("decode", t)  # decoding left by then (the rest ran during the import)
            if key is not None and not pipe.with_features:  # first run on this backbone: cache its base
                check_x = datamod.preprocess(tr_px[:4], spec)
                made, why = backbone.write_base_cache(base, key, check_x)
                feat_info["base_cache_status"] = why or "created"
                if made is None:
                    feat_info["engine"] = "tensorflow"
                    console.print(f"[yellow]note[/]: base features through TensorFlow ({why})")
                pipe.start_features(made)
                t = lap("base_cache", t)
            if pipe.with_features:
                pipe.work()  # the main thread helps with the features left
                for th in helpers:
                    th.join()
                if pipe.tflite_error is None:
                    f_tr, f_va = pipe.features()
                    feat_info["thread_seconds"] = round(pipe.seconds, 3)
                else:
                    feat_info.update(engine="tensorflow", base_cache_status=f"failed: {pipe.tflite_error}")
                    console.print(f"[yellow]note[/]: cached TFLite base failed ({pipe.tflite_error}); "
                                  f"base features through TensorFlow")
        finally:
            pipe.start_features(None)  # never leave a helper waiting (errors, Ctrl-C)
    if key is None:  # --from runs evaluate with their own progress bar: outside the one above
        base, head_model, from_info, weights = _base_model(cfg, p, weights, tr_px, va_px, va_y, spec, console)
        t = lap("build_model", t)
    metrics: dict = {}

    adapt_info = None
    if cfg.adapt_bn:
        # D's hook (edgetl.adapt): re-estimate the base's BN statistics on DATA's training images (no labels);
        # with --from, relative to the source run's own training images when they are still readable.
        adapt_bn = _load_hook("adapt", "adapt_bn", "--adapt-bn")
        adapt_mod = importlib.import_module("edgetl.adapt")
        target = assemble(base, head_model) if head_model is not None else base
        kwargs = {}
        if p.from_meta is not None and hasattr(adapt_mod, "source_pixels"):
            ref = adapt_mod.source_pixels(rundir.Run(cfg.from_run), console)
            if ref is not None:
                kwargs["reference_pixels"] = ref
        adapted = adapt_bn(target, tr_px, spec, console, **kwargs)
        if adapted is not target:  # a hook may return a new model: take its layers
            base, head_model = split_model(adapted) if head_model is not None else (adapted, None)
        base.trainable = False
        adapt_info = {"bn": True, "images": int(len(tr_px))}
        if hasattr(adapt_mod, "adapt_info"):
            adapt_info.update(adapt_mod.adapt_info(adapted))
        if from_info is not None:  # (D) the run's model after adaptation alone, before any labelled update
            acc_ad, cm_ad = evaluate(assemble(base, head_model), va_px, va_y, spec, cfg.feature_batch)
            adapt_info.update({"val_accuracy_before": from_info["val_accuracy_before"],
                               "val_accuracy_after": acc_ad, "confusion_matrix_after": cm_ad})
            console.print(f"--adapt-bn (no labels): val accuracy on the new data "
                          f"{from_info['val_accuracy_before']:.3f} -> [bold]{acc_ad:.3f}[/]")
        t = lap("adapt_bn", t)

    if feat_info["engine"] == "tensorflow":  # --from / --adapt-bn / random weights / --no-base-cache
        n_feat = len(tr_px) * (1 + cfg.augment) + len(va_px)
        with _progress(console) as prog:
            task = prog.add_task(f"base features ({views})", total=n_feat)
            adv = lambda n: prog.advance(task, n)  # noqa: E731
            px, out = {"train": tr_px, "val": va_px}, {"train": [], "val": []}
            for which, v in feature_views(cfg.augment):
                step = 256 if v else max(len(px[which]), 1)  # augmented views in chunks: bounded memory
                for s in range(0, len(px[which]), step):
                    out[which].append(compute_features(base, view_pixels(px[which][s:s + step], v, cfg.seed, s),
                                                       spec, cfg.feature_batch, progress=adv))
        f_tr, f_va = np.concatenate(out["train"]), np.concatenate(out["val"])
    y_tr_all = np.tile(tr_y, 1 + cfg.augment)
    t = lap("features", t)
    from .report import PlotProcess

    plotter = PlotProcess()  # imports matplotlib on the other core while the head trains
    cleanup.callback(plotter.close)  # with a cached TFLite base: only what was left after the TensorFlow import

    if head_model is None:
        head_model = build_head(f_tr.shape[1], n_classes, cfg.head, cfg.dropout, cfg.seed)
    history = {"head": fit_head(head_model, (f_tr, y_tr_all), (f_va, va_y), cfg.epochs, cfg.lr, cfg.batch_size,
                                cfg.patience, cfg.seed, console)}
    acc, cm = _head_eval(head_model, f_va, va_y)
    metrics["head"] = {"val_accuracy": acc, "confusion_matrix": cm,
                       "best_epoch": history["head"]["best_epoch"]}
    model = assemble(base, head_model)
    t = lap("head", t)

    if cfg.fine_tune:
        n_base = sum(1 for layer in base.layers if layer.__class__.__name__ != "InputLayer")
        if cfg.fine_tune > n_base:  # validate() checks BASE_LAYERS before any work; this guards --from models
            raise EdgetlError(f"--fine-tune {cfg.fine_tune}: the base has only {n_base} layers")
        ft_lr = cfg.fine_tune_lr or cfg.lr * FT_LR_FACTOR
        history["fine_tune"] = fine_tune(model, cfg.fine_tune, tr_px, tr_y, va_px, va_y, spec,
                                         cfg.fine_tune_epochs, ft_lr, cfg.batch_size, cfg.augment,
                                         min(cfg.patience, 3), cfg.seed, console)
        acc_ft, cm_ft = evaluate(model, va_px, va_y, spec, cfg.feature_batch)
        metrics["fine_tune"] = {"val_accuracy_before": acc, "val_accuracy_after": acc_ft,
                                "confusion_matrix": cm_ft, "layers": cfg.fine_tune, "lr": ft_lr,
                                "unfrozen_layers": history["fine_tune"]["unfrozen_layers"]}
        metrics["fine_tune"]["kept_weights_before"] = history["fine_tune"]["kept_weights_before"]
        note = (" (no epoch improved the val loss: kept the weights from before fine-tuning)"
                if history["fine_tune"]["kept_weights_before"] else "")
        console.print(f"fine-tune top {cfg.fine_tune} layers: val accuracy {acc:.3f} -> [bold]{acc_ft:.3f}[/]{note}")
        acc, cm = acc_ft, cm_ft
        t = lap("fine_tune", t)

    qat_info = None
    if cfg.qat:
        qat_phase = _load_hook("qat", "qat_phase", "--qat")
        model, qat_info = qat_phase(model, (tr_px, tr_y), (va_px, va_y), spec, cfg, console)
        acc, cm = evaluate(model, va_px, va_y, spec, cfg.feature_batch)
        metrics["qat"] = {"val_accuracy": acc, "confusion_matrix": cm}
        t = lap("qat", t)

    metrics.update({"val_accuracy": acc, "confusion_matrix": cm, "n_train": int(len(tr_px)),
                    "n_val": int(len(va_px)), "n_train_views": int(len(f_tr)), "n_skipped": len(skipped)})
    meta = {
        "edgetl_version": rundir._edgetl_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": list(split.classes),
        "image_size": size,
        "alpha": alpha,
        "preprocessing": spec,
        "weights": weights,
        "seed": cfg.seed,
        "config": cfg.as_dict(),
        "split": {"data_root": str(Path(cfg.data).resolve()), "layout": split.layout,
                  "val_split": cfg.val_split if split.layout == "flat" else None,
                  # the images the model was trained / validated on (skipped files are under "skipped")
                  "train": [[str(Path(pth).resolve()), int(y)] for pth, y in zip(tr_paths, tr_y)],
                  "val": [[str(Path(pth).resolve()), int(y)] for pth, y in zip(va_paths, va_y)]},
        "skipped": skipped,
        "history": history,
        "metrics": metrics,
        "timings": timings,
        "features": feat_info,
        "versions": rundir.versions("numpy", "pillow", "tensorflow", "tf-keras",
                                    "tensorflow-model-optimization", "rich", "typer", "matplotlib"),
        "model": {"input": [None, size, size, 3], "output": [None, n_classes], "head": cfg.head,
                  "dropout": cfg.dropout, "params": int(model.count_params())},
        "qat": bool(cfg.qat),
        "qat_info": qat_info,
        "from_run": from_info,
        "adapt": adapt_info,
    }

    out = Path(cfg.out)
    with rundir.atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        plotter.submit({"dir": str(tmp), "history": history, "confusion_matrix": cm, "classes": list(split.classes),
                        "title": f"val accuracy {acc:.3f}"})
        model.save(tmp / rundir.MODEL_FILE, save_format="keras")
        (tmp / rundir.LABELS_FILE).write_text("\n".join(split.classes) + "\n")
        plotter.wait()
        timings["save"] = round(time.perf_counter() - t, 3)
        timings["total"] = round(time.perf_counter() - t0, 3)
        rundir.write_json(tmp / rundir.META_FILE, meta)
    _summary(console, out, meta)
    return TrainResult(out, meta, timings)


def _summary(console, out: Path, meta: dict) -> None:
    from rich.table import Table

    m, tm = meta["metrics"], meta["timings"]
    tab = Table(title=f"edgetl train -> {out}", show_header=True)
    tab.add_column("")
    tab.add_column("value", justify="right")
    if meta.get("from_run"):
        tab.add_row("val accuracy before update (--from)", f"{meta['from_run']['val_accuracy_before']:.3f}")
    if (meta.get("adapt") or {}).get("val_accuracy_after") is not None:
        tab.add_row("val accuracy after --adapt-bn (no labels)", f"{meta['adapt']['val_accuracy_after']:.3f}")
    tab.add_row("val accuracy (head)", f"{m['head']['val_accuracy']:.3f}")
    if "fine_tune" in m:
        tab.add_row("val accuracy (fine-tuned)", f"{m['fine_tune']['val_accuracy_after']:.3f}")
    if "qat" in m:
        tab.add_row("val accuracy (QAT)", f"{m['qat']['val_accuracy']:.3f}")
    tab.add_row("[bold]val accuracy", f"[bold]{m['val_accuracy']:.3f}")
    tab.add_row("images train / val (train views)", f"{m['n_train']} / {m['n_val']} ({m['n_train_views']})")
    tab.add_row("skipped files", str(m["n_skipped"]))
    for k, v in tm.items():
        tab.add_row(f"time {k}", f"{v:.1f} s")
    console.print(tab)
    for s in meta["skipped"][:10]:
        console.print(f"  skipped {s['file']}: {s['reason']}", highlight=False, soft_wrap=True)
    if len(meta["skipped"]) > 10:
        console.print(f"  ... {len(meta['skipped']) - 10} more in {out / rundir.META_FILE}")
    console.print(f"next: [bold]edgetl export {out} --int8[/]", highlight=False, soft_wrap=True)

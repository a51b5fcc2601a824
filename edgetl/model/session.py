"""The learning session train, compare and search share: decode the images, build the frozen base, compute
its features (the cached TFLite copy of the base, else TensorFlow), train a head on them.

`Session.load()` decodes every image and computes every base feature while TensorFlow imports: the main
thread imports TensorFlow (~3 s of one core; it must be the main thread: tf_keras keeps thread-local state
set at import time, e.g. the .keras saving format) and builds the Keras base, while the pipeline's thread
(model.features) decodes the images and, when the base's TFLite copy is cached, computes the features with
it: both cores busy, neither oversubscribed. Without a cached copy the main thread makes one (~1 s) after
building the base; the features then run on both cores. A base that is not the published one (random
weights, a --from run's, --adapt-bn's) has its features computed through TensorFlow (`tensorflow_features`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import images
from ..core.console import progress
from ..core.errors import EdgetlError
from ..core.images import feature_views, view_pixels
from . import backbone, basecache
from .bn import calibrate_random_bn
from .features import FeaturePipeline, TFLiteFailed
from .fit import fit_head
from .graph import build_head
from .predict import predict_pixels
from .tfenv import set_seed, tf_and_keras


def fresh_keras(seed: int) -> None:
    """A new Keras graph, seeded before and after clearing (the layers built next draw their names and
    initial values from the same state on every run)."""
    _, keras = tf_and_keras()
    set_seed(seed)
    keras.backend.clear_session()
    set_seed(seed)


@dataclass
class Session:
    """One learning session: `cfg` (a model.recipe.Recipe, taken whole), `p` (the checked options: split,
    alpha, image_size), the decoded images, the frozen base and its features, and the timings."""

    cfg: object
    p: object
    console: object
    spec: dict
    start: float
    mark: float
    use_base_cache: bool = True  # the base is the published one: its TFLite copy can be cached and used
    timings: dict = field(default_factory=dict)
    weights: dict = field(default_factory=lambda: {"source": "run", "path": None, "sha256": None})
    features: dict = field(default_factory=lambda: {"engine": "tensorflow", "base_cache": None})
    # decoded images: pixels, labels, paths of train, val and test; files skipped
    tr_px: np.ndarray | None = None
    tr_y: np.ndarray | None = None
    tr_paths: list = field(default_factory=list)
    va_px: np.ndarray | None = None
    va_y: np.ndarray | None = None
    va_paths: list = field(default_factory=list)
    te_px: np.ndarray | None = None
    te_y: np.ndarray | None = None
    te_paths: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    # base features of the training views (originals, then each augmented view), of the val and of the test
    # images (None until computed)
    f_tr: np.ndarray | None = None
    f_va: np.ndarray | None = None
    f_te: np.ndarray | None = None
    feature_seconds: float = 0.0  # compute time of the features (thread time on the TFLite path)
    base: object = None
    augment: int = -1  # augmented views per training image computed (default: cfg.augment)

    def __post_init__(self):
        if self.augment < 0:
            self.augment = self.cfg.augment

    def lap(self, name: str) -> None:
        """Record the time since the last lap as timings[name]."""
        now = time.perf_counter()
        self.timings[name] = round(now - self.mark, 3)
        self.mark = now

    @property
    def views(self) -> str:
        return "+".join(["orig"] + ([f"{self.augment} aug"] if self.augment else []))

    @property
    def classes(self) -> list[str]:
        return list(self.p.split.classes)

    # -- the phases --------------------------------------------------------------------------------------
    def load(self) -> None:
        """Decode every image and compute every base feature (TensorFlow imported, the base built)."""
        self.decode_and_features()
        if self.base is None:
            self.build_base()
            self.lap("build_model")
        if self.f_tr is None:
            self.tensorflow_features()
        self.lap("features")

    def decode_and_features(self) -> None:
        """Decode every image and, with the backbone's cached TFLite copy, compute every base feature, while
        the main thread imports TensorFlow and builds the base (see the module's doc)."""
        cfg, p, split = self.cfg, self.p, self.p.split
        key = basecache.base_cache_key(self.weights, p.alpha, p.image_size) if self.use_base_cache else None
        cached = None
        if key is not None:
            cached, why = basecache.read_base_cache(key)
            self.features = {"engine": "tflite", "base_cache": str(basecache.base_cache_path(key)),
                             "base_cache_status": "hit" if cached else why}
        n_tr, n_eval = len(split.train), len(split.val) + len(split.test)
        with progress(self.console) as prog:
            t_dec = prog.add_task("decode images", total=n_tr + n_eval)
            t_feat = prog.add_task(f"base features ({self.views})", total=n_tr * (1 + self.augment) + n_eval,
                                   visible=key is not None)
            with FeaturePipeline(split.train + split.val + split.test, n_tr, p.image_size, self.spec, self.augment,
                                 cfg.seed, cfg.workers, cached, on_decoded=lambda: prog.advance(t_dec),
                                 on_features=lambda n: prog.advance(t_feat, n), n_val=len(split.val)) as pipe:
                tf_and_keras()
                self.lap("import_tensorflow")
                if key is not None:  # build while the pipeline finishes decoding and features (no bar of its own)
                    self.build_base()
                    self.lap("build_model")
                self.take_decoded(pipe.decoded())  # this thread decodes what is left
                prog.update(t_feat, total=len(self.tr_px) * (1 + self.augment) + len(self.va_px) + len(self.te_px))
                self.lap("decode")  # decoding left by then (the rest ran during the import)
                if key is not None and cached is None:  # first run on this backbone: cache its base
                    pipe.start_features(self._cache_base(key))
                    self.lap("base_cache")
                if pipe.started():
                    self._tflite_features(pipe)

    def take_decoded(self, decoded) -> None:
        """Keep the decoded images; every class needs a decodable image in train and in val."""
        (self.tr_px, self.tr_y, self.tr_paths, tr_skip), (self.va_px, self.va_y, self.va_paths, va_skip), \
            (self.te_px, self.te_y, self.te_paths, te_skip) = decoded
        self.skipped = list(self.p.split.ignored) + tr_skip + va_skip + te_skip
        for name, ys in (("train", self.tr_y), ("val", self.va_y)):
            missing = [c for i, c in enumerate(self.classes) if not (ys == i).any()]
            if missing:
                raise EdgetlError(f"DATA {self.cfg.data}: no decodable {name} images for class(es) {missing} "
                                  f"({len(self.skipped)} file(s) skipped: "
                                  f"{', '.join(Path(f['file']).name for f in self.skipped[:5])})")

    def build_base(self) -> None:
        """The frozen pretrained base (a new Keras graph, seeded); random weights get BN statistics from
        the training images."""
        fresh_keras(self.cfg.seed)
        self.base = backbone.build_base(self.p.alpha, self.p.image_size, self.weights["path"])
        if self.weights["source"] == "random":
            self.weights["bn_statistics_from_images"] = calibrate_random_bn(self.base, self.tr_px, self.spec,
                                                                            seed=self.cfg.seed)
        self.base.trainable = False

    def _cache_base(self, key: dict) -> bytes | None:
        """Convert the frozen Keras base to TFLite, check it and cache it; None when it cannot be used."""
        made, why = basecache.write_base_cache(self.base, key, images.preprocess(self.tr_px[:4], self.spec))
        self.features["base_cache_status"] = why or "created"
        if made is None:
            self.features["engine"] = "tensorflow"
            self.console.print(f"[yellow]note[/]: base features through TensorFlow ({why})")
        return made

    def _tflite_features(self, pipe: FeaturePipeline) -> None:
        """The pipeline's features (this thread computes its share); on a TFLite failure, a note and none."""
        try:
            self.f_tr, self.f_va, self.f_te = pipe.features()
            self.feature_seconds = pipe.seconds
            self.features["thread_seconds"] = round(pipe.seconds, 3)
        except TFLiteFailed as e:
            self.features.update(engine="tensorflow", base_cache_status=f"failed: {e}")
            self.console.print(f"[yellow]note[/]: cached TFLite base failed ({e}); base features through TensorFlow")

    def tensorflow_features(self) -> None:
        """Base features of every view through the Keras base (the same order as the TFLite pipeline's)."""
        cfg, t = self.cfg, time.perf_counter()
        px = {"train": self.tr_px, "val": self.va_px, "test": self.te_px}
        out: dict = {which: [] for which in px}
        with progress(self.console) as prog:
            task = prog.add_task(f"base features ({self.views})",
                                 total=len(self.tr_px) * (1 + self.augment) + len(self.va_px) + len(self.te_px))
            for which, v in feature_views(self.augment):
                step = 256 if v else max(len(px[which]), 1)  # augmented views in chunks: bounded memory
                for st in range(0, len(px[which]), step):
                    out[which].append(predict_pixels(self.base, view_pixels(px[which][st:st + step], v, cfg.seed, st),
                                                     self.spec, cfg.feature_batch,
                                                     progress=lambda n: prog.advance(task, n)))
        self.f_tr, self.f_va = np.concatenate(out["train"]), np.concatenate(out["val"])
        self.f_te = np.concatenate(out["test"]) if out["test"] else np.zeros((0, self.f_tr.shape[1]), np.float32)
        self.feature_seconds = time.perf_counter() - t

    # -- the head ----------------------------------------------------------------------------------------
    def train_views(self, views: int | None = None, idx=None) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the training images `idx` (all by default) in their first `views` views
        (1 + augment by default): originals, then each augmented view."""
        n, n_feat = len(self.tr_y), self.f_tr.shape[1]
        views = self.f_tr.shape[0] // max(n, 1) if views is None else views
        idx = np.arange(n) if idx is None else np.asarray(idx)
        x = self.f_tr[:views * n].reshape(views, n, n_feat)[:, idx].reshape(-1, n_feat)
        return x, np.tile(self.tr_y[idx], views)

    def new_head(self, head: str | None = None, dropout: float | None = None):
        """A new head on the base features (the recipe's head and dropout unless given)."""
        cfg = self.cfg
        return build_head(self.f_tr.shape[1], len(self.classes), cfg.head if head is None else head,
                          cfg.dropout if dropout is None else dropout, cfg.seed, start=cfg.head_start)

    def fit_head(self, head_model, x, y, desc: str = "head", lr: float | None = None) -> dict:
        """Train `head_model` on (x, y) features with the recipe's loop settings; early stopping on val."""
        cfg = self.cfg
        return fit_head(head_model, (x, y), (self.f_va, self.va_y), cfg.epochs, cfg.lr if lr is None else lr,
                        cfg.batch_size, cfg.patience, cfg.seed, self.console, desc=desc)

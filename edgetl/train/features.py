"""Base features of every image, computed while TensorFlow imports: a thread pool decodes the images and
runs the backbone's cached TFLite copy on them (each thread its own interpreter; Pillow and the
interpreter release the GIL), on the core the TensorFlow import leaves free."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..core import images
from ..core.images import feature_views, view_pixels
from ..core.runtime import TFLiteRunner


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
                    self.results[i] = (images.load_image(path, self.size), None)
                except images.ImageDecodeError as e:
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
                x = images.preprocess(px, self.spec)
                try:
                    base = base or TFLiteRunner(self._model)
                    self._out[task] = base.outputs(x)
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

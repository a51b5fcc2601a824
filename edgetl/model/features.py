"""Base features of every image, computed while TensorFlow imports.

A thread pool decodes the images and runs the backbone's cached TFLite copy on them (each thread its own
interpreter; Pillow and the interpreter release the GIL) on the core that the main thread's TensorFlow
import leaves free. The pool has `workers - 1` threads, so during the import both cores are busy and
neither is oversubscribed; once the main thread has imported TensorFlow (and built the Keras base) it takes
its share: it runs every task the pool has not started yet (`_run_here`), last first, while the pool works
from the front.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..core import images
from ..core.images import collect, decode_item, feature_views, view_pixels
from ..core.runtime import TFLiteRunner

PARTS = ("train", "val", "test")


class TFLiteFailed(Exception):
    """The cached TFLite base failed on this machine's runtime: the caller computes features with TensorFlow."""


class FeaturePipeline:
    """Decode `items` (train items first, then val, then test: n_train and n_val of them, the rest test), then
    compute the frozen base's features of every view (train originals, val, test, then `augment` seeded views
    of the training images, as core.images.feature_views orders them) with the base's TFLite copy, in chunks
    of CHUNK images on the thread pool.

    Features start as soon as the images are decoded when the TFLite base is given up front (`base`: a
    cached copy), else when `start_features(base)` is called (after the main thread made the copy). Without
    either the pipeline only decodes (the TensorFlow features path). Use it as a context manager: leaving
    the block cancels what is queued and waits for what runs (errors, Ctrl-C).
    """

    CHUNK = 32  # images per TFLite feature task
    DECODE_CHUNK = 8  # images per decoding task

    def __init__(self, items, n_train: int, size: int, spec: dict, augment: int, seed: int, workers: int = 2,
                 base: bytes | None = None, on_decoded=None, on_features=None, n_val: int | None = None):
        self.items, self.n_train, self.size, self.spec = list(items), n_train, size, spec
        self.n_val = len(self.items) - n_train if n_val is None else n_val
        self.augment, self.seed = augment, seed
        self.on_decoded, self.on_features = on_decoded, on_features
        self._decoding = images.decoding_of(spec)
        self.seconds = 0.0  # thread time spent computing features (all threads)
        self._durations: list[float] = []
        self._local = threading.local()  # each thread's own TFLite interpreter
        self._lock = threading.Lock()
        self._split: tuple | None = None
        self._base: bytes | None = None
        self._tasks: dict[tuple, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers - 1), thread_name_prefix="edgetl-features")
        n = len(self.items)
        bounds = [(s, min(n, s + self.DECODE_CHUNK)) for s in range(0, n, self.DECODE_CHUNK)]
        self._decodes = {b: self._pool.submit(self._decode, *b) for b in bounds}
        # with a cached base the features follow the decoding on the pool, while the main thread imports
        self._starter = self._pool.submit(self.start_features, base) if base is not None else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- decoding ---------------------------------------------------------------------------------------
    def _decode(self, start: int, stop: int) -> list:
        out = []
        for item in self.items[start:stop]:
            out.append(decode_item(item, self.size, self._decoding))
            if self.on_decoded is not None:
                self.on_decoded()
        return out

    def decoded(self):
        """((train pixels, labels, paths, skipped), (val ...), (test ...)): the calling thread decodes what the
        pool has not started, waits for the rest, and the arrays are stacked once (features and caller share
        them)."""
        with self._lock:
            if self._split is None:
                results = [r for chunk in _run_here(self._decodes, self._decode) for r in chunk]
                a, b = self.n_train, self.n_train + self.n_val
                self._split = tuple(collect(self.items[i:j], results[i:j], self.size)
                                    for i, j in ((0, a), (a, b), (b, len(self.items))))
            return self._split

    # -- features ---------------------------------------------------------------------------------------
    def start_features(self, base: bytes | None) -> None:
        """Queue the feature tasks of every view on the pool, to run on `base` (TFLite bytes); None: the
        features are computed elsewhere (TensorFlow). Called once: by the pool when the base was given up
        front, else by the caller."""
        if base is None:
            return
        n = {which: len(part[0]) for which, part in zip(PARTS, self.decoded())}
        self._base = base
        self._tasks = {(which, v, s): self._pool.submit(self._features, which, v, s)
                       for which, v in feature_views(self.augment) for s in range(0, n[which], self.CHUNK)}

    def started(self) -> bool:
        """Whether the TFLite features were started (at construction, or by `start_features`)."""
        if self._starter is not None:
            self._starter.result()  # returns once the feature tasks are queued
        return bool(self._tasks)

    def _features(self, which: str, view: int, start: int) -> np.ndarray:
        t = time.perf_counter()
        pixels = self.decoded()[PARTS.index(which)][0]
        px = view_pixels(pixels[start:start + self.CHUNK], view, self.seed, start)
        x = images.preprocess(px, self.spec)
        try:
            if getattr(self._local, "runner", None) is None:
                self._local.runner = TFLiteRunner(self._base)
            out = self._local.runner.outputs(x)
        except Exception as e:  # a cached file this machine's runtime rejects: the caller falls back
            raise TFLiteFailed(f"{type(e).__name__}: {str(e)[:120]}") from None
        self._durations.append(time.perf_counter() - t)  # (list.append is atomic)
        if self.on_features is not None:
            self.on_features(len(px))
        return out

    def features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train features: originals then each augmented view, val features, test features). The calling
        thread computes
        the chunks the pool has not started. Raises TFLiteFailed (after cancelling the rest) if the TFLite
        base failed."""
        self.started()
        try:
            outs = _run_here(self._tasks, self._features)
        except TFLiteFailed:
            for f in self._tasks.values():
                f.cancel()
            raise
        self.seconds = sum(self._durations)
        by_key = dict(zip(self._tasks, outs))
        n_feat = next((o.shape[1] for o in outs), 0)

        def cat(which):
            arrs = [o for k, o in by_key.items() if k[0] == which]
            return np.concatenate(arrs) if arrs else np.zeros((0, n_feat), np.float32)

        return cat("train"), cat("val"), cat("test")


def _run_here(tasks: dict[tuple, Future], fn) -> list:
    """Results of the pool's tasks, in order: every task the pool has not started yet is cancelled there and
    run on this thread instead (last first, so this thread and the pool meet in the middle); the others are
    waited for."""
    here = {}
    for key, f in reversed(tasks.items()):
        if f.cancel():
            here[key] = fn(*key)
    return [here[key] if key in here else f.result() for key, f in tasks.items()]

"""The trained Keras model as a runner (bench's reference row), reached through the format registry."""

from __future__ import annotations

import time

from ..core.runtime import Runner
from .load import load_run_model
from .predict import traced
from .tfenv import tf_and_keras


class KerasRunner(Runner):
    """model.keras of a run. The timed call is the model traced once into a graph (tf.function): the
    strongest plain-TensorFlow batch-1 number; eager calls and model.predict add large per-call
    overhead, and bench reports them beside it (other_modes)."""

    def __init__(self, path, fmt, meta, threads: int = 1):
        super().__init__(path, fmt, meta, threads)
        tf, _ = tf_and_keras()
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        t0 = time.perf_counter()
        self.model = load_run_model(path.parent)
        self.load_seconds = time.perf_counter() - t0
        self._fn = traced(self.model)

    def run(self, x):
        return self._fn(x).numpy()

    def other_modes(self) -> dict:
        """The ways people also call a Keras model on one image."""
        return {"eager_call": lambda x: self.model(x, training=False).numpy(),
                "model_predict": lambda x: self.model.predict(x, verbose=0)}

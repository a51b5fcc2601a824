"""Loading a run's Keras models: the float model (model.keras), the model its int8 files come from (the
QAT model, model-qat.keras, when `train --qat` chose it), tfmot fake-quant graphs (QAT runs whose
model.keras is one, see Run.qat_graph), and the float twin of such a graph."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..core.errors import EdgetlError
from ..core.rundir import Run
from .tfenv import tf_and_keras, tfmot


def load_run_model(run):
    """The tf_keras model of a run directory (path or Run): model.keras (a fake-quant graph loads inside
    quantize_scope)."""
    run = run if isinstance(run, Run) else Run(run)
    return load_model_file(run, run.require_model(), qat_graph=run.qat_graph)


def load_int8_model(run: Run):
    """The Keras model a run's int8 files are converted from (Run.int8_source)."""
    _, path = run.int8_source()
    if path == run.model_path:
        return load_run_model(run)
    if not path.is_file():
        raise EdgetlError(f"RUN {run.path}: {path.name} is missing (edgetl.json says the int8 files come from it); "
                          "re-run `edgetl train --qat`")
    return load_model_file(run, path)


def load_model_file(run: Run, path: Path, qat_graph: bool = False):
    """A Keras file of a run; any failure to load it is one line naming the file."""
    _, keras = tf_and_keras()
    try:
        if qat_graph:
            return load_qat_model(path)
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgetlError(f"RUN {run.path}: cannot load {path.name} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}); re-run `edgetl train`") from None


@contextlib.contextmanager
def quantize_scope():
    """tfmot's quantize_scope, plus two load-time fixes so a QAT model saved as .keras loads back.

    tfmot 0.8.1 + tf_keras 2.21 cannot reload its own .keras files (no released tfmot fixes it):
    (1) the loader calls QuantizeLayer.build twice (build_from_config, then the
    functional call), creating 5 variables where 3 were saved; (2) QuantizeWrapperV2.build lists the
    inner layer's trainable weights before building it, so a wrapper rebuilt from config owns fewer
    variables than the saved one (the kernel appears twice in the original). Here QuantizeLayer.build
    is made idempotent and the wrapper builds its inner layer first, reproducing the variable list
    quantize_model created.
    """
    _, _, mot = tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapperV2

    ql_build, qw_build = QuantizeLayer.build, QuantizeWrapperV2.build

    def layer_build(self, input_shape):
        if getattr(self, "optimizer_step", None) is not None:
            return
        ql_build(self, input_shape)
        self.built = True

    def wrapper_build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        qw_build(self, input_shape)

    QuantizeLayer.build, QuantizeWrapperV2.build = layer_build, wrapper_build
    try:
        with mot.quantization.keras.quantize_scope():
            yield
    finally:
        QuantizeLayer.build, QuantizeWrapperV2.build = ql_build, qw_build


def load_qat_model(path):
    """A QAT model saved with model.save(...keras), loaded with its learned ranges."""
    _, keras, _ = tfmot()
    with quantize_scope():
        return keras.models.load_model(path, compile=False)


def strip_quantization(qmodel):
    """Float twin of a QAT graph: same (QAT-trained) weights, fake-quant nodes removed: the QAT model that
    `train --qat` saves, and the source of the float files of a run whose model.keras is a fake-quant
    graph (converting the fake-quant graph to float formats gives files that match neither the QAT nor
    the float model: measured ONNX 64% agreement)."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

    _, keras = tf_and_keras()

    def clone(layer):
        if isinstance(layer, QuantizeLayer):
            return keras.layers.Activation("linear", name=layer.name)
        inner = layer.layer if isinstance(layer, QuantizeWrapper) else layer
        cfg = inner.get_config()
        act = getattr(inner, "activation", None)
        if act is not None and not callable(getattr(keras.activations, str(cfg.get("activation")), None)):
            while hasattr(act, "activation"):  # QuantizeAwareActivation keeps the original activation
                act = act.activation
            linear = act is None or type(act).__name__ == "NoOpActivation"
            cfg["activation"] = "linear" if linear else keras.activations.serialize(act)
        return inner.__class__.from_config(cfg)

    fm = keras.models.clone_model(qmodel, clone_function=clone)
    for src, dst in zip(qmodel.layers, fm.layers):
        if not dst.weights:
            continue
        # by short variable name: a wrapper lists its inner kernel (sometimes twice) among quantizer variables
        by_name = {}
        for v in src.weights:
            by_name.setdefault(v.name.split("/")[-1].split(":")[0], v)
        try:
            dst.set_weights([by_name[w.name.split("/")[-1].split(":")[0]].numpy() for w in dst.weights])
        except KeyError as e:
            raise EdgetlError(f"cannot strip quantization from layer {src.name!r} (no variable {e})") from None
    return fm

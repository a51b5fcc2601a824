"""QAT on tiny models: the QAT graph is quantized as the TFLite converter quantizes (per-channel depthwise
weights, BatchNorm fold invariance) and predicts what its int8 file predicts; the phase leaves the float
model alone, trains only the top, and keeps the post-training int8 file when QAT does not beat it; a
`train --qat` run keeps the float model bit for bit and export follows the int8 source it recorded; a run
whose model.keras is a tfmot fake-quant graph still exports from the graph's own ranges. The same on real
data: tests/integration/test_train_qat.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import factory
from edgetl.cli import app
from edgetl.core.images import decode_all, decoding_of, preprocess
from edgetl.core.rundir import Run
from edgetl.core.runtime import TFLiteRunner
from edgetl.model.graph import cut_layer, top_model
from edgetl.model.load import load_run_model
from edgetl.model.predict import predict
from edgetl.model.quantize import _matched_classes, calibrate_ranges, quantize_matched
from edgetl.model.tfenv import tfmot
from edgetl.train import qat
from edgetl.train.config import TrainConfig


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The tiny run and its training pixels. Its random-base model fits its training images but not
    held-out ones, so the QAT checks measure on the training images (train_xy as val_xy)."""
    r = Run(tiny_run)
    px, y, _, _ = decode_all(r.split_items("train"), r.image_size, decoding=decoding_of(r.preprocessing))
    return r, (px, y)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"qat_epochs": 1, "batch_size": 8, **kw})


def _fake_quant_per_channel(w: np.ndarray, axis: int) -> np.ndarray:
    """The converter's int8 weights: symmetric, narrow range [-127, 127], one scale per channel."""
    m = np.moveaxis(w, axis, -1)
    s = np.abs(m).reshape(-1, m.shape[-1]).max(0) / 127.0
    return np.moveaxis(np.sign(m) * np.floor(np.abs(m / s) + 0.5) * s, -1, axis)


def _weight_quantizers():
    """(depthwise kernel quantizer, conv kernel quantizer) of the matched scheme, with fresh range variables."""
    tf, _, _ = tfmot()
    from tensorflow_model_optimization.python.core.quantization.keras import quantizers

    def ranges(n):
        return {"min_var": tf.Variable(np.full(n, -6.0, np.float32)), "max_var": tf.Variable(np.full(n, 6.0, np.float32))}

    conv = quantizers.LastValueQuantizer(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)
    return _matched_classes()["quantizer"](), conv, ranges


DEEP_CUT = "block_15_add"  # the top after it holds block 16: expand, depthwise and project convolutions


def test_depthwise_weights_are_quantized_per_channel(tiny):
    """tfmot's default scheme gives a depthwise kernel [h, w, C, 1] ONE range (its per-axis quantizer takes
    the last axis); quantize_matched gives one per channel and quantizes it as the converter does."""
    tf, _, mot = tfmot()
    model = load_run_model(tiny[0].path)
    top = top_model(model, DEEP_CUT)
    q = quantize_matched(top)
    dws = [layer for layer in q.layers if type(getattr(layer, "layer", None)).__name__ == "DepthwiseConv2D"]
    assert len(dws) == 1
    kernel = next(v for v in dws[0].weights if v.name.endswith("/depthwise_kernel:0")).numpy()
    quantizer = dws[0].quantize_config.weight_quantizer
    assert type(quantizer).__name__ == "EdgetlDepthwisePerChannelQuantizer"
    rng = [v for v in dws[0].weights if v.name.split("/")[-1].startswith("depthwise_kernel_m")]
    assert len(rng) == 2 and all(v.shape == (kernel.shape[2],) for v in rng)
    got = quantizer(tf.constant(kernel), True, {"min_var": rng[0], "max_var": rng[1]}).numpy()
    assert np.allclose(got, _fake_quant_per_channel(kernel, axis=2), atol=1e-6 * np.abs(kernel).max())
    default = mot.quantization.keras.quantize_model(top_model(model, DEEP_CUT))
    wrapper = next(layer for layer in default.layers if type(getattr(layer, "layer", None)).__name__ == "DepthwiseConv2D")
    assert [v.shape for v in wrapper.weights if v.name.endswith("kernel_min:0")] == [(1,)]


@pytest.mark.parametrize("sign", [1, -1])
def test_batchnorm_fold_commutes_with_the_weight_quantizers(sign):
    """The converter folds BatchNorm into the kernel (each output channel times gamma/sqrt(var+eps)); the
    QAT graph does not. With per-channel symmetric weights both give the same int8 weights: the matched
    quantizers of the folded kernel equal the folded quantized kernel (negative factors too)."""
    tf, _, _ = tfmot()
    depthwise, conv, ranges = _weight_quantizers()
    rng = np.random.default_rng(0)
    for quantizer, shape, axis in ((depthwise, (3, 3, 16, 1), 2), (conv, (1, 1, 8, 24), 3)):
        w = rng.normal(size=shape).astype(np.float32)
        g = (sign * rng.uniform(0.05, 3.0, size=shape[axis])).astype(np.float32)
        g = g.reshape([-1 if i == axis else 1 for i in range(len(shape))])

        def fq(k):
            return quantizer(tf.constant(k), True, ranges(shape[axis])).numpy()

        assert np.allclose(fq(w * g), fq(w) * g, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def phase(tiny):
    """One QAT phase on the tiny run's model: (float model, its weights before, QAT model, info)."""
    r, xy = tiny
    model = load_run_model(r.path)
    before = [w.copy() for w in model.get_weights()]
    qm, info = qat.qat_phase(model, xy, xy, r.preprocessing, _cfg(qat_epochs=2), None)
    return model, before, qm, info


def test_qat_phase_graph_agrees_with_the_qat_int8_file(phase):
    """The QAT graph (the PTQ file's int8 base features into the fake-quant head) and the QAT model's int8
    file, converted as export converts it, agree; the choice between the two int8 files follows `beats`."""
    model, _, _, info = phase
    # 16 images of a random-base model hold near-ties that int8 rounding may flip on some CPUs; a graph
    # that does not compute what the file computes agrees on about half of them
    assert info["qat_graph_int8_agreement"] >= 0.85
    assert info["cut"] == cut_layer(model) == "global_average_pooling2d"
    assert info["trained_layers"] == ["head_softmax"] and info["calibration_images"] == 16
    assert info["int8_source"] == ("qat" if qat.beats(info["val_acc_qat_int8"], info["val_kl_qat_int8"],
                                                      info["val_acc_ptq_int8"], info["val_kl_ptq_int8"]) else "ptq")
    assert len(info["history"]["loss"]) == 2 and info["loss"] == "distill"
    assert set(info["timings"]) == {"ptq_convert", "int8_activations", "ptq_eval", "qat_graph", "fine_tune",
                                    "qat_convert", "qat_eval"}


def test_qat_phase_leaves_the_float_model_and_trains_only_the_top(phase):
    model, before, qm, info = phase
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert not any("Quantize" in type(layer).__name__ for layer in qm.layers)  # a plain Keras model
    assert [layer.name for layer in qm.layers] == [layer.name for layer in model.layers]
    k = [layer.name for layer in model.layers].index(info["cut"])
    for a, b in zip(model.layers, qm.layers):
        same = all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))
        assert same == (a.name not in info["trained_layers"]), a.name
        assert same or model.layers.index(a) > k


def test_qat_that_loses_to_ptq_is_not_used(tiny):
    """A QAT model whose head was wrecked (it answers one class whatever the image) scores below the
    post-training int8 file: the phase says so in one line and keeps the PTQ file. Built to hold on every
    CPU: the labels are the PTQ file's own answers (so it scores 1.0 wherever it runs), and the wrecked
    head answers the class those labels hold least."""
    from rich.console import Console

    from edgetl.core.data import CALIBRATION_IMAGES
    from edgetl.model.convert import int8_tflite

    r, (px, y) = tiny
    model = load_run_model(r.path)
    x = preprocess(px, r.preprocessing)
    cal = qat.calibration_indices(None, y, CALIBRATION_IMAGES, _cfg().seed)
    labels = TFLiteRunner(int8_tflite(model, r.image_size, x[cal])).outputs(x).argmax(1)
    wrong = int(np.argmin(np.bincount(labels, minlength=2)))
    with_weights_of = qat.with_weights_of

    def wrecked(m, top):
        out = with_weights_of(m, top)
        kernel, bias = out.get_layer("head_softmax").get_weights()
        out.get_layer("head_softmax").set_weights([np.zeros_like(kernel), 8.0 * (np.arange(2) == wrong)])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qat, "with_weights_of", wrecked)
        console = Console(record=True, width=300)
        _, info = qat.qat_phase(model, (px, labels), (px, labels), r.preprocessing, _cfg(), console)
    out = console.export_text()
    assert info["val_acc_ptq_int8"] == 1.0
    assert info["val_acc_qat_int8"] == pytest.approx(float(np.mean(labels == wrong))) and info["val_acc_qat_int8"] <= 0.5
    assert info["int8_source"] == "ptq"
    assert "QAT does not beat post-training int8" in out and "will come from the float model" in out
    assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("loss", ["distill", "labels"])
def test_qat_fine_tune_targets(tiny, monkeypatch, loss):
    """--qat-loss distill fine-tunes towards the float model's probabilities on the training images,
    labels towards the labels; the inputs are the PTQ file's int8 activations at the cut."""
    r, xy = tiny
    model = load_run_model(r.path)
    expected = predict(model, preprocess(xy[0], r.preprocessing))
    seen = {}
    quantize = qat.quantize_matched

    class Seen(Exception):
        pass

    def spy_quantize(m):
        q = quantize(m)

        def spy_fit(x, y, **kw):  # what fit is given is the point here: stop before training
            seen["x"], seen["y"], seen["kw"] = np.asarray(x), np.asarray(y), kw
            raise Seen

        q.fit = spy_fit
        return q

    monkeypatch.setattr(qat, "quantize_matched", spy_quantize)
    with pytest.raises(Seen):
        qat.qat_phase(model, xy, xy, r.preprocessing, _cfg(qat_loss=loss), None)
    assert seen["x"].shape == (len(xy[1]), *model.get_layer(cut_layer(model)).output_shape[1:])
    assert seen["kw"]["epochs"] == 1 and seen["kw"]["batch_size"] == 8
    if loss == "distill":
        assert seen["y"].shape == expected.shape and np.allclose(seen["y"], expected, atol=1e-5)
    else:
        assert seen["y"].ndim == 1 and (seen["y"] == np.asarray(xy[1])).all()


def test_train_qat_keeps_the_float_model_and_export_follows_the_int8_source(tiny_run, tiny_exported, tmp_path):
    """`edgetl train --qat` on the tiny run's data and options: model.keras is the plain run's model bit for
    bit and its float files give the plain run's outputs exactly; model-qat.keras sits beside it; the
    summary prints both int8 accuracies; export converts int8 from the model edgetl.json names and its
    plain int8 file reproduces the int8 accuracy train measured."""
    from edgetl.core.artifact import read_meta

    plain = Run(tiny_run)
    run = tmp_path / "qat"
    tiny_options = [a for k, v in factory.TINY.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    res = CliRunner().invoke(app, ["train", plain.meta["split"]["data_root"], "--out", str(run), *tiny_options,
                                   "--qat", "--qat-epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "val accuracy int8, post-training (TFLite)" in res.output and "val accuracy int8, QAT (TFLite)" in res.output
    meta = json.loads((run / "edgetl.json").read_text())
    info = meta["qat_info"]
    assert meta["qat"] is True and info["qat_model"] == "model-qat.keras" and (run / "model-qat.keras").is_file()
    assert meta["metrics"]["qat"]["int8_source"] == info["int8_source"]
    assert meta["metrics"]["val_accuracy"] == plain.meta["metrics"]["val_accuracy"]
    assert all(np.array_equal(a, b) for a, b in zip(load_run_model(tiny_run).get_weights(),
                                                    load_run_model(run).get_weights()))
    res = CliRunner().invoke(app, ["export", str(run), "--format", "tflite-fp32,tflite-int8,onnx-int8",
                                   "--max-drop", "100", "--size-budget", "0"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "manifest.json").read_text())
    source = info["int8_source"]
    assert m["int8_source"] == {"source": source, "model": "model-qat.keras" if source == "qat" else "model.keras",
                                "calibration_images": min(200, len(meta["split"]["train"]))}  # the images used
    assert f"int8 files from {m['int8_source']['model']}" in res.output
    a = m["artifacts"]
    # the accuracy control's first rung is the plain int8 file, the one train scored
    assert a["tflite-int8"]["int8_control"]["rungs"][0]["accuracy"] == pytest.approx(info[f"val_acc_{source}_int8"])
    assert read_meta(run / "model-int8.tflite")["source"]["qat"] is (source == "qat")
    assert read_meta(run / "model-fp32.tflite")["source"]["qat"] is False
    px, _, _, _ = decode_all(plain.split_items("val"), 32, decoding=decoding_of(plain.preprocessing))
    x = preprocess(px, plain.preprocessing)
    assert np.array_equal(TFLiteRunner(run / "model-fp32.tflite").outputs(x),
                          TFLiteRunner(tiny_exported / "model-fp32.tflite").outputs(x))


def test_run_whose_model_is_a_fake_quant_graph_exports_from_its_ranges(tiny, tmp_path, monkeypatch):
    """A QAT run whose model.keras is tfmot's fake-quant graph (no int8_source in edgetl.json) loads inside
    quantize_scope, exports int8 from the graph's learned ranges (calibration never touched) and float
    files from the graph with the fake-quant nodes stripped."""
    from edgetl.core.artifact import read_meta
    from edgetl.export import context

    r, (px, _) = tiny
    run = tmp_path / "run"
    shutil.copytree(r.path, run)
    _, _, mot = tfmot()
    q = mot.quantization.keras.quantize_model(load_run_model(r.path))
    calibrate_ranges(q, preprocess(px, r.preprocessing), 8)
    q.save(run / "model.keras")
    meta = json.loads((run / "edgetl.json").read_text())
    (run / "edgetl.json").write_text(json.dumps({**meta, "qat": True, "qat_info": {"epochs": 1}}))
    loaded = load_run_model(run)
    assert any("Quantize" in type(layer).__name__ for layer in loaded.layers)
    x = preprocess(px[:4], r.preprocessing)
    assert np.abs(predict(loaded, x) - predict(q, x)).max() < 1e-6

    def no_calibration(self):
        raise AssertionError("a fake-quant graph must not be calibrated")

    monkeypatch.setattr(context.ExportContext, "calibration_inputs", no_calibration)
    # fp16 left out: the random-weight tiny model is numerically chaotic (fp16 weights move its
    # probabilities beyond the fp16 tolerance), which would test that model, not QAT
    res = CliRunner().invoke(app, ["export", str(run), "--format", "tflite-int8,onnx-int8,onnx-fp32",
                                   "--max-drop", "100"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "manifest.json").read_text())
    assert all(a["status"] == "ok" for a in m["artifacts"].values()) and len(m["artifacts"]) == 3
    assert m["int8_source"] == {"source": "qat", "model": "model.keras", "calibration_images": None}
    meta = read_meta(run / "model-int8.tflite")
    assert meta["source"]["qat"] is True and meta["input"]["dtype"] == "int8"
    p = m["artifacts"]["onnx-fp32"]["parity"]
    assert p["max_abs_diff"] <= p["tolerance"]

"""`edgetl export --int8` on a real run (hymenoptera, alpha 0.35, 224 px, ImageNet weights): the int8
files keep the float accuracy, fit the default size budget, and give the same answers on every CPU."""

from __future__ import annotations

import json

import numpy as np

from edgetl.core.formats import INT8_EXPORTS


def test_hymenoptera_int8_close_to_float(exported_run):
    from edgetl.export.budget import MAX_EXTRA_DROP

    m = json.loads((exported_run / "manifest.json").read_text())["artifacts"]
    for name in INT8_EXPORTS + ["tflite-fp32", "onnx-fp32"]:
        assert m[name]["status"] == "ok", m[name]
    keras_acc = m["tflite-fp32"]["parity"]["keras_accuracy"]
    assert keras_acc > 0.8
    for name in INT8_EXPORTS:
        p = m[name]["parity"]
        assert p["n"] > 100
        assert p["accuracy"] >= keras_acc - 0.02, (name, p)
        assert p["agreement"] >= 0.93, (name, p)
    # Sizes (benchmarks/bench_export.py): the default --size-budget 30 holds for both int8 files. The
    # per-channel TFLite file is 32.0 % (lossless floor 30.9 %), so some layers take per-tensor scales;
    # that file may lose at most budget.MAX_EXTRA_DROP points against the per-channel one.
    for name, fp32 in (("tflite-int8", "tflite-fp32"), ("onnx-int8", "onnx-fp32")):
        b = m[name]["size_budget"]
        assert b["met"] and m[name]["bytes"] <= 0.30 * m[fp32]["bytes"], (name, b)
        if b["per_tensor_layers"]:
            assert 0 < len(b["per_tensor_layers"]) < 20
            lost = 100 * (b["per_channel_parity"]["accuracy"] - m[name]["parity"]["accuracy"])
            assert lost <= MAX_EXTRA_DROP["ptq"], (name, b)
    assert m["tflite-int8"]["size_budget"]["per_channel_bytes"] > 0.30 * m["tflite-fp32"]["bytes"]
    assert np.isclose(m["tflite-fp32"]["parity"]["accuracy"], keras_acc, atol=1 / 150)
    # the ONNX int8 file gives the same answers with and without onnxruntime's saturation-free session
    assert m["onnx-int8"]["parity"]["sessions"]["x64quantprecision_agreement"] == 1.0

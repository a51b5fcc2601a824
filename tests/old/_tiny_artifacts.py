"""Small, fast artifacts for the runtime/bench/predict unit tests: tiny random MobileNetV2 -> artifacts.

Kept beside `edgetl export` because the real exporter's int8 calibration and parity checks cost minutes
on 2 cores, over the unit-test budget; the light-install and integration tests use the real exporter.

Run as a script in the FULL env (imports TensorFlow): python tests/_tiny_artifacts.py OUT_DIR [SIZE]
Writes a run-like folder: model.keras, edgetl.json, model-fp32.tflite, model-int8.tflite,
model-fp32.onnx, each with edgetl metadata embedded (CONTRACTS.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(out: str, size: int = 32, classes=("cats", "dogs"), items=None) -> None:
    import numpy as np

    from edgetl import artifact
    from edgetl.backbone import build_base
    from edgetl.data import preprocessing_spec
    from edgetl.export import count_macs
    from edgetl.tfenv import tf_and_keras, tflite_converter

    tf, keras = tf_and_keras()
    keras.utils.set_random_seed(0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = build_base(0.35, size, None)
    y = keras.layers.Dense(len(classes), activation="softmax")(base.output)
    model = keras.Model(base.input, y)
    # Random init makes activations vanish; set BatchNorm statistics from one batch (momentum 0) so the
    # tiny model gives input-dependent, non-uniform outputs and parity/accuracy tests can fail.
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.0
    calib = np.random.default_rng(2).uniform(-1, 1, (16, size, size, 3)).astype(np.float32)
    model(calib, training=True)
    head = model.layers[-1]
    k, b = head.get_weights()
    head.set_weights([k * 3.0, b])
    model.save(out / "model.keras")
    spec = preprocessing_spec(size)
    meta = {"edgetl_version": "0.1.0", "created": "test", "classes": list(classes), "image_size": size,
            "alpha": 0.35, "preprocessing": spec, "qat": False, "macs": count_macs(model),
            "split": {"val": items or []}}
    (out / "edgetl.json").write_text(json.dumps(meta))
    (out / "labels.txt").write_text("\n".join(classes) + "\n")

    def artifact_meta(fmt, dtype="float32", quant=None):
        return {"edgetl_version": "0.1.0", "format": fmt, "classes": list(classes),
                "input": {"name": "input", "shape": [1, size, size, 3], "layout": "NHWC", "dtype": dtype},
                "output": {"name": "probs", "shape": [1, len(classes)], "dtype": dtype, "kind": "probabilities"},
                "preprocessing": spec, "quantization": quant, "macs": meta["macs"],
                "source": {"run": str(out), "alpha": 0.35, "image_size": size, "weights_sha256": None,
                           "qat": False}}

    sig = [tf.TensorSpec([1, size, size, 3], tf.float32, name="input")]
    fn = tf.function(lambda x: model(x, training=False), input_signature=sig)
    fp32 = tflite_converter(fn).convert()
    (out / "model-fp32.tflite").write_bytes(artifact.embed_tflite(fp32, artifact_meta("tflite-fp32")))

    rng = np.random.default_rng(0)
    from edgetl.data import load_image, preprocess

    calib_imgs = [preprocess(load_image(p, size), spec)[None] for p, _ in (items or [])]

    def rep():  # the eval images themselves when given (a tiny test model), else noise
        for x in calib_imgs or [rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32) for _ in range(8)]:
            yield [x]

    conv = tflite_converter(fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    int8 = conv.convert()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=int8)
    iq, oq = it.get_input_details()[0]["quantization"], it.get_output_details()[0]["quantization"]
    q = {"input": {"scale": iq[0], "zero_point": iq[1], "dtype": "int8"},
         "output": {"scale": oq[0], "zero_point": oq[1], "dtype": "int8"}}
    (out / "model-int8.tflite").write_bytes(artifact.embed_tflite(int8, artifact_meta("tflite-int8", "int8", q)))

    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=17)
    artifact.embed_onnx(proto, artifact_meta("onnx-fp32"))
    (out / "model-fp32.onnx").write_bytes(proto.SerializeToString())


if __name__ == "__main__":
    args = sys.argv[1:]
    extra = json.loads(args[2]) if len(args) > 2 else {}
    main(args[0], int(args[1]) if len(args) > 1 else 32, **extra)

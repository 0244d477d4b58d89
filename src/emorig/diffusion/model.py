"""The DiffusionRig model: the denoising UNet plus the global latent encoder.

``RigModel.state_dict()`` keys are DiffusionRig's: ``denoisingUNet.*`` (the UNet, see
:mod:`emorig.diffusion.unet`) and ``encoder.*`` (a ResNet with torchvision's key names whose
``fc`` maps the pooled features to the latent code). The encoder reads the clean image in
[-1, 1] (the training image itself during training, the photo to edit at inference).

DiffusionRig-EMO adds ``expression_encoder.*`` (when ``expression_input_dim > 0``): an MLP from
the expression input (FLAME expression + jaw, or emotion-recogniser features) to the expression
code that every residual block applies as a third, zero-initialised FiLM. See
``docs/diffusionrig-emo.md`` for the design and its alternatives.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emorig.diffusion.config import IMAGE_CHANNELS, RigConfig
from emorig.diffusion.unet import DenoisingUNet
from emorig.reconstruct.backbones import BasicBlock, Bottleneck, ResNet
from emorig.types import RenderBuffers

__all__ = ["ExpressionEncoder", "RigModel", "build_latent_encoder", "with_expression"]

#: Hidden width of the expression encoder's MLP.
EXPRESSION_HIDDEN = 256


class ExpressionEncoder(nn.Module):
    """Expression input -> expression code: LayerNorm, Linear, SiLU, Linear.

    The LayerNorm puts FLAME coefficients and recogniser features (very different scales) on
    one footing. Its output only acts through the UNet's zero-initialised ``expr_emb_layers``,
    so a freshly added encoder changes nothing until training moves those layers.

    Args:
        input_dim: D, the size of the input.
        expression_dim: size of the code.
    """

    def __init__(self, input_dim: int, expression_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(input_dim)
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, EXPRESSION_HIDDEN),
            nn.SiLU(),
            nn.Linear(EXPRESSION_HIDDEN, expression_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, expression_dim)."""
        return self.mlp(self.norm(x))


def build_latent_encoder(config: RigConfig) -> ResNet:
    """A ResNet-18/50 (torchvision key names) whose ``fc`` outputs the latent code.

    Args:
        config: uses ``encoder_depth``, ``encoder_width`` and ``latent_dim``.

    Returns:
        The ResNet; ``encoder.logits(image)`` maps (B, 3, H, W) to (B, latent_dim).
    """
    if config.encoder_depth == 18:
        return ResNet(
            BasicBlock,
            (2, 2, 2, 2),
            width=config.encoder_width,
            include_fc=True,
            num_classes=config.latent_dim,
        )
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        width=config.encoder_width,
        include_fc=True,
        num_classes=config.latent_dim,
    )


def _batch_timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


class RigModel(nn.Module):
    """DiffusionRig's denoiser conditioned on physical buffers, a global latent code and,
    optionally, an expression code.

    Args:
        config: sizes (default: :meth:`RigConfig.official`).

    Attributes:
        config: the configuration (saved with the weights).
        denoisingUNet: the :class:`~emorig.diffusion.unet.DenoisingUNet`.
        encoder: the global latent encoder (:func:`build_latent_encoder`).
    """

    def __init__(self, config: RigConfig | None = None):
        super().__init__()
        self.config = config if config is not None else RigConfig.official()
        self.denoisingUNet = DenoisingUNet(self.config)
        self.encoder = build_latent_encoder(self.config)
        c = self.config
        self.expression_encoder = (
            ExpressionEncoder(c.expression_input_dim, c.expression_dim)
            if c.expression_dim and c.expression_input_dim
            else None
        )

    def encode(self, image: Tensor) -> Tensor:
        """Global latent code of clean images.

        Args:
            image: (B, 3, H, W) float in [-1, 1] (DiffusionRig: 256x256).

        Returns:
            (B, latent_dim).
        """
        if image.ndim != 4 or image.shape[1] != IMAGE_CHANNELS:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        return self.encoder.logits(image)

    def condition_tensor(self, condition: Tensor | RenderBuffers) -> Tensor:
        """The conditioning channels as one tensor, checked against the configuration.

        Args:
            condition: (B, condition_channels, H, W) buffers already concatenated in
                ``config.condition_names`` order, or a :class:`RenderBuffers` (its
                ``condition_names`` must equal the configuration's).

        Returns:
            (B, condition_channels, H, W).
        """
        if isinstance(condition, RenderBuffers):
            if tuple(condition.condition_names) != self.config.condition_names:
                raise ValueError(
                    f"buffers condition on {condition.condition_names}, the model on "
                    f"{self.config.condition_names}"
                )
            condition = condition.condition()
        if condition.ndim != 4 or condition.shape[1] != self.config.condition_channels:
            raise ValueError(
                f"condition must be (B, {self.config.condition_channels}, H, W) "
                f"({'+'.join(self.config.condition_names)}), got {tuple(condition.shape)}"
            )
        return condition

    def forward(
        self,
        x_t: Tensor,
        t: Tensor | int,
        condition: Tensor | RenderBuffers,
        latent: Tensor | None = None,
        x_start: Tensor | None = None,
        expression: Tensor | None = None,
    ) -> Tensor:
        """Predict the noise in ``x_t``.

        Give exactly one of ``latent`` (a precomputed code, e.g. reused across sampling
        steps) and ``x_start`` (the clean image, encoded here).

        Args:
            x_t: (B, 3, H, W) noisy images (nominal [-1, 1] at t = 0), or for a latent model
                (B, C, h, w) noisy latents.
            t: (B,) or scalar training-scale timesteps, 0..999.
            condition: (B, condition_channels, H, W) buffers or a :class:`RenderBuffers`;
                same H, W as ``x_t``; a latent model's is already at latent size
                (``RigPipeline.model_condition``).
            latent: (B, latent_dim) global latent code.
            x_start: (B, 3, H', W') clean images in [-1, 1] to encode.
            expression: only for models built with ``expression_dim > 0``: the expression
                encoder's input (B, expression_input_dim), or the code itself
                (B, expression_dim) when the model has no encoder. None skips that FiLM.

        Returns:
            Predicted noise epsilon, shaped like ``x_t``.
        """
        c = self.config
        if x_t.ndim != 4 or x_t.shape[1] != c.sample_channels:
            raise ValueError(f"x_t must be (B, {c.sample_channels}, H, W), got {tuple(x_t.shape)}")
        batch, _, height, width = x_t.shape
        factor = 2 ** (len(c.channel_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(f"x_t's height and width must be divisible by {factor}")
        if c.latent:
            # A latent model reads its condition at latent size (RigPipeline.model_condition).
            if (
                not isinstance(condition, Tensor)
                or condition.shape[1] != c.model_condition_channels
            ):
                got = "buffers" if not isinstance(condition, Tensor) else tuple(condition.shape)
                raise ValueError(
                    f"a latent model's condition is ({batch}, {c.model_condition_channels}, "
                    f"{height}, {width}) from RigPipeline.model_condition, got {got}"
                )
            cond = condition
        else:
            cond = self.condition_tensor(condition)
        if cond.shape[0] != batch or cond.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"condition {tuple(cond.shape)} does not match x_t {tuple(x_t.shape)}")
        if (latent is None) == (x_start is None):
            raise ValueError("give exactly one of latent and x_start")
        if latent is None:
            latent = self.encode(x_start)  # type: ignore[arg-type]
        if latent.shape != (batch, self.config.latent_dim):
            raise ValueError(
                f"latent must be ({batch}, {self.config.latent_dim}), got {tuple(latent.shape)}"
            )
        if expression is not None:
            if self.config.expression_dim == 0:
                raise ValueError("this model has no expression conditioning (expression_dim 0)")
            size = self.config.expression_input_dim or self.config.expression_dim
            if expression.shape != (batch, size):
                raise ValueError(
                    f"expression must be ({batch}, {size}), got {tuple(expression.shape)}"
                )
            if self.expression_encoder is not None:
                expression = self.expression_encoder(expression.to(x_t.dtype))
        timesteps = _batch_timesteps(t, batch, x_t.device)
        x_in = torch.cat([x_t, cond.to(x_t.dtype)], dim=1)
        return self.denoisingUNet(x_in, timesteps, latent, expression)


def with_expression(
    model: RigModel, expression_dim: int, input_dim: int = 0, source: str = "code"
) -> RigModel:
    """A copy of ``model`` with (zero-initialised) expression conditioning added.

    Every weight of ``model`` is copied; the new ``expr_emb_layers`` start at zero (and feed on
    the new expression encoder, if any), so
    the copy's outputs equal the original's for any expression code until it is trained.

    Args:
        model: a model, typically loaded from a plain DiffusionRig checkpoint.
        expression_dim: size of the expression code (> 0).
        input_dim: size of the expression encoder's input (0: no encoder).
        source: ``"code"`` or ``"emotion"`` (what the input is).

    Returns:
        A new :class:`RigModel` on ``model``'s device and dtype, in ``model``'s mode.
    """
    if expression_dim <= 0:
        raise ValueError(f"expression_dim must be positive, got {expression_dim}")
    if model.config.expression_dim:
        raise ValueError(f"model already has expression_dim {model.config.expression_dim}")
    reference = next(model.parameters())
    extended = RigModel(
        model.config.replace(
            expression_dim=expression_dim, expression_input_dim=input_dim, expression_source=source
        )
    )
    extended.to(device=reference.device, dtype=reference.dtype)
    result = extended.load_state_dict(model.state_dict(), strict=False)
    unexpected = list(result.unexpected_keys)
    stray = [
        k
        for k in result.missing_keys
        if ".expr_emb_layers." not in k and not k.startswith("expression_encoder.")
    ]
    if unexpected or stray:  # pragma: no cover - both models come from the same config
        raise RuntimeError(f"state dicts differ beyond expr_emb_layers: {stray + unexpected}")
    return extended.train(model.training)

"""DiffusionRig's denoiser: the guided-diffusion ADM UNet with a second (and third) FiLM.

Layout (sizes for :meth:`RigConfig.official`, 256x256)::

    x_in = cat[x_t (3), rendered (3), normal (3), albedo (3)]         (B, 12, 256, 256)
    input_blocks.0      3x3 conv -> 128
    per level (sides 256, 128, 64, 32, 16, 8; channels 128, 128, 256, 256, 512, 512):
        num_res_blocks x ResBlock (+ AttentionBlock at 16x16), then a down-sampling
        ResBlock (all levels but the last)
    middle_block        ResBlock, AttentionBlock, ResBlock
    output_blocks       per level, coarsest first: (num_res_blocks + 1) x ResBlock on
                        cat[h, skip] (+ AttentionBlock), the last one followed by an
                        up-sampling ResBlock (all levels but the finest)
    out                 GroupNorm, SiLU, zero-initialised 3x3 conv -> eps (B, 3, 256, 256)

Every residual block modulates its normalised features three times (Perez et al.'s FiLM)::

    h = GroupNorm(h) * (1 + s_t) + b_t        timestep embedding     (emb_layers)
    h = h * (1 + s_z) + b_z                   global latent code     (cond_emb_layers)
    h = h * (1 + s_e) + b_e                   expression code        (expr_emb_layers, optional)
    h = Conv(Dropout(SiLU(h)))                zero-initialised

The expression projection is zero-initialised, so a model with ``expression_dim > 0`` built
from plain DiffusionRig weights computes exactly what those weights computed.

Module and parameter names follow guided-diffusion (``time_embed.0``,
``input_blocks.1.0.in_layers.2``, ``emb_layers.1``, ``cond_emb_layers.1``, ``out_layers.3``,
``skip_connection``, ``middle_block``, ``output_blocks``, ``out.2``, attention ``norm``,
``qkv``, ``proj_out``), so DiffusionRig's released state dict loads without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.diffusion.config import RigConfig

__all__ = [
    "AttentionBlock",
    "DenoisingUNet",
    "Downsample",
    "FilmSequential",
    "GroupNorm32",
    "ResBlock",
    "Upsample",
    "timestep_embedding",
]


# ---------------------------------------------------------------------------------------------
# Helpers.


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cosines first.

    ``emb[:, i] = cos(t * f_i)`` and ``emb[:, half + i] = sin(t * f_i)`` with
    ``f_i = max_period ** (-i / half)``, ``half = dim // 2``; an odd ``dim`` gets a zero column.

    Args:
        timesteps: (B,) timesteps on the training scale (0..999), any numeric dtype.
        dim: embedding width.
        max_period: sets the lowest frequency.

    Returns:
        (B, dim) float32 on the device of ``timesteps``.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _zero(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype; the output keeps that dtype."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, ...) -> (B, C, ...)."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class Downsample(nn.Module):
    """Halve the spatial size: a stride-2 3x3 convolution, or 2x2 average pooling.

    Args:
        channels: input (and output) channels.
        use_conv: learn the down-sampling (a convolution) instead of averaging.
    """

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.channels = channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H / 2, W / 2)."""
        return self.op(x)


class Upsample(nn.Module):
    """Double the spatial size (nearest neighbour), optionally followed by a 3x3 convolution.

    Args:
        channels: input (and output) channels.
        use_conv: add the convolution.
    """

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


# ---------------------------------------------------------------------------------------------
# Blocks.


def _compose_film(scale: Tensor, shift: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """Follow the per-channel map ``h * scale + shift`` by the FiLM of ``params`` (B, 2C)."""
    s, b = params.float().chunk(2, dim=1)
    return scale * (1 + s), shift * (1 + s) + b


class ResBlock(nn.Module):
    """Residual block with timestep, latent and (optionally) expression FiLM.

    Args:
        channels: input channels.
        emb_channels: timestep embedding width.
        latent_dim: global latent code size.
        dropout: dropout rate before the last convolution.
        out_channels: output channels (default: ``channels``).
        expression_dim: expression code size; 0 leaves out ``expr_emb_layers``.
        norm_groups: GroupNorm groups.
        up: up-sample by 2 (nearest) inside the block.
        down: down-sample by 2 (average pooling) inside the block.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        latent_dim: int,
        dropout: float,
        out_channels: int | None = None,
        *,
        expression_dim: int = 0,
        norm_groups: int = 32,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.channels = channels
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, use_conv=False)
            self.x_upd: nn.Module = Upsample(channels, use_conv=False)
        elif down:
            self.h_upd = Downsample(channels, use_conv=False)
            self.x_upd = Downsample(channels, use_conv=False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, 2 * out_channels))
        self.expr_emb_layers = (
            nn.Sequential(nn.SiLU(), _zero(nn.Linear(expression_dim, 2 * out_channels)))
            if expression_dim > 0
            else None
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(
        self, x: Tensor, emb: Tensor, latent: Tensor, expression: Tensor | None = None
    ) -> Tensor:
        """Apply the block.

        Args:
            x: (B, channels, H, W) features.
            emb: (B, emb_channels) timestep embedding.
            latent: (B, latent_dim) global latent code.
            expression: (B, expression_dim) expression code, or None to skip that FiLM.

        Returns:
            (B, out_channels, H', W'): H' = 2H when up-sampling, H / 2 when down-sampling.
        """
        # Speed (same result up to rounding): the GroupNorm affine and the FiLMs are all
        # per-channel maps, composed on the (B, C) codes and applied in one pass after a plain
        # normalisation; without autograd, SiLU and the sums reuse their input's memory.
        inplace = not torch.is_grad_enabled()
        h = F.silu(self.in_layers[0](x), inplace=inplace)
        if self.updown:
            h = self.h_upd(h)
            x = self.x_upd(x)
        h = self.in_layers[2](h)
        norm = self.out_layers[0]
        scale = norm.weight.float().expand(h.shape[0], -1)
        scale, shift = _compose_film(scale, norm.bias.float(), self.emb_layers(emb))
        scale, shift = _compose_film(scale, shift, self.cond_emb_layers(latent))
        if self.expr_emb_layers is not None and expression is not None:
            scale, shift = _compose_film(scale, shift, self.expr_emb_layers(expression))
        scale, shift = scale[..., None, None], shift[..., None, None]
        n = F.group_norm(h.float(), norm.num_groups, None, None, norm.eps)
        if inplace:
            h = n.mul_(scale).add_(shift).to(h.dtype)
        else:
            h = torch.addcmul(shift, n, scale).to(h.dtype)
        h = self.out_layers[3](self.out_layers[2](F.silu(h, inplace=inplace)))
        skip = self.skip_connection(x)
        return h.add_(skip) if inplace else skip + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, with a zero-initialised output projection.

    Heads are split before query/key/value (guided-diffusion's "legacy" order): the ``qkv``
    output's channels are ``heads`` groups of ``[q, k, v]``, each ``channels / heads`` wide.

    Args:
        channels: feature channels.
        heads: attention heads (used when ``head_channels`` is None).
        head_channels: channels per head; overrides ``heads`` when set.
        norm_groups: GroupNorm groups.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        head_channels: int | None = None,
        norm_groups: int = 32,
    ):
        super().__init__()
        if head_channels is not None:
            if channels % head_channels:
                raise ValueError(
                    f"{channels} channels do not split into {head_channels}-wide heads"
                )
            heads = channels // head_channels
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.channels = channels
        self.heads = heads
        self.norm = GroupNorm32(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))  # (B, heads * 3 * d, T)
        d = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * d, -1).split(d, dim=1)
        # softmax(q^T k / sqrt(d)) v over the T positions, per head.
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(a.transpose(1, 2).reshape(b, c, -1))
        return (flat + h).reshape(b, c, *spatial)


class FilmSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the conditioning codes."""

    def forward(  # type: ignore[override]
        self, x: Tensor, emb: Tensor, latent: Tensor, expression: Tensor | None = None
    ) -> Tensor:
        """(B, C, H, W) -> the last layer's output."""
        for layer in self:
            x = layer(x, emb, latent, expression) if isinstance(layer, ResBlock) else layer(x)
        return x


# ---------------------------------------------------------------------------------------------
# The UNet.


class DenoisingUNet(nn.Module):
    """The ADM UNet of DiffusionRig (guided-diffusion's ``UNetModel`` with latent FiLM).

    Args:
        config: sizes; see :class:`~emorig.diffusion.config.RigConfig`.
    """

    def __init__(self, config: RigConfig):
        super().__init__()
        self.config = config
        ch0 = config.channels
        emb_dim = config.time_embed_dim

        def resblock(cin: int, cout: int, *, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(
                cin,
                emb_dim,
                config.latent_dim,
                config.dropout,
                cout,
                expression_dim=config.expression_dim,
                norm_groups=config.norm_groups,
                up=up,
                down=down,
            )

        def attention(c: int) -> AttentionBlock:
            return AttentionBlock(c, config.heads, config.head_channels, config.norm_groups)

        self.time_embed = nn.Sequential(
            nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        levels = config.level_channels
        attn_ds = set(config.attention_downsample)
        ch = levels[0]
        self.input_blocks = nn.ModuleList(
            [FilmSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        )
        skip_channels = [ch]
        ds = 1
        for level, width in enumerate(levels):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, width)]
                ch = width
                if ds in attn_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(FilmSequential(*layers))
                skip_channels.append(ch)
            if level != len(levels) - 1:
                down = (
                    resblock(ch, ch, down=True)
                    if config.resblock_updown
                    else Downsample(ch, use_conv=True)
                )
                self.input_blocks.append(FilmSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = FilmSequential(resblock(ch, ch), attention(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(levels))):
            for i in range(config.num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), width)]
                ch = width
                if ds in attn_ds:
                    layers.append(attention(ch))
                if level and i == config.num_res_blocks:
                    layers.append(
                        resblock(ch, ch, up=True)
                        if config.resblock_updown
                        else Upsample(ch, use_conv=True)
                    )
                    ds //= 2
                self.output_blocks.append(FilmSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(config.norm_groups, ch),
            nn.SiLU(),
            _zero(nn.Conv2d(levels[0], config.out_channels, 3, padding=1)),
        )

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        latent: Tensor,
        expression: Tensor | None = None,
    ) -> Tensor:
        """Predict the noise of ``x``.

        Args:
            x: (B, in_channels, H, W) the noisy image in [-1, 1] (nominal) concatenated with
                the conditioning buffers; H and W divisible by ``2 ** (levels - 1)``.
            timesteps: (B,) training-scale timesteps (0..999), integer or float.
            latent: (B, latent_dim) global latent code.
            expression: (B, expression_dim) expression code, or None.

        Returns:
            (B, 3, H, W) predicted noise, in ``x``'s dtype.
        """
        emb = timestep_embedding(timesteps, self.config.channels)
        emb = self.time_embed(emb.to(self.time_embed[0].weight.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, latent, expression)
            skips.append(h)
        h = self.middle_block(h, emb, latent, expression)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, latent, expression)
        return self.out(h.to(x.dtype))

"""Sizes of the DiffusionRig denoiser and its global latent encoder, as one frozen dataclass.

:class:`RigConfig` is saved with the weights (``config.json``) so loading needs no flags.
The denoiser's input channel count is computed from the conditioning buffers it is given
(:attr:`RigConfig.condition_names`), never written down as a bare number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emorig.errors import EmorigError
from emorig.types import RenderBuffers

__all__ = [
    "BUFFER_CHANNELS",
    "CONDITION_METHODS",
    "DEFAULT_CONDITION_NAMES",
    "IMAGE_CHANNELS",
    "MODEL_PRESETS",
    "RigConfig",
    "condition_channels_for",
    "default_channel_mult",
    "model_preset",
]

#: Channels of each :class:`~emorig.types.RenderBuffers` field that can condition the model.
BUFFER_CHANNELS: Mapping[str, int] = {
    "rendered": 3,
    "normal": 3,
    "albedo": 3,
    "mask": 1,
    "depth": 1,
    "uv": 2,
    "shading": 3,
}

#: The buffers DiffusionRig concatenates to the noisy image, in order (RenderBuffers' default).
DEFAULT_CONDITION_NAMES: tuple[str, ...] = next(
    f.default for f in dataclasses.fields(RenderBuffers) if f.name == "condition_names"
)

#: Channels of the images the model denoises (RGB).
IMAGE_CHANNELS = 3

#: How a latent model's condition buffers (rendered at image size) reach latent resolution:
#: ``resize`` (area-averaged to the latent side, i.e. rendered at latent size with
#: supersampling), ``unshuffle`` (space-to-depth: every f x f block becomes f*f channels,
#: nothing lost; the default) or ``encode`` (each 3-channel buffer through the autoencoder).
#: ``docs/latent-diffusion.md`` has the measured comparison behind the default.
CONDITION_METHODS = ("resize", "unshuffle", "encode")


def condition_channels_for(names: Sequence[str]) -> int:
    """Channel count of the buffers ``names`` concatenated (DiffusionRig's three: 9).

    Raises:
        ValueError: a name that is not a conditioning buffer of :class:`RenderBuffers`.
    """
    unknown = [n for n in names if n not in BUFFER_CHANNELS]
    if unknown:
        raise ValueError(
            f"unknown conditioning buffer(s) {unknown}; choose from {list(BUFFER_CHANNELS)}"
        )
    return sum(BUFFER_CHANNELS[n] for n in names)


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """DiffusionRig's (guided-diffusion's) channel multipliers per UNet level for a size.

    Raises:
        ValueError: a size other than 512, 256, 128 or 64.
    """
    table: dict[int, tuple[float, ...]] = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
        # latent sides (f = 8 at 256 px), latent diffusion's multipliers
        32: (1, 2, 4, 4),
    }
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size {image_size}; give one")
    return table[image_size]


@dataclass(frozen=True)
class RigConfig:
    """Architecture of :class:`~emorig.diffusion.model.RigModel` (defaults = DiffusionRig).

    Attributes:
        image_size: side of the square training images in pixels. The network is fully
            convolutional; the size fixes where attention sits and must be divisible by
            ``2 ** (len(channel_mult) - 1)``.
        channels: base channel count of the UNet (``num_channels``).
        channel_mult: channel multiplier per resolution level, finest first; level ``i``
            works at ``image_size / 2**i`` with ``int(mult * channels)`` channels.
        num_res_blocks: residual blocks per level in the encoder half (decoder: one more).
        attention_resolutions: feature-map sides (pixels) where self-attention follows each
            residual block, e.g. ``(16,)``: attention at 16x16 for a 256 model.
        heads: attention heads (used when ``head_channels`` is None).
        head_channels: channels per attention head; overrides ``heads`` when set.
        dropout: dropout rate inside residual blocks (training only).
        resblock_updown: down/up-sample with residual blocks (True, DiffusionRig) instead of
            strided/nearest convolutions.
        norm_groups: GroupNorm groups (32 in DiffusionRig; smaller only for tiny test models).
        condition_names: :class:`~emorig.types.RenderBuffers` fields concatenated to the noisy
            image, in order.
        latent_dim: size of the global latent code (FiLM on every residual block).
        encoder_depth: ResNet depth of the global latent encoder, 18 or 50.
        encoder_width: stem channels of that ResNet (64 = torchvision's; smaller for tests).
        expression_input_dim: size of what the expression encoder reads (FLAME expression +
            jaw: E + 3; emotion features: the recogniser's D); 0 = the expression code is
            given directly (no encoder).
        expression_source: ``"code"`` or ``"emotion"``: which of the two the input is (kept
            so that editing feeds the model what it was trained on).
        expression_dim: size of an optional expression code applied as a third, zero-initialised
            FiLM on every residual block; 0 turns it off (plain DiffusionRig).
        autoencoder: None for a pixel model (DiffusionRig); for a latent model the
            autoencoder it denoises the latents of (``builtin-f4``, ``builtin-f8`` or a
            diffusers folder, :func:`emorig.diffusion.autoencoder.load_autoencoder`).
        autoencoder_factor, autoencoder_channels: that autoencoder's f and latent channels
            (so the UNet is built without loading it); 1 and 3 for pixel models.
        condition_method: how the buffers reach latent resolution
            (:data:`CONDITION_METHODS`); ignored by pixel models.

    ``image_size`` is always the side of the images (and of the rendered buffers); a latent
    model's UNet works at ``model_size = image_size / autoencoder_factor``, and
    ``channel_mult`` / ``attention_resolutions`` describe that UNet.
    """

    image_size: int = 256
    channels: int = 128
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    heads: int = 1
    head_channels: int | None = None
    dropout: float = 0.1
    resblock_updown: bool = True
    norm_groups: int = 32
    condition_names: tuple[str, ...] = DEFAULT_CONDITION_NAMES
    latent_dim: int = 64
    encoder_depth: int = 18
    encoder_width: int = 64
    expression_dim: int = 0
    expression_input_dim: int = 0
    expression_source: str = "code"
    autoencoder: str | None = None
    autoencoder_factor: int = 1
    autoencoder_channels: int = IMAGE_CHANNELS
    condition_method: str = "unshuffle"

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so the config stays hashable and comparable.
        for name in ("channel_mult", "condition_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        # Attention sides are a set; keep them finest first so equal configs compare equal.
        sides = tuple(sorted({int(r) for r in self.attention_resolutions}, reverse=True))
        object.__setattr__(self, "attention_resolutions", sides)
        if self.channels < 1 or self.num_res_blocks < 1 or not self.channel_mult:
            raise ValueError("channels, num_res_blocks and channel_mult must be positive")
        if any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be positive, got {self.channel_mult}")
        if self.autoencoder is None and (
            self.autoencoder_factor != 1 or self.autoencoder_channels != IMAGE_CHANNELS
        ):
            raise ValueError("a pixel model (autoencoder None) has factor 1 and 3 channels")
        if self.autoencoder_factor < 1 or self.image_size % self.autoencoder_factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the autoencoder's factor "
                f"{self.autoencoder_factor}"
            )
        if self.autoencoder_channels < 1:
            raise ValueError("autoencoder_channels must be positive")
        if self.condition_method not in CONDITION_METHODS:
            raise ValueError(
                f"condition_method must be one of {CONDITION_METHODS}, got "
                f"{self.condition_method!r}"
            )
        if self.latent and self.condition_method == "encode":
            bad = [n for n in self.condition_names if BUFFER_CHANNELS[n] != 3]
            if bad:
                raise ValueError(f"condition_method encode needs 3-channel buffers, not {bad}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.model_size % factor:
            raise ValueError(
                f"the UNet's side {self.model_size} is not divisible by {factor} "
                f"({len(self.channel_mult)} levels)"
            )
        sides = {self.model_size // 2**i for i in range(len(self.channel_mult))}
        stray = [r for r in self.attention_resolutions if r not in sides]
        if stray:
            raise ValueError(
                f"attention_resolutions {stray} are not UNet levels (sides: {sorted(sides)})"
            )
        if self.encoder_depth not in (18, 50):
            raise ValueError(f"encoder_depth must be 18 or 50, got {self.encoder_depth}")
        if self.latent_dim < 1 or self.expression_dim < 0 or self.expression_input_dim < 0:
            raise ValueError("latent_dim must be positive and expression sizes non-negative")
        if self.expression_source not in ("code", "emotion"):
            raise ValueError(
                f"expression_source must be code or emotion, got {self.expression_source!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        condition_channels_for(self.condition_names)  # validates the names

    # -- derived sizes ---------------------------------------------------------------------

    @property
    def latent(self) -> bool:
        """True for a latent model (it denoises an autoencoder's latents)."""
        return self.autoencoder is not None

    @property
    def model_size(self) -> int:
        """Side of what the UNet denoises: the image (pixel model) or its latents."""
        return self.image_size // self.autoencoder_factor

    @property
    def sample_channels(self) -> int:
        """Channels of what the UNet denoises: 3 (RGB) or the latent channels."""
        return self.autoencoder_channels

    @property
    def condition_channels(self) -> int:
        """Channels of the concatenated conditioning buffers at image size (DiffusionRig: 9)."""
        return condition_channels_for(self.condition_names)

    @property
    def model_condition_channels(self) -> int:
        """Channels of the condition as the UNet reads it (at ``model_size``)."""
        if not self.latent or self.condition_method == "resize":
            return self.condition_channels
        if self.condition_method == "unshuffle":
            return self.condition_channels * self.autoencoder_factor**2
        return len(self.condition_names) * self.autoencoder_channels

    @property
    def in_channels(self) -> int:
        """UNet input channels: the noisy sample plus the condition (pixel model: 12)."""
        return self.sample_channels + self.model_condition_channels

    @property
    def out_channels(self) -> int:
        """UNet output channels: the predicted noise (3 for a pixel model)."""
        return self.sample_channels

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding MLP (4 x channels)."""
        return 4 * self.channels

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each level, finest first (official: 128, 128, 256, 256, 512, 512)."""
        return tuple(int(m * self.channels) for m in self.channel_mult)

    @property
    def attention_downsample(self) -> tuple[int, ...]:
        """Down-sampling factors where attention sits (official: (16,))."""
        return tuple(self.model_size // r for r in self.attention_resolutions)

    @property
    def encoder_features(self) -> int:
        """Pooled feature size of the latent encoder's ResNet (512 for ResNet-18)."""
        expansion = 1 if self.encoder_depth == 18 else 4
        return 8 * self.encoder_width * expansion

    # -- presets and serialisation ---------------------------------------------------------

    @classmethod
    def official(cls, image_size: int = 256, **changes: Any) -> RigConfig:
        """DiffusionRig's ``model_and_diffusion_defaults`` (256 px: the released model).

        Args:
            image_size: 256 for the released model; 512, 128 and 64 pick upstream's
                channel multipliers for those sizes (attention stays at 16x16); other sizes
                need an explicit ``channel_mult``.
            **changes: any other field to override, e.g. ``expression_dim=64``.
        """
        fields: dict[str, Any] = {"image_size": image_size, **changes}
        if "channel_mult" not in fields:
            side = image_size // int(fields.get("autoencoder_factor", 1))
            fields["channel_mult"] = default_channel_mult(side)
        return cls(**fields)

    @classmethod
    def tiny(cls, **changes: Any) -> RigConfig:
        """A ~0.26M-parameter model for tests: 32x32, two levels, attention on the coarser one.

        Any field can be changed; without an explicit ``attention_resolutions`` attention
        follows ``image_size`` (half of it).
        """
        fields: dict[str, Any] = {
            "image_size": 32,
            "channels": 16,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "dropout": 0.0,
            "norm_groups": 8,
            "latent_dim": 8,
            "encoder_width": 4,
            **changes,
        }
        fields.setdefault("attention_resolutions", (fields["image_size"] // 2,))
        return cls(**fields)

    def replace(self, **changes: Any) -> RigConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists). A pixel model leaves out the latent
        fields, so its folders are written byte for byte as before latent mode existed."""
        out = dataclasses.asdict(self)
        if not self.latent:
            for name in LATENT_FIELDS:
                out.pop(name)
        # Integral multipliers are written as ints so files read like upstream's flags.
        out["channel_mult"] = [
            int(m) if float(m).is_integer() else float(m) for m in self.channel_mult
        ]
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RigConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown fields or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown RigConfig fields {unknown}")
        return cls(**dict(values))

    def describe(self) -> str:
        """One line for logs, e.g. ``256 px, 128 ch x (1, 1, 2, 2, 4, 4), ...``."""
        mult = ", ".join(f"{m:g}" for m in self.channel_mult)
        attn = ", ".join(str(r) for r in self.attention_resolutions)
        expr = f", expression {self.expression_dim}" if self.expression_dim else ""
        space = (
            f", latent {self.autoencoder_channels}x{self.model_size}x{self.model_size} of "
            f"{self.autoencoder} (condition: {self.condition_method})"
            if self.latent
            else ""
        )
        return (
            f"{self.image_size} px{space}, {self.channels} ch x ({mult}), {self.num_res_blocks} "
            f"res blocks, attention at {attn} px, latent {self.latent_dim} "
            f"(ResNet-{self.encoder_depth}), condition {'+'.join(self.condition_names)} "
            f"({self.in_channels} input channels){expr}"
        )


#: The fields of a latent model's space (absent from pixel models' config files).
LATENT_FIELDS = ("autoencoder", "autoencoder_factor", "autoencoder_channels", "condition_method")

#: Architecture presets by name; ``official`` is DiffusionRig's released configuration.
MODEL_PRESETS = ("official", "small", "tiny")


def model_preset(
    name: str,
    image_size: int,
    condition: tuple[str, ...],
    space: Mapping[str, Any] | None = None,
) -> RigConfig:
    """A :class:`RigConfig` for a preset at ``image_size``.

    ``official``: DiffusionRig's (~100M parameters at 256). ``small``: the same design with
    32 base channels, one block per level and a slim latent encoder, for CPU training at 64 px.
    ``tiny``: the test model (32 px).

    ``space``: for a latent model, ``autoencoder``, ``autoencoder_factor``,
    ``autoencoder_channels`` and ``condition_method``; the UNet's levels then follow the
    latent side (``image_size / f``).
    """
    space = dict(space or {})
    side = image_size // int(space.get("autoencoder_factor", 1))
    if name == "official":
        return RigConfig.official(image_size, condition_names=condition, **space)
    if name == "small":
        levels = max(2, int(math.log2(side // 8)) + 1)
        mult = (1, 2, 2, 4, 4, 4, 4)[:levels]
        return RigConfig(
            image_size=image_size,
            channels=32,
            channel_mult=mult,
            num_res_blocks=1,
            attention_resolutions=(16,) if side >= 32 else (),
            dropout=0.0,
            norm_groups=8,
            condition_names=condition,
            latent_dim=64,
            encoder_width=16,
            **space,
        )
    if name == "tiny":
        fields: dict[str, Any] = {"image_size": image_size, "condition_names": condition, **space}
        fields["attention_resolutions"] = (side // 2,)
        return RigConfig.tiny(**fields)
    raise EmorigError(f"unknown model preset '{name}'; choose {', '.join(MODEL_PRESETS)}")

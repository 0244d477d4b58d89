"""Autoencoders for latent DiffusionRig-EMO: diffusers' ``AutoencoderKL`` behind one small class.

Latent diffusion (Rombach et al. 2022) denoises an autoencoder's latents instead of pixels:
an image of side S becomes ``C x S/f x S/f`` latents (f = 4 or 8 balance quality and speed).
:class:`Autoencoder` turns images in [0, 1] into *scaled* latents and back::

    latents = (mode(q(z | 2 image - 1)) - shift_factor) * scaling_factor

(Stable Diffusion's VAE: scaling 0.18215, no shift), so latents have about unit variance as
the noise schedule expects. The posterior's mode is used, not a sample: encoding is
deterministic, which DDIM inversion and cached training latents rely on.

Where an autoencoder comes from (:func:`load_autoencoder`):

* ``builtin-f4`` / ``builtin-f8``: small ``AutoencoderKL`` models this project trains on
  SYNTHETIC renders of the built-in head (``emorig train autoencoder``); shipped in
  ``emorig/weights/autoencoder`` with the command that reproduces them. Fine for built-in-head
  data; not a model of photos.
* a folder in diffusers' layout: ``config.json`` (``_class_name: AutoencoderKL``) and
  ``diffusion_pytorch_model.safetensors`` (or ``.bin``), e.g. Stable Diffusion's VAE that a
  user downloaded under its licence; a whole pipeline folder with a ``vae/`` sub-folder works
  too. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from emorig.errors import AssetError, EmorigError

__all__ = [
    "BUILTIN_AUTOENCODERS",
    "Autoencoder",
    "autoencoder_folder",
    "autoencoder_key",
    "buffer_images",
    "load_autoencoder",
]

#: The shipped autoencoders by name: downsampling factor f.
BUILTIN_AUTOENCODERS = {"builtin-f4": 4, "builtin-f8": 8}

#: diffusers' weight file names, preferred first.
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

#: Where users get an autoencoder that is not built in.
OBTAIN = (
    "emorig's builtin-f4 / builtin-f8, 'emorig train autoencoder', or a diffusers "
    "AutoencoderKL folder downloaded under its licence, e.g. Stable Diffusion's vae/"
)


#: Value range of the 3-channel condition buffers an autoencoder may encode.
BUFFER_RANGES = {"rendered": (0.0, 1.0), "normal": (-1.0, 1.0), "albedo": (0.0, 1.0)}


def buffer_images(condition: Tensor, names: tuple[str, ...]) -> list[Tensor]:
    """The 3-channel buffers of a concatenated ``condition`` (B, C, H, W) as images in [0, 1]
    (normals: (n + 1) / 2), one (B, 3, H, W) per name, for an autoencoder to encode.

    Raises:
        EmorigError: a buffer that is not one of :data:`BUFFER_RANGES`.
    """
    out, start = [], 0
    for name in names:
        if name not in BUFFER_RANGES:
            raise EmorigError(
                f"the buffer '{name}' cannot be encoded by an autoencoder; encode only "
                f"{', '.join(BUFFER_RANGES)}"
            )
        lo, hi = BUFFER_RANGES[name]
        out.append(((condition[:, start : start + 3] - lo) / (hi - lo)).clamp(0, 1))
        start += 3
    return out


class Autoencoder(nn.Module):
    """A frozen diffusers ``AutoencoderKL`` seen from image space.

    Args:
        vae: the diffusers model.
        spec: what it was loaded from (``builtin-f8`` or a folder), kept for messages and
            model configs.

    Attributes:
        factor: f, the downsampling factor (2 ** (levels - 1)).
        latent_channels: C.
        scaling_factor, shift_factor: from the model's config (shift 0 when absent).
    """

    def __init__(self, vae: nn.Module, spec: str = ""):
        super().__init__()
        self.vae = vae
        self.spec = spec
        config = vae.config
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.latent_channels = int(config.latent_channels)
        self.scaling_factor = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(config, "shift_factor", 0.0) or 0.0)

    @property
    def synthetic(self) -> bool:
        """True for the shipped autoencoders (trained on built-in-head renders only)."""
        return self.spec in BUILTIN_AUTOENCODERS

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) images in [0, 1] -> (B, C, S/f, S/f) scaled latents (posterior mode)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(images.to(dtype) * 2 - 1).latent_dist
        return ((posterior.mode() - self.shift_factor) * self.scaling_factor).to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images, nominally [0, 1] (not clamped; differentiable)."""
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(dtype) / self.scaling_factor + self.shift_factor
        return ((self.vae.decode(z).sample + 1) / 2).to(latents.dtype)

    def describe(self) -> str:
        """One line, e.g. ``builtin-f8 (SYNTHETIC): f=8, 4 latent channels, scaling 0.93``."""
        label = " (SYNTHETIC: trained on built-in-head renders)" if self.synthetic else ""
        return (
            f"{self.spec}{label}: f={self.factor}, {self.latent_channels} latent channels, "
            f"scaling {self.scaling_factor:.4g}"
        )


def autoencoder_folder(spec: str) -> Path:
    """The diffusers folder ``spec`` names (a built-in name or a path), checked.

    Raises:
        AssetError: one line naming the missing or malformed file.
    """
    if spec in BUILTIN_AUTOENCODERS:
        folder = Path(str(resources.files("emorig.weights") / "autoencoder" / spec))
        if not (folder / "config.json").is_file():
            raise AssetError(
                str(folder / "config.json"),
                "the shipped autoencoder is missing from this installation",
                "a reinstall of emorig, or scripts/train_autoencoders.sh to remake it",
            )
        return folder
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise AssetError(str(folder), "no such autoencoder folder", OBTAIN)
    if folder.is_file():
        raise AssetError(str(folder), "an autoencoder is a folder (config.json + weights)", OBTAIN)
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"  # a whole Stable Diffusion pipeline folder
    config = folder / "config.json"
    if not config.is_file():
        raise AssetError(
            str(config), "missing: an autoencoder folder needs diffusers' config.json", OBTAIN
        )
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise AssetError(str(config), f"cannot be read as JSON ({err})", OBTAIN) from None
    kind = values.get("_class_name") if isinstance(values, dict) else None
    if kind != "AutoencoderKL":
        raise AssetError(
            str(config),
            f"describes a {kind or 'non-diffusers model'}, not an AutoencoderKL",
            OBTAIN,
        )
    if not any((folder / name).is_file() for name in WEIGHT_NAMES):
        raise AssetError(
            str(folder / WEIGHT_NAMES[0]),
            "missing: the autoencoder's weights are not there",
            OBTAIN,
        )
    return folder


@lru_cache(maxsize=4)
def _load_cached(spec: str) -> Autoencoder:
    from diffusers import AutoencoderKL

    folder = autoencoder_folder(spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae = AutoencoderKL.from_pretrained(
                str(folder), local_files_only=True, torch_dtype=torch.float32
            )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AssetError(
            str(folder), f"cannot be loaded as an AutoencoderKL ({first})", OBTAIN
        ) from None
    vae.requires_grad_(False)
    return Autoencoder(vae.eval(), spec).eval()


def autoencoder_key(spec: str) -> str:
    """``spec`` as models record it: a built-in name as it is, a folder as its absolute path."""
    return spec if spec in BUILTIN_AUTOENCODERS else str(Path(spec).expanduser().resolve())


def load_autoencoder(spec: str, device: torch.device | str = "cpu") -> Autoencoder:
    """The autoencoder ``spec`` names (``builtin-f4``, ``builtin-f8`` or a diffusers folder),
    frozen, in eval mode, on ``device``. Loaded once per process and spec (a copy per device).

    Raises:
        AssetError: missing or malformed folder (one line naming the file).
    """
    key = autoencoder_key(spec)
    model = _load_cached(key)
    device = torch.device(device)
    if next(model.parameters()).device != device:
        return _on_device(key, str(device))
    return model


@lru_cache(maxsize=4)
def _on_device(key: str, device: str) -> Autoencoder:
    import copy

    return copy.deepcopy(_load_cached(key)).to(device)

"""DiffusionRig: a diffusion model conditioned on FLAME render buffers and a global latent.

* :mod:`~emorig.diffusion.config` -- :class:`RigConfig`, the sizes saved with the weights;
* :mod:`~emorig.diffusion.unet` -- the ADM denoising UNet with latent (and expression) FiLM;
* :mod:`~emorig.diffusion.model` -- :class:`RigModel`: UNet + global latent encoder;
* :mod:`~emorig.diffusion.schedule` -- noise schedule, forward process, P2-weighted loss;
* :mod:`~emorig.diffusion.sampling` -- DDIM sampling and inversion loops;
* :mod:`~emorig.diffusion.official` -- DiffusionRig's checkpoint and ``mean_shape.pkl``;
* :mod:`~emorig.diffusion.pretrained` -- our folder format (config.json + safetensors).

Images are in [-1, 1] inside this package; conditioning buffers are as rendered.
"""

from emorig.diffusion.config import RigConfig, condition_channels_for
from emorig.diffusion.model import RigModel, build_latent_encoder, with_expression
from emorig.diffusion.official import (
    config_from_official,
    convert_official,
    load_mean_shape,
    load_official,
    read_official,
)
from emorig.diffusion.pretrained import load_pretrained, save_pretrained
from emorig.diffusion.sampling import ddim_invert, ddim_sample, ddim_step
from emorig.diffusion.schedule import (
    NoiseSchedule,
    epsilon_loss,
    space_timesteps,
    to_diffusers_ddim,
)
from emorig.diffusion.unet import DenoisingUNet

__all__ = [
    "DenoisingUNet",
    "NoiseSchedule",
    "RigConfig",
    "RigModel",
    "build_latent_encoder",
    "condition_channels_for",
    "config_from_official",
    "convert_official",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "epsilon_loss",
    "load_mean_shape",
    "load_official",
    "load_pretrained",
    "read_official",
    "save_pretrained",
    "space_timesteps",
    "to_diffusers_ddim",
    "with_expression",
]

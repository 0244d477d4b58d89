"""The diffusion pipeline: the one place that knows model space.

Everything outside this module speaks images: (B, 3, S, S) RGB in [0, 1], and condition
buffers rendered at S. The denoiser works in *model space*: DiffusionRig's pixels scaled to
[-1, 1] (``x = 2 image - 1``), or, for a latent model (``RigConfig.autoencoder``), an
autoencoder's scaled latents (:mod:`emorig.diffusion.autoencoder`): encode on the way in,
decode on the way out, and the buffers brought to latent size
(:meth:`RigPipeline.model_condition`). Nothing that edits, evaluates or trains has to know
which. :class:`RigPipeline` owns those conversions, the shape
of the noise, sampling (DDIM from noise to images), inversion (DDIM from images to noise), the
global latent of an image, where edits start (:meth:`RigPipeline.edit_start`), the partial
re-noising of an already edited image (:meth:`RigPipeline.refine`, SDEdit), the clean
image predicted at a training step, and the noise of a training step.

Sampling follows DiffusionRig: the linear 1000-step schedule, DDIM respaced (``"ddim20"``),
eta 0, clipping the predicted clean image except when starting from an inversion (then the
unedited path retraces the inversion). Latents are never clipped (they have no fixed range).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.diffusion.model import RigModel
from emorig.diffusion.sampling import ddim_invert, ddim_sample, resolve_timesteps
from emorig.diffusion.schedule import NoiseSchedule

__all__ = ["Denoiser", "RigPipeline"]

#: ``denoise(x_t, t) -> eps`` in model space.
Denoiser = Callable[[Tensor, Tensor], Tensor]


class RigPipeline:
    """A :class:`RigModel` with its noise schedule, seen from image space.

    Args:
        model: the diffusion model (its device is used everywhere).
        schedule: the noise schedule; default DiffusionRig's linear 1000 steps.
        autoencoder: a latent model's :class:`~emorig.diffusion.autoencoder.Autoencoder`;
            default: loaded from ``model.config.autoencoder`` (pixel models need none).

    Raises:
        AssetError: a latent model whose autoencoder cannot be found or read.
        EmorigError: an autoencoder whose factor or channels differ from the model's.
    """

    def __init__(self, model: RigModel, schedule: NoiseSchedule | None = None, autoencoder=None):
        from emorig.errors import EmorigError

        self.model = model
        self.schedule = schedule if schedule is not None else NoiseSchedule.linear()
        config = model.config
        self.autoencoder = None
        if config.latent:
            if autoencoder is None:
                from emorig.diffusion.autoencoder import load_autoencoder

                autoencoder = load_autoencoder(str(config.autoencoder), self.device)
            if (autoencoder.factor, autoencoder.latent_channels) != (
                config.autoencoder_factor,
                config.autoencoder_channels,
            ):
                raise EmorigError(
                    f"the model was trained on latents with f={config.autoencoder_factor} and "
                    f"{config.autoencoder_channels} channels; {autoencoder.spec} gives "
                    f"f={autoencoder.factor} and {autoencoder.latent_channels}"
                )
            self.autoencoder = autoencoder.to(self.device)

    @property
    def latent(self) -> bool:
        """True when the model denoises an autoencoder's latents."""
        return self.autoencoder is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        """S: the side of the images the model edits."""
        return int(self.model.config.image_size)

    # -- model space ---------------------------------------------------------------------------

    def to_model(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) images in [0, 1] -> model space (latents: no gradient to images)."""
        if self.autoencoder is None:
            return images * 2 - 1
        with torch.no_grad():
            return self.autoencoder.encode(images.to(self.device))

    def decode(self, x: Tensor) -> Tensor:
        """Model space -> images, not clamped; differentiable (the emotion loss reads it)."""
        if self.autoencoder is None:
            return (x + 1) / 2
        return self.autoencoder.decode(x)

    def to_images(self, x: Tensor) -> Tensor:
        """Model space -> (B, 3, S, S) images in [0, 1] (clamped)."""
        with torch.no_grad():
            return self.decode(x).clamp(0, 1)

    def model_shape(self, batch: int) -> tuple[int, int, int, int]:
        """The shape of ``batch`` samples in model space (and of their noise)."""
        c = self.model.config
        return (batch, c.sample_channels, c.model_size, c.model_size)

    def model_condition(self, condition: Tensor) -> Tensor:
        """(B, C, S, S) condition buffers rendered at image size -> what the UNet reads.

        Pixel models read them as they are. Latent models (``condition_method``): ``resize``
        area-averages them to the latent side; ``unshuffle`` moves every f x f block into
        channels; ``encode`` passes each 3-channel buffer through the autoencoder.
        """
        c = self.model.config
        if not c.latent:
            return condition
        if condition.shape[-1] != c.image_size or condition.shape[-2] != c.image_size:
            raise ValueError(
                f"condition buffers must be rendered at {c.image_size} px, got "
                f"{tuple(condition.shape[-2:])}"
            )
        if c.condition_method == "resize":
            return F.interpolate(condition, size=(c.model_size, c.model_size), mode="area")
        if c.condition_method == "unshuffle":
            return F.pixel_unshuffle(condition, c.autoencoder_factor)
        from emorig.diffusion.autoencoder import buffer_images

        assert self.autoencoder is not None
        with torch.no_grad():
            parts = buffer_images(condition, c.condition_names)
            return torch.cat([self.autoencoder.encode(p) for p in parts], dim=1)

    def noise(self, batch: int, generator: torch.Generator) -> Tensor:
        """(batch, ...) standard normal noise in model space, drawn on the CPU from
        ``generator`` (reproducible on every device), on the model's device."""
        return torch.randn(self.model_shape(batch), generator=generator).to(self.device)

    def fixed_noise(self, batch: int, seed: int) -> Tensor:
        """One noise image from ``seed``, shared by every item of the batch (DiffusionRig's
        edits all start from the same noise)."""
        g = torch.Generator().manual_seed(seed)
        return self.noise(1, g).expand(batch, -1, -1, -1)

    # -- the networks ----------------------------------------------------------------------------

    @staticmethod
    def encoder_input(images: Tensor) -> Tensor:
        """What the global latent encoder reads: the images in [-1, 1] (pixel or latent
        model alike)."""
        return images * 2 - 1

    def encode_latent(self, images: Tensor) -> Tensor:
        """(B, latent_dim) the global latent of (B, 3, S, S) images in [0, 1]."""
        return self.model.encode(self.encoder_input(images.to(self.device)))

    def denoiser(
        self, condition: Tensor, latent: Tensor, expression: Tensor | None = None
    ) -> Denoiser:
        """The model as ``denoise(x_t, t)`` for fixed condition buffers (at image size; brought
        to the model's size once here), latent and expression input."""
        cond = self.model_condition(condition)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            return self.model(x, t, cond, latent=latent, expression=expression)

        return denoise

    def sample(
        self,
        noise: Tensor,
        condition: Tensor,
        latent: Tensor,
        expression: Tensor | None = None,
        *,
        timesteps: str = "ddim20",
        clip: bool = True,
        progress: bool = False,
    ) -> Tensor:
        """DDIM from ``noise`` (model space) to images in [0, 1].

        Args:
            noise: (B, ...) starting noise (:meth:`fixed_noise`, :meth:`invert`).
            condition: (B, C, S, S) condition buffers (``RigModel.condition_tensor``).
            latent: (B, latent_dim) global latents (:meth:`encode_latent`).
            expression: (B, D) expression-encoder input of DiffusionRig-EMO models, or None.
            timesteps: DDIM respacing, e.g. ``"ddim20"``.
            clip: clip the predicted clean image at every step.
            progress: show a progress bar.
        """
        x = ddim_sample(
            self.denoiser(condition, latent, expression),
            noise,
            self.schedule,
            timesteps,
            clip_denoised=clip and not self.latent,
            progress=progress,
        )
        return self.to_images(x)

    def invert(
        self,
        images: Tensor,
        condition: Tensor,
        latent: Tensor,
        expression: Tensor | None = None,
        *,
        timesteps: str = "ddim20",
        iterations: int = 2,
        progress: bool = False,
    ) -> Tensor:
        """DDIM inversion: the noise (model space) from which :meth:`sample` (with
        ``clip=False``) retraces ``images`` (B, 3, S, S) in [0, 1]; ``iterations``
        fixed-point refinements per step."""
        return ddim_invert(
            self.denoiser(condition, latent, expression),
            self.to_model(images.to(self.device)),
            self.schedule,
            timesteps,
            fixed_point_iterations=iterations,
            progress=progress,
        )

    def edit_start(
        self,
        images: Tensor,
        condition: Tensor,
        latent: Tensor,
        expression: Tensor | None = None,
        *,
        invert: bool = False,
        seed: int = 0,
        timesteps: str = "ddim20",
        iterations: int = 2,
        progress: bool = False,
    ) -> Tensor:
        """Where edits of ``images`` start: their DDIM inversion under their own condition
        (``invert``; then sample with ``clip=False``), or DiffusionRig's one fixed noise from
        ``seed``. An edit is then :meth:`sample` from this noise under the edited condition."""
        if invert:
            return self.invert(
                images,
                condition,
                latent,
                expression,
                timesteps=timesteps,
                iterations=iterations,
                progress=progress,
            )
        return self.fixed_noise(images.shape[0], seed)

    def refine(
        self,
        images: Tensor,
        condition: Tensor,
        latent: Tensor,
        expression: Tensor | None = None,
        *,
        strength: float = 0.5,
        timesteps: str = "ddim20",
        invert: bool = False,
        seed: int = 0,
        iterations: int = 2,
        progress: bool = False,
    ) -> Tensor:
        """SDEdit (Meng et al. 2022): take ``images`` (B, 3, S, S) in [0, 1] part of the way
        to noise and denoise them under ``condition``.

        ``strength`` is the share of the respaced DDIM steps that is re-run: 0 returns the
        images, 1 starts from pure noise. The noise level is reached by the forward process
        with noise from ``seed`` (clipped sampling), or with ``invert`` by DDIM inversion of
        the images under the same condition (unclipped sampling), which keeps more of the
        input's detail.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {strength}")
        images = images.to(self.device)
        steps = resolve_timesteps(self.schedule, timesteps)
        n = round(strength * len(steps))
        if n == 0:
            return images.clamp(0, 1)
        x0 = self.to_model(images)
        denoise = self.denoiser(condition, latent, expression)
        if invert:
            x = ddim_invert(
                denoise,
                x0,
                self.schedule,
                steps,
                fixed_point_iterations=iterations,
                progress=progress,
                n_steps=n,
            )
        else:
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(x0.shape, generator=g).to(x0)
            t = torch.full((x0.shape[0],), steps[n - 1], dtype=torch.long, device=x0.device)
            x = self.schedule.q_sample(x0, t, noise)
        x = ddim_sample(
            denoise,
            x,
            self.schedule,
            steps,
            clip_denoised=not invert and not self.latent,
            progress=progress,
            n_steps=n,
        )
        return self.to_images(x)

    # -- training --------------------------------------------------------------------------------

    def training_inputs(
        self, images: Tensor, generator: torch.Generator, x0: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One training step's ``(x0, t, noise, x_t)`` for images in [0, 1]: timesteps drawn
        uniformly, then the noise, both from ``generator`` (CPU), on the images' device.
        ``x0``: the images already in model space (e.g. cached latents)."""
        x0 = self.to_model(images) if x0 is None else x0.to(images.device)
        t = self.schedule.sample_timesteps(x0.shape[0], generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return x0, t, noise, self.schedule.q_sample(x0, t, noise)

    def predicted_images(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The clean images (in [0, 1]) that the noise estimate ``eps`` at ``(x_t, t)``
        implies, differentiable (the emotion-consistency loss reads them; a latent model's
        are decoded through the frozen autoencoder, gradients flowing to ``eps``)."""
        x0 = self.schedule.predict_x0(x_t, t, eps.float())
        if self.autoencoder is None:
            return (x0.clamp(-1, 1) + 1) / 2
        return self.decode(x0).clamp(0, 1)

    def signal_fraction(self, t: Tensor, like: Tensor) -> Tensor:
        """(B,) ᾱ(t): the share of signal in ``x_t``, shaped and typed like ``like``."""
        return self.schedule.alpha_bar(t, like).reshape(-1).to(like.dtype)

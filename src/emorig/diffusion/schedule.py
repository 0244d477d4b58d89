"""The Gaussian diffusion of DiffusionRig: noise schedule, forward process, training loss.

Notation (Ho et al. 2020): ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``, and the forward
process ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` (their Eq. 4). Timesteps
are integers ``0..T-1`` (T = 1000); ``t = 0`` is already one noising step.

The schedule's tables are float64 on the CPU, as in guided-diffusion; functions pick values
for a batch of timesteps and return them in the dtype and on the device of the tensors they
are combined with, so everything runs wherever the inputs live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule",
    "epsilon_loss",
    "linear_betas",
    "space_timesteps",
    "to_diffusers_ddim",
]


def linear_betas(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    """Ho et al.'s linear schedule, rescaled so other step counts keep its shape.

    The endpoints are multiplied by ``1000 / num_timesteps`` (guided-diffusion's rule), so
    ``num_timesteps = 1000`` gives exactly ``linspace(1e-4, 0.02, 1000)``.

    Returns:
        (num_timesteps,) float64 betas.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be positive, got {num_timesteps}")
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, spacing: str | Sequence[int]) -> tuple[int, ...]:
    """Pick a subset of timesteps to sample with (guided-diffusion's respacing rule).

    Args:
        num_timesteps: steps of the trained process (1000).
        spacing: ``"ddimN"`` for the DDIM paper's fixed stride (the smallest stride giving
            exactly N steps from 0: ``"ddim20"`` -> 0, 50, ..., 950); or section counts
            (``"10,15,20"`` or a sequence): the process is cut into equal sections and each
            is sampled with that many evenly spaced steps, rounded.

    Returns:
        Sorted (ascending) original timesteps.

    Raises:
        ValueError: a count that cannot be realised.
    """
    if isinstance(spacing, str):
        if spacing.startswith("ddim"):
            desired = int(spacing[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return tuple(range(0, num_timesteps, stride))
            if desired == num_timesteps:
                return tuple(range(num_timesteps))
            raise ValueError(f"cannot make exactly {desired} steps with an integer stride")
        spacing = [int(s) for s in spacing.split(",")]
    counts = list(spacing)
    if not counts:
        raise ValueError("spacing needs at least one section")
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: set[int] = set()
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        steps.update(start + round(j * stride) for j in range(count))
        start += size
    return tuple(sorted(steps))


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete Gaussian diffusion: betas and their cumulative products.

    Attributes:
        betas: (T,) float64 noise variances per step, in (0, 1].
        alphas_cumprod: (T,) float64 ``alpha_bar_t``, decreasing from ~1 towards 0.
    """

    betas: Tensor
    alphas_cumprod: Tensor

    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float]) -> NoiseSchedule:
        """Build from (T,) betas (any float dtype; stored as float64 on the CPU)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D sequence in (0, 1]")
        return cls(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def linear(cls, num_timesteps: int = 1000) -> NoiseSchedule:
        """DiffusionRig's schedule: 1000 steps, beta linear from 1e-4 to 0.02."""
        return cls.from_betas(linear_betas(num_timesteps))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    # -- per-timestep values -------------------------------------------------------------

    def _pick(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` as (B, 1, ..., 1) in ``like``'s dtype and device (rank of ``like``)."""
        t = torch.as_tensor(t)
        if t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"t must have shape ({like.shape[0]},), got {tuple(t.shape)}")
        if t.dtype.is_floating_point:
            raise TypeError("t must hold integer timesteps")
        values = table[t.detach().cpu().long()]
        values = values.to(dtype=like.dtype).to(like.device)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """``alpha_bar_t`` for a batch of timesteps, shaped to broadcast against ``like``.

        Args:
            t: (B,) integer timesteps.
            like: a (B, ...) tensor giving the rank, dtype and device of the result.

        Returns:
            (B, 1, ..., 1).
        """
        return self._pick(self.alphas_cumprod, t, like)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` as (B,) float64."""
        a = self.alphas_cumprod[torch.as_tensor(t).detach().cpu().long()]
        return 1.0 / (1.0 - a) - 1.0

    def p2_weight(self, t: Tensor, k: float = 1.0, gamma: float = 1.0) -> Tensor:
        """Perception-prioritised weights ``1 / (k + SNR(t)) ** gamma`` (Choi et al. 2022).

        ``gamma = 0`` gives ones (the plain loss).

        Args:
            t: (B,) integer timesteps.
            k: offset keeping the weight finite at high SNR.
            gamma: exponent; larger values down-weight the nearly clean steps more.

        Returns:
            (B,) float32 on ``t``'s device.
        """
        weight = 1.0 / (k + self.snr(t)) ** gamma
        return weight.to(dtype=torch.float32, device=torch.as_tensor(t).device)

    # -- forward process and reparametrisations --------------------------------------------

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Noise clean data to step ``t``: ``sqrt(a) x_0 + sqrt(1 - a) eps`` (Ho et al. Eq. 4).

        Args:
            x_start: (B, ...) clean data (images in [-1, 1]).
            t: (B,) integer timesteps.
            noise: standard normal noise shaped like ``x_start``.

        Returns:
            (B, ...) ``x_t``.
        """
        if noise.shape != x_start.shape:
            raise ValueError(f"noise {tuple(noise.shape)} != x_start {tuple(x_start.shape)}")
        a = self.alpha_bar(t, x_start)
        return a.sqrt() * x_start + (1 - a).sqrt() * noise

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Clean data implied by a noise prediction: ``(x_t - sqrt(1 - a) eps) / sqrt(a)``.

        Differentiable in ``eps`` (used by losses on the predicted image).

        Args:
            x_t: (B, ...) noisy data at step ``t``.
            t: (B,) integer timesteps.
            eps: predicted noise shaped like ``x_t``.

        Returns:
            (B, ...) predicted ``x_0`` (not clipped).
        """
        a = self.alpha_bar(t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def predict_eps(self, x_t: Tensor, t: Tensor, x_start: Tensor) -> Tensor:
        """The noise that takes ``x_start`` to ``x_t``: ``(x_t - sqrt(a) x_0) / sqrt(1 - a)``."""
        a = self.alpha_bar(t, x_t)
        return (x_t - a.sqrt() * x_start) / (1 - a).sqrt()

    def sample_timesteps(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Uniformly drawn training timesteps, (B,) int64."""
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)
        return t.to(device) if device is not None else t


def epsilon_loss(
    eps_pred: Tensor,
    noise: Tensor,
    t: Tensor,
    schedule: NoiseSchedule,
    *,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
) -> Tensor:
    """DiffusionRig's training loss per sample: P2-weighted mean squared noise error.

    ``loss_i = w(t_i) * mean((eps_i - eps_pred_i) ** 2)`` with ``w = 1 / (k + SNR) ** gamma``
    (``p2_gamma = 0``: the plain epsilon MSE of Ho et al.'s simplified objective).

    Args:
        eps_pred: (B, C, H, W) predicted noise.
        noise: the true noise, same shape.
        t: (B,) integer timesteps the noise was added at.
        schedule: the noise schedule.
        p2_k: P2 offset k.
        p2_gamma: P2 exponent gamma.

    Returns:
        (B,) losses; average them for the batch loss.
    """
    if eps_pred.shape != noise.shape:
        raise ValueError(f"eps_pred {tuple(eps_pred.shape)} != noise {tuple(noise.shape)}")
    mse = (noise - eps_pred).pow(2).flatten(1).mean(dim=1)
    weight = schedule.p2_weight(t, p2_k, p2_gamma).to(dtype=mse.dtype, device=mse.device)
    return weight * mse


def to_diffusers_ddim(schedule: NoiseSchedule, *, clip_denoised: bool = True) -> Any:
    """An equivalent ``diffusers.DDIMScheduler`` (optional dependency), for interoperability.

    ``set_timesteps(20)`` on it gives DiffusionRig's ``ddim20`` steps (950, 900, ..., 0) with
    ``alpha_bar = 1`` after the last step; pass ``use_clipped_model_output=True`` to ``step``
    to re-derive the noise after clipping as :func:`~emorig.diffusion.sampling.ddim_sample`
    does. Its tables are float32, so values differ from ours in the 7th digit.
    """
    try:
        from diffusers import DDIMScheduler
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("to_diffusers_ddim needs the 'diffusers' package") from None
    return DDIMScheduler(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.numpy(),
        clip_sample=clip_denoised,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )

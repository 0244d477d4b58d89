"""Deterministic DDIM sampling and inversion (Song et al. 2021, Eq. 12 with sigma = 0).

Both loops walk the same respaced timesteps ``t_0 < t_1 < ... < t_{N-1}`` (``"ddim20"``:
0, 50, ..., 950), with ``alpha_bar`` read from the full schedule and ``alpha_bar = 1`` below
``t_0``. One DDIM step moves ``x`` from noise level ``a`` to ``a'`` along the predicted noise::

    x0  = (x - sqrt(1 - a) eps) / sqrt(a)
    x'  = sqrt(a') x0 + sqrt(1 - a') eps

Sampling step ``i`` goes from ``alpha_bar(t_i)`` down to ``alpha_bar(t_{i-1})`` with
``eps = model(x, t_i)``; inversion step ``i`` goes back up from ``alpha_bar(t_{i-1})`` to
``alpha_bar(t_i)`` with the same model timestep ``t_i``. Each inversion step is therefore
undone by the sampling step with the same index, up to how much the prediction changes
between the two noise levels: invert-then-sample reproduces the input closely when the
steps are small.

The loops are written out; ``denoise(x_t, t)`` is any callable returning the predicted noise,
e.g. ``lambda x, t: model(x, t, buffers, latent=z)``. Nothing here turns off autograd: call
the loops under ``torch.no_grad()`` for inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from emorig.diffusion.schedule import NoiseSchedule, space_timesteps

__all__ = ["Denoiser", "ddim_invert", "ddim_sample", "ddim_step", "resolve_timesteps"]

#: ``denoise(x_t (B, C, H, W), t (B,) int64) -> eps (B, C, H, W)``.
Denoiser = Callable[[Tensor, Tensor], Tensor]


def resolve_timesteps(schedule: NoiseSchedule, timesteps: str | Sequence[int]) -> list[int]:
    """Sorted, checked timesteps: ``"ddim20"``-style respacing or explicit integers."""
    if isinstance(timesteps, str):
        steps = list(space_timesteps(schedule.num_timesteps, timesteps))
    else:
        steps = sorted({int(t) for t in timesteps})
    if not steps or steps[0] < 0 or steps[-1] >= schedule.num_timesteps:
        raise ValueError(f"timesteps must lie in [0, {schedule.num_timesteps}), got {steps}")
    return steps


def ddim_step(
    x: Tensor, eps: Tensor, alpha_from: float, alpha_to: float, *, clip_denoised: bool = False
) -> tuple[Tensor, Tensor]:
    """Move ``x`` from noise level ``alpha_from`` to ``alpha_to`` along ``eps`` (DDIM, eta 0).

    Args:
        x: (B, C, H, W) sample at ``alpha_bar = alpha_from``.
        eps: (B, C, H, W) predicted noise of ``x``.
        alpha_from: ``alpha_bar`` of ``x``, in (0, 1].
        alpha_to: target ``alpha_bar``, in [0, 1].
        clip_denoised: clip the predicted clean image to [-1, 1] and re-derive the noise
            from it (guided-diffusion's ``clip_denoised``); a clean ``x`` (``alpha_from``
            1) is left as it is.

    Returns:
        (x at ``alpha_to``, predicted x0), both (B, C, H, W).
    """
    x0 = (x - (1.0 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    if clip_denoised and alpha_from < 1.0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - alpha_from**0.5 * x0) / (1.0 - alpha_from) ** 0.5
    return alpha_to**0.5 * x0 + (1.0 - alpha_to) ** 0.5 * eps, x0


def _count(n_steps: int | None, steps: list[int]) -> int:
    """How many of ``steps`` a partial loop runs (all of them for None)."""
    if n_steps is None:
        return len(steps)
    if not 1 <= n_steps <= len(steps):
        raise ValueError(f"n_steps must lie in [1, {len(steps)}], got {n_steps}")
    return n_steps


def _progress(indices: Iterable[int], enabled: bool, what: str) -> Iterable[int]:
    if not enabled:
        return indices
    from tqdm.auto import tqdm

    return tqdm(list(indices), desc=what, leave=False)


def ddim_sample(
    denoise: Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule,
    timesteps: str | Sequence[int] = "ddim20",
    *,
    clip_denoised: bool = True,
    progress: bool = False,
    n_steps: int | None = None,
) -> Tensor:
    """Generate images from noise with deterministic DDIM (eta = 0).

    Args:
        denoise: the noise predictor (see :data:`Denoiser`).
        noise: (B, C, H, W) the starting sample at ``t_{N-1}`` (standard normal noise, or the
            output of :func:`ddim_invert`).
        schedule: the training noise schedule.
        timesteps: ``"ddimN"`` / section counts (see
            :func:`~emorig.diffusion.schedule.space_timesteps`) or explicit timesteps.
        clip_denoised: clip each predicted clean image to [-1, 1] (DiffusionRig's inference
            does).
        progress: show a tqdm bar.
        n_steps: run only the last ``n_steps`` steps (``noise`` is then the sample at
            ``t_{n_steps-1}``: a partly noised image, SDEdit); None: all of them.

    Returns:
        (B, C, H, W) samples, nominally in [-1, 1], dtype and device of ``noise``.
    """
    steps = resolve_timesteps(schedule, timesteps)
    ac = schedule.alphas_cumprod.tolist()
    x = noise
    for i in _progress(reversed(range(_count(n_steps, steps))), progress, "DDIM sampling"):
        t = torch.full((x.shape[0],), steps[i], dtype=torch.long, device=x.device)
        alpha_prev = ac[steps[i - 1]] if i > 0 else 1.0
        x, _ = ddim_step(x, denoise(x, t), ac[steps[i]], alpha_prev, clip_denoised=clip_denoised)
    return x


def ddim_invert(
    denoise: Denoiser,
    x_start: Tensor,
    schedule: NoiseSchedule,
    timesteps: str | Sequence[int] = "ddim20",
    *,
    fixed_point_iterations: int = 0,
    progress: bool = False,
    n_steps: int | None = None,
) -> Tensor:
    """Deterministic DDIM inversion: the noise that :func:`ddim_sample` maps back to the image.

    Walks the sampling steps in reverse order (see the module docstring); nothing is clipped.
    Plain inversion predicts the noise at the lower noise level; sampling will predict it at
    the higher one. ``fixed_point_iterations`` re-predicts it at the step's own result and
    redoes the step, converging to the point the sampling step maps back exactly (Pan et al.
    2023, "Effective Real Image Editing with Accelerated Iterative Diffusion Inversion"), at
    one extra model call per iteration and step.

    Args:
        denoise: the noise predictor, with the same conditioning the sampling will use.
        x_start: (B, C, H, W) clean images in [-1, 1].
        schedule: the training noise schedule.
        timesteps: the same steps that will be used for sampling.
        fixed_point_iterations: refinements per step (0: plain DDIM inversion).
        progress: show a tqdm bar.
        n_steps: stop after the first ``n_steps`` steps (the result is then the sample at
            ``t_{n_steps-1}``, for :func:`ddim_sample` with the same ``n_steps``); None: all.

    Returns:
        (B, C, H, W) the sample at ``t_{N-1}``, dtype and device of ``x_start``. Sample it
        back with ``clip_denoised=False`` for a faithful round trip: clipping changes the path
        whenever a predicted image leaves [-1, 1].
    """
    if fixed_point_iterations < 0:
        raise ValueError("fixed_point_iterations must be >= 0")
    steps = resolve_timesteps(schedule, timesteps)
    ac = schedule.alphas_cumprod.tolist()
    x = x_start
    for i in _progress(range(_count(n_steps, steps)), progress, "DDIM inversion"):
        t = torch.full((x.shape[0],), steps[i], dtype=torch.long, device=x.device)
        alpha_prev = ac[steps[i - 1]] if i > 0 else 1.0
        start = x
        x, _ = ddim_step(start, denoise(start, t), alpha_prev, ac[steps[i]])
        for _ in range(fixed_point_iterations):
            x, _ = ddim_step(start, denoise(x, t), alpha_prev, ac[steps[i]])
    return x

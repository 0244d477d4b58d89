"""DDIM sampling and inversion loops."""

from __future__ import annotations

import pytest
import torch

from emorig.diffusion import (
    NoiseSchedule,
    RigConfig,
    RigModel,
    ddim_invert,
    ddim_sample,
    ddim_step,
    to_diffusers_ddim,
)

SCHEDULE = NoiseSchedule.linear()


def _oracle(x_start: torch.Tensor):
    """A perfect denoiser for a single known image: the noise that explains x_t exactly."""
    return lambda x, t: SCHEDULE.predict_eps(x, t, x_start)


def test_sampling_with_a_perfect_denoiser_returns_the_image():
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1).double()
    noise = torch.randn(2, 3, 8, 8, generator=g).double()
    for steps in ("ddim20", "ddim4", [0, 10, 999]):
        out = ddim_sample(_oracle(x0), noise, SCHEDULE, steps)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, x0, atol=1e-9, rtol=0)


def test_ddim_step_clips_and_rederives_the_noise():
    x = torch.tensor([[[[3.0, 0.1]]]])
    eps = torch.tensor([[[[0.0, 0.2]]]])
    a, a_prev = 0.81, 0.99
    out, x0 = ddim_step(x, eps, a, a_prev, clip_denoised=True)
    raw = (x - 0.19**0.5 * eps) / 0.9
    assert raw[..., 0].item() > 1
    assert x0[..., 0].item() == 1.0
    eps_clipped = (x - 0.9 * x0) / 0.19**0.5
    torch.testing.assert_close(out, a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps_clipped)
    unclipped, _ = ddim_step(x, eps, a, a_prev)
    torch.testing.assert_close(unclipped, a_prev**0.5 * raw + (1 - a_prev) ** 0.5 * eps)


@pytest.mark.parametrize("clip", [True, False])
def test_matches_diffusers_ddim_scheduler(clip):
    pytest.importorskip("diffusers")
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 8, 8, generator=g)
    bias = torch.randn(2, 3, 8, 8, generator=g)

    def denoise(x, t):  # a smooth nonlinear stand-in for a network
        return torch.tanh(0.7 * x + bias) + t.float()[:, None, None, None] / 2000

    ours = ddim_sample(denoise, noise, SCHEDULE, "ddim20", clip_denoised=clip)
    scheduler = to_diffusers_ddim(SCHEDULE, clip_denoised=clip)
    scheduler.set_timesteps(20)
    assert scheduler.timesteps.tolist() == list(range(950, -1, -50))
    x = noise
    for t in scheduler.timesteps:
        eps = denoise(x, t.expand(2))
        x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(ours, x, atol=2e-4, rtol=1e-4)


def _untrained(scale: float, randomize) -> RigModel:
    torch.manual_seed(0)
    model = RigModel(RigConfig.tiny()).eval()
    randomize(model, scale)
    return model


def test_inversion_then_sampling_reconstructs_the_input(randomize):
    model = _untrained(0.02, randomize)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 3, 32, 32, generator=g) * 1.6 - 0.8
    cond = torch.randn(1, 9, 32, 32, generator=g)
    errors = {}
    with torch.no_grad():
        z = model.encode(x0)
        denoise = lambda x, t: model(x, t, cond, latent=z)  # noqa: E731
        assert denoise(x0, torch.tensor([500])).std() > 0.05  # predicts real, varying noise
        for steps in ("ddim20", "ddim50"):
            x_T = ddim_invert(denoise, x0, SCHEDULE, steps)
            back = ddim_sample(denoise, x_T, SCHEDULE, steps, clip_denoised=False)
            errors[steps] = (back - x0).abs()
        other = torch.randn(1, model.config.latent_dim, generator=g)
        wrong = ddim_sample(
            lambda x, t: model(x, t, cond, latent=other),
            x_T,
            SCHEDULE,
            "ddim50",
            clip_denoised=False,
        )
    assert (x_T - x0).abs().mean() > 0.3  # the inverted sample is not the image
    assert errors["ddim50"].max() < 0.2
    assert errors["ddim50"].mean() < 0.03
    assert errors["ddim50"].mean() < 0.5 * errors["ddim20"].mean()  # converges with steps
    assert (wrong - x0).abs().mean() > 30 * errors["ddim50"].mean()  # the bound is tight


def test_fixed_point_inversion_is_nearly_exact(randomize):
    model = _untrained(0.02, randomize)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(1, 3, 32, 32, generator=g) * 1.6 - 0.8
    cond = torch.randn(1, 9, 32, 32, generator=g)
    with torch.no_grad():
        z = model.encode(x0)
        denoise = lambda x, t: model(x, t, cond, latent=z)  # noqa: E731
        plain = ddim_invert(denoise, x0, SCHEDULE, "ddim10")
        refined = ddim_invert(denoise, x0, SCHEDULE, "ddim10", fixed_point_iterations=3)
        back_plain = ddim_sample(denoise, plain, SCHEDULE, "ddim10", clip_denoised=False)
        back = ddim_sample(denoise, refined, SCHEDULE, "ddim10", clip_denoised=False)
    assert (back - x0).abs().max() < 1e-3
    assert (back - x0).abs().max() < 0.05 * (back_plain - x0).abs().max()
    with pytest.raises(ValueError, match="fixed_point_iterations"):
        ddim_invert(denoise, x0, SCHEDULE, "ddim10", fixed_point_iterations=-1)


def test_loops_accept_progress_and_reject_bad_timesteps():
    x0 = torch.zeros(1, 3, 4, 4)
    out = ddim_sample(_oracle(x0), torch.randn(1, 3, 4, 4), SCHEDULE, "ddim4", progress=True)
    assert out.abs().max() < 1e-5
    x_T = ddim_invert(_oracle(x0), x0, SCHEDULE, "ddim4", progress=True)
    assert x_T.shape == x0.shape
    with pytest.raises(ValueError, match="timesteps must lie"):
        ddim_sample(_oracle(x0), x0, SCHEDULE, [0, 1000])

"""Noise schedule, forward process, P2-weighted loss and timestep respacing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emorig.diffusion import NoiseSchedule, epsilon_loss, space_timesteps


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.linear()


def test_linear_schedule_is_hos(schedule):
    assert schedule.num_timesteps == 1000
    assert schedule.betas.dtype == torch.float64
    assert schedule.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert schedule.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    np.testing.assert_allclose(schedule.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    np.testing.assert_allclose(
        schedule.alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    )
    # Other step counts keep the shape (guided-diffusion's rescaling).
    assert NoiseSchedule.linear(500).betas[-1].item() == pytest.approx(0.04)


def test_p2_weights_by_hand(schedule):
    # t = 0: alpha_bar = 1 - 1e-4, SNR = 0.9999 / 1e-4 = 9999, w = 1 / (1 + 9999).
    # t = 999: alpha_bar = prod(1 - beta) ~ 4.04e-5, so w = 1 / (1 + SNR) = 1 - alpha_bar.
    a_999 = float(np.prod(1 - np.linspace(1e-4, 0.02, 1000)))
    assert a_999 == pytest.approx(4.0358e-5, rel=1e-3)
    w = schedule.p2_weight(torch.tensor([0, 999]))
    assert w.dtype == torch.float32
    assert w[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert w[1].item() == pytest.approx(1 - a_999, rel=1e-6)
    w2 = schedule.p2_weight(torch.tensor([0, 999]), k=2.0, gamma=0.5)
    assert w2[0].item() == pytest.approx(1 / math.sqrt(2 + 9999), rel=1e-6)
    assert w2[1].item() == pytest.approx(1 / math.sqrt(2 + a_999 / (1 - a_999)), rel=1e-6)
    assert torch.equal(schedule.p2_weight(torch.tensor([3, 700]), gamma=0.0), torch.ones(2))


def test_epsilon_loss_is_weighted_per_sample_mse(schedule):
    g = torch.Generator().manual_seed(0)
    noise, pred = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([0, 999])
    loss = epsilon_loss(pred, noise, t, schedule)
    mse = ((noise - pred) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, mse * schedule.p2_weight(t))
    torch.testing.assert_close(epsilon_loss(pred, noise, t, schedule, p2_gamma=0.0), mse)


def test_q_sample_and_predictions_invert_each_other(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    x_t = schedule.q_sample(x0, t, eps)
    a = schedule.alphas_cumprod[t].float()[:, None, None, None]
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, eps), x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(schedule.predict_eps(x_t, t, x0), eps, atol=1e-4, rtol=0)


def test_schedule_follows_input_dtype(schedule):
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    out = schedule.q_sample(x, torch.tensor([1, 2]), torch.ones_like(x))
    assert out.dtype == torch.float64
    assert schedule.alpha_bar(torch.tensor([1, 2]), x).shape == (2, 1, 1, 1)
    with pytest.raises(TypeError, match="integer"):
        schedule.alpha_bar(torch.tensor([1.0, 2.0]), x)
    with pytest.raises(ValueError, match="shape"):
        schedule.alpha_bar(torch.tensor([1]), x)


def test_sample_timesteps_is_uniform_and_seeded(schedule):
    a = schedule.sample_timesteps(1000, generator=torch.Generator().manual_seed(3))
    b = schedule.sample_timesteps(1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.dtype == torch.int64
    assert a.min() >= 0
    assert a.max() <= 999
    assert a.float().mean().item() == pytest.approx(500, abs=40)


def test_space_timesteps_like_guided_diffusion():
    assert space_timesteps(1000, "ddim20") == tuple(range(0, 1000, 50))
    assert space_timesteps(1000, "ddim50") == tuple(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == tuple(range(1000))
    # guided-diffusion's docstring example: 300 steps in sections of 10, 15 and 20.
    steps = space_timesteps(300, "10,15,20")
    assert len(steps) == 45
    assert steps[:3] == (0, 11, 22)
    assert steps[9] == 99
    assert steps[10] == 100
    assert steps[-1] == 299
    assert space_timesteps(1000, [10]) == tuple(round(i * 999 / 9) for i in range(10))
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim300")
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, [20])

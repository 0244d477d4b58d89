"""RigPipeline: the one owner of model space (images in [0, 1] outside, [-1, 1] inside)."""

from __future__ import annotations

import pytest
import torch

from emorig.diffusion import NoiseSchedule, RigConfig, RigModel, ddim_invert, ddim_sample
from emorig.diffusion.pipeline import RigPipeline


@pytest.fixture
def pipe(randomize) -> RigPipeline:
    torch.manual_seed(0)
    model = RigModel(RigConfig.tiny(image_size=16)).eval()
    randomize(model, 0.05)
    return RigPipeline(model)


def _inputs(pipe: RigPipeline, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    s = pipe.image_size
    images = torch.rand(batch, 3, s, s, generator=g)
    condition = torch.rand(batch, pipe.model.config.condition_channels, s, s, generator=g)
    return images, condition


def test_model_space_round_trip_and_ranges(pipe):
    images = torch.linspace(0, 1, 3 * 16 * 16).reshape(1, 3, 16, 16)
    x = pipe.to_model(images)
    assert float(x.min()) == -1.0
    assert float(x.max()) == 1.0
    torch.testing.assert_close(pipe.to_images(x), images)
    assert float(pipe.to_images(torch.full((1, 3, 2, 2), 5.0)).max()) == 1.0  # clamped
    assert pipe.model_shape(4) == (4, 3, 16, 16)


def test_fixed_noise_is_shared_by_the_batch_and_seeded(pipe):
    a = pipe.fixed_noise(3, seed=7)
    assert a.shape == (3, 3, 16, 16)
    assert torch.equal(a[0], a[2])
    assert torch.equal(a, pipe.fixed_noise(3, seed=7))
    assert not torch.equal(a, pipe.fixed_noise(3, seed=8))


@torch.no_grad()
def test_sample_is_ddim_in_model_space_then_images(pipe):
    images, condition = _inputs(pipe)
    latent = pipe.encode_latent(images)
    torch.testing.assert_close(latent, pipe.model.encode(images * 2 - 1))
    noise = pipe.fixed_noise(2, seed=0)
    out = pipe.sample(noise, condition, latent, timesteps="ddim5")

    def denoise(x, t):
        return pipe.model(x, t, condition, latent=latent)

    expected = ddim_sample(denoise, noise, NoiseSchedule.linear(), "ddim5")
    torch.testing.assert_close(out, ((expected + 1) / 2).clamp(0, 1))
    assert out.shape == images.shape
    assert float(out.min()) >= 0
    assert float(out.max()) <= 1


@torch.no_grad()
def test_invert_is_ddim_inversion_of_the_model_space_images(pipe):
    images, condition = _inputs(pipe)
    latent = pipe.encode_latent(images)
    noise = pipe.invert(images, condition, latent, timesteps="ddim10", iterations=3)

    def denoise(x, t):
        return pipe.model(x, t, condition, latent=latent)

    expected = ddim_invert(
        denoise, images * 2 - 1, NoiseSchedule.linear(), "ddim10", fixed_point_iterations=3
    )
    torch.testing.assert_close(noise, expected)
    back = pipe.sample(noise, condition, latent, timesteps="ddim10", clip=False)
    raw = ddim_sample(denoise, noise, NoiseSchedule.linear(), "ddim10", clip_denoised=False)
    torch.testing.assert_close(back, ((raw + 1) / 2).clamp(0, 1))


def test_training_inputs_and_predicted_images(pipe):
    images, _condition = _inputs(pipe, batch=3)
    x0, t, noise, x_t = pipe.training_inputs(images, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t_ref = pipe.schedule.sample_timesteps(3, generator=g)
    noise_ref = torch.randn(x0.shape, generator=g)
    assert torch.equal(t, t_ref)
    assert torch.equal(noise, noise_ref)
    torch.testing.assert_close(x0, images * 2 - 1)
    torch.testing.assert_close(x_t, pipe.schedule.q_sample(x0, t, noise))
    # the true noise gives back the clean images; gradients flow through the prediction
    torch.testing.assert_close(pipe.predicted_images(x_t, t, noise), images, atol=1e-4, rtol=0)
    eps = noise.clone().requires_grad_(True)
    pipe.predicted_images(x_t, t, eps).sum().backward()
    assert eps.grad is not None
    assert float(eps.grad.abs().sum()) > 0
    signal = pipe.signal_fraction(t, x0)
    assert signal.shape == (3,)
    assert bool(((signal > 0) & (signal < 1)).all())


@torch.no_grad()
def test_edit_start_is_fixed_noise_or_the_inversion(pipe):
    images, condition = _inputs(pipe)
    latent = pipe.encode_latent(images)
    fixed = pipe.edit_start(images, condition, latent, seed=3)
    assert torch.equal(fixed, pipe.fixed_noise(2, seed=3))
    inverted = pipe.edit_start(images, condition, latent, invert=True, timesteps="ddim4")
    expected = pipe.invert(images, condition, latent, timesteps="ddim4")
    torch.testing.assert_close(inverted, expected)
    assert not torch.equal(inverted[0], inverted[1])  # each image has its own noise


@torch.no_grad()
def test_refine_strength_zero_is_the_input_and_full_strength_is_sampling(pipe):
    images, condition = _inputs(pipe)
    latent = pipe.encode_latent(images)
    assert torch.equal(pipe.refine(images, condition, latent, strength=0.0), images)
    # strength 1 with fresh noise is plain DDIM from that noise (forward process at t_{N-1}).
    full = pipe.refine(images, condition, latent, strength=1.0, timesteps="ddim5", seed=3)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(images.shape, generator=g)
    t = torch.full((2,), 800, dtype=torch.long)
    start = pipe.schedule.q_sample(images * 2 - 1, t, noise)
    torch.testing.assert_close(full, pipe.sample(start, condition, latent, timesteps="ddim5"))
    with pytest.raises(ValueError, match="strength"):
        pipe.refine(images, condition, latent, strength=1.5)


@torch.no_grad()
def test_refine_changes_more_with_strength_and_inversion_keeps_the_image(pipe):
    images, condition = _inputs(pipe)
    latent = pipe.encode_latent(images)

    def change(**kw):
        out = pipe.refine(images, condition, latent, timesteps="ddim10", **kw)
        return float((out - images).abs().mean())

    weak, strong = change(strength=0.2), change(strength=0.8)
    assert 0 < weak < strong
    # Partial inversion then partial sampling under one condition retraces the image.
    assert change(strength=0.5, invert=True, iterations=3) < 0.25 * change(strength=0.5)

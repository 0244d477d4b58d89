"""The denoiser and the RigModel wrapper: key layout, blocks, conditioning, checks."""

from __future__ import annotations

import math

import pytest
import torch

from emorig.diffusion import RigConfig, RigModel, with_expression
from emorig.diffusion.unet import AttentionBlock, GroupNorm32, ResBlock, timestep_embedding
from emorig.types import RenderBuffers


def _inputs(config: RigConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    x_t = torch.randn(batch, 3, s, s, generator=g)
    cond = torch.randn(batch, config.condition_channels, s, s, generator=g)
    image = torch.rand(batch, 3, s, s, generator=g) * 2 - 1
    t = torch.tensor([5, 900][:batch])
    return x_t, t, cond, image


def _buffers(batch: int, size: int, names=("rendered", "normal", "albedo")) -> RenderBuffers:
    g = torch.Generator().manual_seed(1)
    r = lambda c: torch.rand(batch, c, size, size, generator=g)  # noqa: E731
    return RenderBuffers(
        rendered=r(3),
        normal=r(3) * 2 - 1,
        albedo=r(3),
        mask=r(1),
        depth=r(1),
        uv=r(2),
        shading=r(3),
        condition_names=names,
    )


# ---------------------------------------------------------------------------------------------
# Key layout.


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"resblock_updown": False},
        {"num_res_blocks": 2, "channel_mult": (1, 2, 2), "attention_resolutions": (16, 8)},
    ],
)
def test_state_dict_layout_is_diffusionrigs(changes, upstream_shapes):
    config = RigConfig.tiny(**changes)
    ours = {k: tuple(v.shape) for k, v in RigModel(config).state_dict().items()}
    expected = upstream_shapes(config)
    assert sorted(ours) == sorted(expected)
    assert ours == expected


def test_expression_keys_are_extra_and_zero():
    plain = RigModel(RigConfig.tiny()).state_dict()
    extended = RigModel(RigConfig.tiny(expression_dim=6)).state_dict()
    extra = sorted(set(extended) - set(plain))
    assert set(plain) <= set(extended)
    assert extra
    assert all(".expr_emb_layers.1." in k for k in extra)
    n_blocks = sum(1 for k in plain if k.endswith("cond_emb_layers.1.weight"))
    assert len(extra) == 2 * n_blocks
    assert all(torch.count_nonzero(extended[k]) == 0 for k in extra)
    assert all(extended[k].shape[-1] == 6 for k in extra if k.endswith("weight"))


# ---------------------------------------------------------------------------------------------
# Blocks.


def test_timestep_embedding_values():
    t = torch.tensor([0, 3])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8)
    assert emb.dtype == torch.float32
    freqs = [10000 ** (-i / 4) for i in range(4)]
    expected = [math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(t, 7)[:, -1].abs().max() == 0  # odd width: zero column


def test_group_norm_runs_in_float32():
    norm = GroupNorm32(4, 8)
    x = (torch.randn(2, 8, 5, 5) * 100).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    reference = torch.nn.functional.group_norm(x.float(), 4, eps=norm.eps)
    torch.testing.assert_close(out.float(), reference.to(torch.bfloat16).float())


def _legacy_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Guided-diffusion's QKVAttentionLegacy written out: heads split before q, k, v."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, -1)
    qkv = block.qkv(block.norm(flat))
    d = c // block.heads
    q, k, v = qkv.reshape(b * block.heads, 3 * d, -1).split(d, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (flat + block.proj_out(a)).reshape(b, c, h, w)


@pytest.mark.parametrize(("heads", "head_channels"), [(1, None), (2, None), (1, 4)])
def test_attention_matches_legacy_head_order(heads, head_channels):
    torch.manual_seed(0)
    block = AttentionBlock(16, heads, head_channels, norm_groups=4)
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(block(x), _legacy_attention(block, x), rtol=1e-5, atol=1e-5)
    assert block.heads == (4 if head_channels == 4 else heads)


def test_resblock_applies_timestep_then_latent_film():
    torch.manual_seed(0)
    block = ResBlock(8, 12, 5, 0.0, 16, norm_groups=4).eval()
    torch.nn.init.normal_(block.out_layers[3].weight)
    x, emb, z = torch.randn(2, 8, 6, 6), torch.randn(2, 12), torch.randn(2, 5)
    h = block.in_layers(x)
    h = block.out_layers[0](h)
    s_t, b_t = block.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
    s_z, b_z = block.cond_emb_layers(z)[:, :, None, None].chunk(2, dim=1)
    h = h * (1 + s_t) + b_t
    h = h * (1 + s_z) + b_z
    expected = block.skip_connection(x) + block.out_layers[3](torch.nn.functional.silu(h))
    torch.testing.assert_close(block(x, emb, z), expected)


def test_resblock_up_and_down_sample():
    block_up = ResBlock(8, 4, 3, 0.0, norm_groups=4, up=True)
    block_down = ResBlock(8, 4, 3, 0.0, norm_groups=4, down=True)
    x, emb, z = torch.randn(1, 8, 6, 6), torch.randn(1, 4), torch.randn(1, 3)
    assert block_up(x, emb, z).shape == (1, 8, 12, 12)
    assert block_down(x, emb, z).shape == (1, 8, 3, 3)


# ---------------------------------------------------------------------------------------------
# The model.


def test_input_channels_come_from_the_buffers():
    config = RigConfig.tiny()
    buffers = _buffers(1, 32)
    assert config.condition_channels == buffers.condition_channels == 9
    assert config.in_channels == 3 + buffers.condition_channels
    with_mask = RigConfig.tiny(condition_names=("rendered", "normal", "albedo", "mask", "uv"))
    assert (
        with_mask.in_channels == 3 + _buffers(1, 32, with_mask.condition_names).condition_channels
    )
    model = RigModel(with_mask)
    assert model.denoisingUNet.input_blocks[0][0].weight.shape[1] == 3 + 9 + 1 + 2
    with pytest.raises(ValueError, match="unknown conditioning buffer"):
        RigConfig.tiny(condition_names=("rendered", "specular"))


def test_forward_with_buffers_equals_concatenated_tensor(tiny_model):
    config = tiny_model.config
    x_t, t, _, image = _inputs(config)
    buffers = _buffers(2, config.image_size)
    with torch.no_grad():
        a = tiny_model(x_t, t, buffers, x_start=image)
        b = tiny_model(x_t, t, buffers.condition(), x_start=image)
    assert a.shape == (2, 3, 32, 32)
    assert torch.equal(a, b)
    assert a.abs().mean() > 1e-3  # the randomised model predicts non-zero noise
    wrong = _buffers(2, config.image_size, ("normal", "rendered", "albedo"))
    with pytest.raises(ValueError, match="condition on"):
        tiny_model(x_t, t, wrong, x_start=image)


def test_latent_and_x_start_paths_agree(tiny_model):
    x_t, t, cond, image = _inputs(tiny_model.config)
    with torch.no_grad():
        z = tiny_model.encode(image)
        assert z.shape == (2, tiny_model.config.latent_dim)
        a = tiny_model(x_t, t, cond, x_start=image)
        b = tiny_model(x_t, t, cond, latent=z)
        c = tiny_model(x_t, t, cond, latent=z.flip(0))
        d = tiny_model(x_t, 5, cond, latent=z)  # scalar timestep, broadcast
        e = tiny_model(x_t, torch.tensor([5, 5]), cond, latent=z)
    assert torch.equal(a, b)
    assert not torch.allclose(b, c)  # the latent changes the prediction
    assert torch.equal(d, e)


def test_forward_checks_its_inputs(tiny_model):
    x_t, t, cond, image = _inputs(tiny_model.config)
    z = torch.zeros(2, tiny_model.config.latent_dim)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model(x_t, t, cond)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model(x_t, t, cond, latent=z, x_start=image)
    with pytest.raises(ValueError, match=r"condition must be \(B, 9"):
        tiny_model(x_t, t, cond[:, :6], latent=z)
    with pytest.raises(ValueError, match="latent must be"):
        tiny_model(x_t, t, cond, latent=z[:, :3])
    with pytest.raises(ValueError, match="no expression conditioning"):
        tiny_model(x_t, t, cond, latent=z, expression=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(x_t[..., :31, :31], t, cond[..., :31, :31], latent=z)
    with pytest.raises(ValueError, match="t must be"):
        tiny_model(x_t, torch.tensor([1, 2, 3]), cond, latent=z)


def test_gradients_reach_unet_and_encoder(tiny_model):
    tiny_model.train()
    x_t, t, cond, image = _inputs(tiny_model.config)
    tiny_model(x_t, t, cond, x_start=image).square().mean().backward()
    assert tiny_model.denoisingUNet.input_blocks[0][0].weight.grad.abs().sum() > 0
    assert tiny_model.encoder.fc.weight.grad.abs().sum() > 0
    assert tiny_model.encoder.conv1.weight.grad.abs().sum() > 0


def test_zero_initialised_expression_film_keeps_outputs_bit_identical(tiny_model):
    x_t, t, cond, image = _inputs(tiny_model.config)
    extended = with_expression(tiny_model, 6)
    assert extended.config.expression_dim == 6
    assert not extended.training
    expression = torch.randn(2, 6) * 3
    with torch.no_grad():
        base = tiny_model(x_t, t, cond, x_start=image)
        same = extended(x_t, t, cond, x_start=image, expression=expression)
        skipped = extended(x_t, t, cond, x_start=image)
        for name, p in extended.named_parameters():
            if ".expr_emb_layers." in name:
                p.normal_(0, 0.1)
        moved = extended(x_t, t, cond, x_start=image, expression=expression)
    assert torch.equal(base, same)
    assert torch.equal(base, skipped)
    assert not torch.allclose(base, moved, atol=1e-4)  # the third FiLM is wired in
    with pytest.raises(ValueError, match="expression must be"):
        extended(x_t, t, cond, x_start=image, expression=expression[:, :2])


def test_half_precision_input_keeps_its_dtype():
    model = RigModel(RigConfig.tiny()).eval().to(torch.bfloat16)
    x_t, t, cond, image = _inputs(model.config, batch=1)
    with torch.no_grad():
        out = model(x_t.bfloat16(), t, cond.bfloat16(), x_start=image.bfloat16())
    assert out.dtype == torch.bfloat16
    assert out.shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# The official architecture.


@pytest.mark.slow
def test_official_config_parameter_count(upstream_shapes):
    """DiffusionRig's default model: 133,400,835 UNet + 11,209,344 encoder parameters."""
    config = RigConfig.official()
    assert config.level_channels == (128, 128, 256, 256, 512, 512)
    assert config.attention_downsample == (16,)
    assert config.in_channels == 12
    expected = upstream_shapes(config)
    expected_params = sum(
        math.prod(shape)
        for key, shape in expected.items()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    model = RigModel(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected_params == 144_610_179
    assert sum(p.numel() for p in model.denoisingUNet.parameters()) == 133_400_835
    # torchvision's resnet18 has 11,689,512 parameters with a 1000-class fc (513,000 of them).
    assert sum(p.numel() for p in model.encoder.parameters()) == 11_689_512 - 513_000 + 64 * 513

"""DECA's networks: official key layout, BatchNorm eps, encode/displacement contracts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emorig.reconstruct.codes import vector_to_code
from emorig.reconstruct.deca import DecaConfig, DecaModel, DetailDecoder, ResnetEncoder
from fixtures_official import deca_encoder_shapes, deca_generator_shapes

TINY = DecaConfig(backbone_width=4, head_hidden=16)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_model() -> DecaModel:
    torch.manual_seed(0)
    return DecaModel(TINY).eval()


def test_encoder_keys_are_decas():
    assert _shapes(ResnetEncoder(236)) == deca_encoder_shapes(236)
    assert _shapes(ResnetEncoder(128, width=8, hidden=32)) == deca_encoder_shapes(128, 8, 32)


def test_detail_decoder_keys_are_decas():
    got = _shapes(DetailDecoder(181))
    expected = deca_generator_shapes(181)
    assert list(got) == list(expected)
    assert got == expected


def test_full_model_keys_map_to_the_official_networks():
    got = _shapes(DecaModel())
    expected = {f"coarse_encoder.{k}": v for k, v in deca_encoder_shapes(236).items()}
    expected |= {f"detail_encoder.{k}": v for k, v in deca_encoder_shapes(128).items()}
    expected |= {f"detail_decoder.{k}": v for k, v in deca_generator_shapes(181).items()}
    assert got == expected


def test_detail_decoder_keeps_batchnorm_eps_08():
    decoder = DetailDecoder()
    norms = {i: m for i, m in enumerate(decoder.conv_blocks) if isinstance(m, nn.BatchNorm2d)}
    assert sorted(norms) == [0, 3, 7, 11, 15, 19]
    assert norms[0].eps == pytest.approx(1e-5)
    for index in (3, 7, 11, 15, 19):
        assert norms[index].eps == pytest.approx(0.8)
        assert norms[index].momentum == pytest.approx(0.1)
    ups = [m for m in decoder.conv_blocks if isinstance(m, nn.Upsample)]
    assert len(ups) == 5
    assert all(u.mode == "bilinear" and not u.align_corners for u in ups)


def test_detail_decoder_output_is_a_small_256_map():
    decoder = DetailDecoder().eval()
    with torch.no_grad():
        out = decoder(torch.randn(3, 181) * 5)
    assert out.shape == (3, 1, 256, 256)
    assert out.abs().max() <= 0.01


def test_encode_shapes(tiny_model):
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        code = tiny_model.encode(images)
        vector = tiny_model.coarse_parameters(images)
    assert vector.shape == (2, 236)
    assert code.shape.shape == (2, 100)
    assert code.albedo.shape == (2, 50)
    assert code.expression.shape == (2, 50)
    assert code.global_pose.shape == code.jaw_pose.shape == code.camera.shape == (2, 3)
    assert code.light.shape == (2, 9, 3)
    assert code.detail.shape == (2, 128)
    assert not code.neck_pose.any()
    assert not code.eye_pose.any()
    assert torch.equal(code.expression, vector_to_code(vector).expression)


def test_displacement_input_is_jaw_expression_detail(tiny_model):
    code = vector_to_code(torch.randn(2, 236), detail=torch.randn(2, 128))
    condition = tiny_model.detail_condition(code)
    assert condition.shape == (2, 181)
    assert torch.equal(condition[:, :3], code.jaw_pose)
    assert torch.equal(condition[:, 3:53], code.expression)
    assert torch.equal(condition[:, 53:], code.detail)
    with torch.no_grad():
        out = tiny_model.displacement(code)
        direct = tiny_model.detail_decoder(
            torch.cat([code.jaw_pose, code.expression, code.detail], 1)
        )
    assert out.shape == (2, 1, 256, 256)
    assert torch.equal(out, direct)


def test_displacement_needs_a_detail_code(tiny_model):
    code = vector_to_code(torch.zeros(1, 236))
    with pytest.raises(ValueError, match="no detail code"):
        tiny_model.displacement(code)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 256, 256), "224x224"),
        (torch.rand(2, 1, 224, 224), r"\(B, 3, H, W\)"),
        (torch.rand(3, 224, 224), r"\(B, 3, H, W\)"),
        (torch.rand(1, 3, 224, 224) * 255, "divide 8-bit images by 255"),
        ((torch.rand(1, 3, 224, 224) - 0.45) / 0.225, "no mean/std"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "float"),
    ],
)
def test_encode_checks_its_input(tiny_model, images, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.encode(images)


def test_config_validation():
    with pytest.raises(ValueError, match="backbone"):
        DecaConfig(backbone="vgg")
    with pytest.raises(ValueError, match="n_detail"):
        DecaConfig(n_detail=0)
    assert DecaConfig().n_params == 236
    assert DecaConfig().n_condition == 181

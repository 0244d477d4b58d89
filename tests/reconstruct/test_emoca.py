"""EMOCA: the expression encoder replaces DECA's expression (and poses when configured)."""

from __future__ import annotations

import pytest
import torch

from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.emoca import EmocaConfig, EmocaModel

SMALL = {"backbone_width": 4, "head_hidden": 16}
UNCHANGED = ("shape", "albedo", "camera", "light", "detail", "neck_pose", "eye_pose")


def _pair(**options) -> tuple[DecaModel, EmocaModel]:
    torch.manual_seed(0)
    emoca = EmocaModel(EmocaConfig(**SMALL, **options)).eval()
    deca = DecaModel(DecaConfig(**SMALL)).eval()
    deca.load_state_dict(
        {k: v for k, v in emoca.state_dict().items() if not k.startswith("expression_encoder.")}
    )
    return deca, emoca


def _encode(deca, emoca):
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        return deca.encode(images), emoca.encode(images), emoca.expression_parameters(images)


@pytest.mark.parametrize(
    ("options", "outputs"),
    [
        ({}, 50),
        ({"predicts_jaw_pose": True}, 53),
        ({"predicts_global_pose": True}, 53),
        ({"predicts_jaw_pose": True, "predicts_global_pose": True}, 56),
    ],
)
def test_expression_encoder_output_size(options, outputs):
    config = EmocaConfig(**SMALL, **options)
    assert config.n_expression_outputs == outputs
    model = EmocaModel(config)
    assert model.expression_encoder.layers[2].weight.shape == (outputs, 16)


def test_released_emoca_replaces_only_the_expression():
    deca, emoca = _pair()
    d, e, raw = _encode(deca, emoca)
    assert torch.equal(e.expression, raw)
    assert not torch.allclose(e.expression, d.expression)
    for name in (*UNCHANGED, "global_pose", "jaw_pose"):
        assert torch.equal(getattr(e, name), getattr(d, name)), name


def test_jaw_option_replaces_expression_and_jaw():
    deca, emoca = _pair(predicts_jaw_pose=True)
    d, e, raw = _encode(deca, emoca)
    assert torch.equal(e.expression, raw[:, :50])
    assert torch.equal(e.jaw_pose, raw[:, 50:53])
    assert torch.equal(e.global_pose, d.global_pose)
    for name in UNCHANGED:
        assert torch.equal(getattr(e, name), getattr(d, name)), name


def test_global_option_replaces_expression_and_global_pose():
    deca, emoca = _pair(predicts_global_pose=True)
    d, e, raw = _encode(deca, emoca)
    assert torch.equal(e.global_pose, raw[:, 50:53])
    assert torch.equal(e.jaw_pose, d.jaw_pose)


def test_both_options_take_global_then_jaw():
    deca, emoca = _pair(predicts_jaw_pose=True, predicts_global_pose=True)
    d, e, raw = _encode(deca, emoca)
    assert torch.equal(e.expression, raw[:, :50])
    assert torch.equal(e.global_pose, raw[:, 50:53])
    assert torch.equal(e.jaw_pose, raw[:, 53:56])
    for name in UNCHANGED:
        assert torch.equal(getattr(e, name), getattr(d, name)), name


def test_displacement_uses_emocas_expression():
    _, emoca = _pair()
    with torch.no_grad():
        code = emoca.encode(torch.rand(1, 3, 224, 224))
        condition = emoca.detail_condition(code)
    assert torch.equal(condition[:, 3:53], code.expression)


def test_clone_backbone_from_coarse_copies_the_trunk_only():
    _, emoca = _pair()
    head_before = {k: v.clone() for k, v in emoca.expression_encoder.layers.state_dict().items()}
    emoca.clone_backbone_from_coarse()
    coarse = emoca.coarse_encoder.encoder.state_dict()
    for key, value in emoca.expression_encoder.encoder.state_dict().items():
        assert torch.equal(value, coarse[key]), key
        assert value.data_ptr() != coarse[key].data_ptr()  # a copy, not shared
    for key, value in emoca.expression_encoder.layers.state_dict().items():
        assert torch.equal(value, head_before[key])


def test_emoca_needs_an_emoca_config():
    with pytest.raises(TypeError, match="EmocaConfig"):
        EmocaModel(DecaConfig())
    assert EmocaModel(EmocaConfig(**SMALL)).config.variant == "emoca"

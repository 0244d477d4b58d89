"""Named edits: --face terms read as a change of the photo's code, --light terms on the SH."""

from __future__ import annotations

import math

import pytest
import torch

from emorig.edit.explicit import apply_face_spec, apply_light_spec, parse_face, parse_light_spec
from emorig.errors import EmorigError
from emorig.geometry.rotations import axis_angle_to_matrix, yaw_pitch_roll_to_matrix
from emorig.types import FaceCode

NAMES = ("smile", "frown")


def _code() -> FaceCode:
    g = torch.Generator().manual_seed(0)
    code = FaceCode.neutral(batch_size=2)
    return code.replace(
        expression=torch.randn(code.expression.shape, generator=g),
        global_pose=0.3 * torch.randn(2, 3, generator=g),
        jaw_pose=0.1 * torch.rand(2, 3, generator=g),
        light=torch.randn(2, 9, 3, generator=g),
    )


def test_face_terms_set_expression_and_jaw_and_keep_the_rest():
    code = _code()
    edited = apply_face_spec(code, parse_face("smile=0.8+exp3=-1+jaw=12", NAMES))
    assert torch.equal(edited.expression[:, 0], torch.full((2,), 0.8))
    assert torch.equal(edited.expression[:, 3], torch.full((2,), -1.0))
    untouched = [k for k in range(code.expression.shape[1]) if k not in (0, 3)]
    assert torch.equal(edited.expression[:, untouched], code.expression[:, untouched])
    assert torch.allclose(edited.jaw_pose[:, 0], torch.full((2,), math.radians(12)))
    assert torch.equal(edited.jaw_pose[:, 1:], code.jaw_pose[:, 1:])
    for field in ("shape", "global_pose", "light", "camera", "albedo"):
        assert torch.equal(getattr(edited, field), getattr(code, field)), field
    # jaw not named: the photo's jaw stays; jaw=0 named: closed
    assert torch.equal(apply_face_spec(code, parse_face("smile", NAMES)).jaw_pose, code.jaw_pose)
    closed = apply_face_spec(code, parse_face("jaw=0", NAMES))
    assert float(closed.jaw_pose[:, 0].abs().max()) == 0.0


def test_head_turns_are_relative_to_the_photo_pose():
    code = _code()
    edited = apply_face_spec(code, parse_face("yaw=15", NAMES))
    turn = yaw_pitch_roll_to_matrix(
        torch.tensor(math.radians(15.0)), torch.tensor(0.0), torch.tensor(0.0)
    )
    expected = turn @ axis_angle_to_matrix(code.global_pose)
    got = axis_angle_to_matrix(edited.global_pose)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_identity_terms_and_bad_terms_are_refused():
    with pytest.raises(EmorigError, match="change the person"):
        parse_face("shape3=2", NAMES)
    with pytest.raises(EmorigError, match="unknown term 'smiel'"):
        parse_face("smiel", NAMES)
    with pytest.raises(EmorigError, match="component 70"):
        apply_face_spec(_code(), parse_face("exp70=1", NAMES))


def test_light_terms_move_the_first_band_by_the_ambient_term():
    code = _code()
    terms = parse_light_spec("left=0.5+above+left=0.1")
    assert terms == {"left": pytest.approx(0.6), "above": 1.0}
    lit = apply_light_spec(code, terms)
    ambient = code.light[:, 0]
    ratio = 0.28209479 / 0.48860251  # bands 0 and 1 of DECA's SH: 1 + strength where lit
    torch.testing.assert_close(lit.light[:, 1], code.light[:, 1] - 0.6 * ratio * ambient)
    torch.testing.assert_close(lit.light[:, 2], code.light[:, 2] + ratio * ambient)
    assert torch.equal(lit.light[:, 3:], code.light[:, 3:])
    assert torch.equal(lit.light[:, 0], ambient)
    brighter = apply_light_spec(code, parse_light_spec("ambient=1.5"))
    torch.testing.assert_close(brighter.light[:, 0], 1.5 * ambient)
    for bad in ("sideways=1", "left=x", "ambient=0", ""):
        with pytest.raises(EmorigError):
            parse_light_spec(bad)

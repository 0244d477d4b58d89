import math

import pytest
import torch

from emorig.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    yaw_pitch_roll_to_matrix,
)


def test_known_rotations():
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(r, expected, atol=1e-6)
    assert torch.equal(axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))


def test_orthonormal_and_batched():
    aa = torch.randn(7, 5, 3, dtype=torch.float64) * 2
    r = axis_angle_to_matrix(aa)
    assert r.shape == (7, 5, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(7, 5, dtype=torch.float64))


def test_small_angle_branch_matches_closed_form():
    aa = torch.tensor([[1e-4, -2e-4, 3e-4]], dtype=torch.float64)
    theta = aa.norm()
    k = aa[0] / theta
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    closed = (
        torch.eye(3, dtype=torch.float64)
        + torch.sin(theta) * kx
        + (1 - torch.cos(theta)) * (kx @ kx)
    )
    assert torch.allclose(axis_angle_to_matrix(aa)[0], closed, atol=1e-15)


def test_round_trip_including_near_pi():
    torch.manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(64, 3, dtype=torch.float64), dim=-1)
    angle = torch.cat(
        [
            torch.rand(60, dtype=torch.float64) * 3.0,
            torch.tensor([0.0, 1e-7, math.pi - 1e-4, math.pi - 1e-7], dtype=torch.float64),
        ]
    )
    aa = axis * angle[:, None]
    back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
    assert torch.allclose(axis_angle_to_matrix(back), axis_angle_to_matrix(aa), atol=1e-9)
    q = matrix_to_quaternion(axis_angle_to_matrix(aa))
    assert torch.allclose(q.norm(dim=-1), torch.ones(64, dtype=torch.float64))
    assert (q[:, 0] >= 0).all()


def test_gradcheck_axis_angle_to_matrix():
    aa = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    zero = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (zero,))
    tiny = (torch.randn(2, 3, dtype=torch.float64) * 1e-4).requires_grad_()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (tiny,))


def test_gradcheck_matrix_to_axis_angle():
    aa = (torch.randn(4, 3, dtype=torch.float64) * 0.8).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: matrix_to_axis_angle(axis_angle_to_matrix(a)), (aa,))


@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"), [(0.3, 0.0, 0.0), (0.0, 0.4, 0.0), (0.2, -0.1, 0.3)]
)
def test_yaw_pitch_roll_directions(yaw, pitch, roll):
    r = yaw_pitch_roll_to_matrix(torch.tensor(yaw), torch.tensor(pitch), torch.tensor(roll))
    nose = r @ torch.tensor([0.0, 0.0, 1.0])
    # positive yaw turns the face towards +x; positive pitch tilts it down (-y)
    if yaw > 0 and pitch == 0:
        assert nose[0] > 0
    if pitch > 0 and yaw == 0:
        assert nose[1] < 0

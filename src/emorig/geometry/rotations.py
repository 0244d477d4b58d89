"""Rotation conversions. Axis-angle vectors are in radians, matrices act on column vectors."""

from __future__ import annotations

import torch
from torch import Tensor

# Below this squared angle the closed forms are replaced by their Taylor series, which keeps
# values and gradients exact at (and near) zero rotation.
_SMALL_ANGLE_SQ = 1e-6


def skew(v: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix ``[v]x`` so that ``[v]x @ u == v x u``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula: (..., 3) axis-angle -> (..., 3, 3) rotation matrix.

    ``R = I + a [r]x + b [r]x^2`` with ``a = sin t / t`` and ``b = (1 - cos t) / t^2``,
    ``t = |r|``; both factors use their series near ``t = 0`` so the map is smooth there.
    Any float dtype and device.
    """
    theta_sq = (axis_angle * axis_angle).sum(-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    theta_sq_safe = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = theta_sq_safe.sqrt()
    a = torch.where(small, 1 - theta_sq / 6 + theta_sq**2 / 120, torch.sin(theta) / theta)
    b = torch.where(
        small, 0.5 - theta_sq / 24 + theta_sq**2 / 720, (1 - torch.cos(theta)) / theta_sq_safe
    )
    k = skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrix -> (..., 4) unit quaternion ``(w, x, y, z)`` with ``w >= 0``.

    Picks, per matrix, the best conditioned of the four standard formulas.
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * q_i^2 for i = w, x, y, z
    q_sq4 = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    q_abs = q_sq4.clamp_min(1e-12).sqrt()  # 2 |q_i|
    w = torch.stack(
        [
            torch.stack(
                [
                    q_abs[..., 0] ** 2,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    q_abs[..., 1] ** 2,
                    m[..., 1, 0] + m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] + m[..., 0, 1],
                    q_abs[..., 2] ** 2,
                    m[..., 2, 1] + m[..., 1, 2],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 2, 0] + m[..., 0, 2],
                    m[..., 2, 1] + m[..., 1, 2],
                    q_abs[..., 3] ** 2,
                ],
                -1,
            ),
        ],
        -2,
    )  # (..., 4, 4): row i is 4 q_i q
    candidates = w / (2 * q_abs[..., :, None])
    best = q_sq4.argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrix -> (..., 3) axis-angle with angle in ``[0, pi]``."""
    q = matrix_to_quaternion(matrix)
    xyz = q[..., 1:]
    s = xyz.norm(dim=-1)
    angle = 2 * torch.atan2(s, q[..., 0])
    small = s < 1e-6
    # angle / s -> 2 / w as s -> 0
    factor = torch.where(small, 2 / q[..., 0].clamp_min(1e-12), angle / s.clamp_min(1e-12))
    return xyz * factor[..., None]


def yaw_pitch_roll_to_matrix(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """Angles in radians -> ``R_y(yaw) @ R_x(pitch) @ R_z(roll)``, shape (..., 3, 3).

    In FLAME space a positive yaw turns the face towards its left (+x), a positive pitch
    tilts the chin down, a positive roll tilts the head towards its right shoulder.
    """

    def about(axis: int, angle: Tensor) -> Tensor:
        v = torch.zeros(*angle.shape, 3, dtype=angle.dtype, device=angle.device)
        v[..., axis] = angle
        return axis_angle_to_matrix(v)

    return about(1, yaw) @ about(0, pitch) @ about(2, roll)

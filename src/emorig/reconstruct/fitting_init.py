"""Closed-form head pose and camera from 68 landmarks, the start of a landmark fit.

For a grid of yaw and pitch hypotheses the neutral template's landmarks are aligned to the
targets by a weighted 2D similarity Procrustes (scale, in-plane rotation = roll, translation)
on the 51 static points; the hypothesis with the smallest residual over all 68 points
(contour from that yaw's row) is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from emorig.flame.model import FlameModel
from emorig.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    yaw_pitch_roll_to_matrix,
)
from emorig.reconstruct.fitting_common import (
    _PX_PER_NDC,
    N_CONTOUR,
    N_LANDMARKS,
    _check_points,
    landmark_weights,
)

__all__ = ["DEFAULT_PITCHES", "DEFAULT_YAWS", "initialise_pose"]

#: Default pose hypotheses of the initialisation, degrees.
DEFAULT_YAWS: tuple[float, ...] = (
    -70.0,
    -55.0,
    -40.0,
    -25.0,
    -10.0,
    0.0,
    10.0,
    25.0,
    40.0,
    55.0,
    70.0,
)
DEFAULT_PITCHES: tuple[float, ...] = (-25.0, -10.0, 0.0, 10.0, 25.0)


def _similarity_2d(source: Tensor, target: Tensor, weights: Tensor):
    """Weighted 2D similarity Procrustes (Umeyama) ``target ~ s R(phi) source + c``.

    Args:
        source: (..., N, 2) points.
        target: (..., N, 2) points, broadcastable against ``source``.
        weights: (N,) non-negative weights.

    Returns:
        ``(scale (...), angle (...), offset (..., 2))`` with ``R(phi) = [[cos, -sin],
        [sin, cos]]`` acting on column vectors.
    """
    w = weights / weights.sum()
    mu_s = (w[:, None] * source).sum(-2, keepdim=True)
    mu_t = (w[:, None] * target).sum(-2, keepdim=True)
    u, q = source - mu_s, target - mu_t
    a = (w * (u * q).sum(-1)).sum(-1)
    b = (w * (u[..., 0] * q[..., 1] - u[..., 1] * q[..., 0])).sum(-1)
    var = (w * (u * u).sum(-1)).sum(-1)
    angle = torch.atan2(b, a)
    scale = torch.sqrt(a * a + b * b) / var.clamp_min(1e-12)
    c, s = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack(
        [c * mu_s[..., 0, 0] - s * mu_s[..., 0, 1], s * mu_s[..., 0, 0] + c * mu_s[..., 0, 1]], -1
    )
    offset = mu_t[..., 0, :] - scale[..., None] * rotated
    return scale, angle, offset


def _rotate_2d(points: Tensor, angle: Tensor) -> Tensor:
    """(..., N, 2) points rotated by (...) angles."""
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y = points[..., 0], points[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y], -1)


def _about_z(angle: Tensor) -> Tensor:
    """(...) angles -> (..., 3, 3) rotations about +z."""
    v = torch.zeros(*angle.shape, 3, dtype=angle.dtype, device=angle.device)
    v[..., 2] = angle
    return axis_angle_to_matrix(v)


def _flame_dtype(flame: FlameModel) -> torch.dtype:
    return flame.v_template.dtype


# --------------------------------------------------------------------------------------------
# Initialisation


@torch.no_grad()
def initialise_pose(
    flame: FlameModel,
    landmarks: Tensor,
    *,
    yaws: Sequence[float] = DEFAULT_YAWS,
    pitches: Sequence[float] = DEFAULT_PITCHES,
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form head pose and camera from 68 landmarks (no optimisation).

    For every (yaw, pitch) hypothesis the neutral template is rotated about its root joint,
    projected orthographically and aligned to the targets by a weighted 2D similarity (scale,
    roll, translation) fitted on the 51 static points; the hypothesis with the smallest
    weighted mean squared residual over all 68 points (contour from that yaw's row) wins.

    Args:
        flame: the head; needs its 68-landmark embedding.
        landmarks: (B, 68, 2) targets in NDC of the crop (x right, y down).
        yaws: yaw hypotheses in degrees (positive turns the face towards its left, +x).
        pitches: pitch hypotheses in degrees (positive tilts the chin down).

    Returns:
        ``(global_pose (B, 3) axis-angle, camera (B, 3) DECA (s, tx, ty), residual (B,)``
        root-mean-square weighted residual in pixels of a 224 crop)``, in the dtype and on the
        device of ``landmarks``.
    """
    _check_points("landmarks", landmarks, N_LANDMARKS)
    if not flame.has_landmarks:
        raise ValueError(f"{flame.name} has no 68-landmark embedding; fitting needs one")
    dtype, device = landmarks.dtype, landmarks.device
    grid = torch.tensor(
        [(y, p) for y in yaws for p in pitches], dtype=_flame_dtype(flame), device=device
    )
    k = grid.shape[0]
    rot = yaw_pitch_roll_to_matrix(
        torch.deg2rad(grid[:, 0]), torch.deg2rad(grid[:, 1]), torch.zeros_like(grid[:, 0])
    )
    z = flame.v_template.new_zeros
    out = flame(z(k, 1), z(k, 1), matrix_to_axis_angle(rot), z(k, 3))
    root = out.joints[:, 0].to(dtype)  # (K, 3): the root does not move under the global pose
    centred = out.landmarks2d.to(dtype) - root[:, None]
    source = torch.stack([centred[..., 0], -centred[..., 1]], -1)  # (K, 68, 2) screen axes
    target = landmarks[:, None]  # (B, 1, 68, 2)
    weights = landmark_weights(device, dtype)
    static = slice(N_CONTOUR, N_LANDMARKS)
    scale, angle, offset = _similarity_2d(
        source[None, :, static], target[:, :, static], weights[static]
    )  # (B, K), (B, K), (B, K, 2)
    fitted = scale[..., None, None] * _rotate_2d(source[None], angle) + offset[..., None, :]
    squared = ((fitted - target) ** 2).sum(-1)  # (B, K, 68)
    residual = (squared * weights).sum(-1) / weights.sum()
    best = residual.argmin(1)
    pick = lambda t: t[torch.arange(t.shape[0], device=device), best]  # noqa: E731
    s, phi, c = pick(scale), pick(angle), pick(offset)
    # a rotation phi of the screen (x right, y down) is a rotation -phi about FLAME's +z
    rotation = _about_z(-phi) @ rot.to(dtype)[best]
    r0 = root[best]
    tx = c[:, 0] / s - r0[:, 0]
    ty = -c[:, 1] / s - r0[:, 1]
    camera = torch.stack([s, tx, ty], -1)
    rms = pick(residual).sqrt() * _PX_PER_NDC
    return matrix_to_axis_angle(rotation), camera, rms

"""Landmarks embedded in a mesh as (face index, barycentric coordinates)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# DECA's contour look-up table has 79 rows: yaw 0..39 degrees, then -1..-39 at rows 40..78.
CONTOUR_MAX_YAW = 39


def vertices_to_landmarks(
    vertices: Tensor, faces: Tensor, face_index: Tensor, bary: Tensor
) -> Tensor:
    """Points on the mesh surface.

    Args:
        vertices: (B, V, 3).
        faces: (F, 3) int64.
        face_index: (L,) or (B, L) int64 face per landmark.
        bary: (L, 3) or (B, L, 3) barycentric coordinates per landmark.

    Returns:
        (B, L, 3) landmark positions.
    """
    b = vertices.shape[0]
    if face_index.dim() == 1:
        face_index = face_index.expand(b, -1)
    if bary.dim() == 2:
        bary = bary.expand(b, -1, -1)
    corner = faces[face_index]  # (B, L, 3) vertex ids
    batch = torch.arange(b, device=vertices.device)[:, None, None]
    tri = vertices[batch, corner]  # (B, L, 3, 3)
    return torch.einsum("blkc,blk->blc", tri, bary.to(vertices.dtype))


def yaw_of_rotation(rotation: Tensor) -> Tensor:
    """(..., 3, 3) -> (...) rotation about +y in radians, ``atan2(-R20, sqrt(R00^2 + R10^2))``.

    This is the angle DECA's FLAME layer uses to pick the contour landmarks.
    """
    sy = torch.sqrt(rotation[..., 0, 0] ** 2 + rotation[..., 1, 0] ** 2)
    return torch.atan2(-rotation[..., 2, 0], sy)


def contour_lut_row(yaw: Tensor) -> Tensor:
    """Yaw in radians -> row of the 79-row contour table (DECA's rounding and folding).

    Non-negative yaws, rounded to whole degrees and capped at 39, index rows 0..39; negative
    yaws -1..-39 index rows 40..78 (``39 - yaw``); anything below -39 uses row 78.
    """
    deg = torch.round(torch.clamp(yaw * (180.0 / math.pi), max=CONTOUR_MAX_YAW)).long()
    neg = 39 - deg
    neg = torch.where(deg < -CONTOUR_MAX_YAW, torch.full_like(deg, 78), neg)
    return torch.where(deg < 0, neg, deg)

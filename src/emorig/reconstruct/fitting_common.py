"""What the face fits share: DECA's landmark conventions, weights and errors, the result type
and small helpers of the objectives (see :mod:`emorig.reconstruct.fitting`).

Landmark targets are DECA's 68 points (17 contour then 51 static, iBUG order) in NDC of the
crop, ``x`` right and ``y`` down; errors are reported in pixels of a 224-pixel crop (DECA's
size: 112 pixels per NDC unit) and as a fraction of the target's outer-eye-corner distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from emorig.flame.model import FlameModel
from emorig.geometry.camera import DECA_CROP, orthographic_project
from emorig.types import FaceCode

__all__ = [
    "CROP_SIZE",
    "EYE_PAIRS",
    "LIP_PAIRS",
    "N_CONTOUR",
    "N_LANDMARKS",
    "OUTER_EYE_CORNERS",
    "FitResult",
    "landmark_errors",
    "landmark_weights",
    "project_landmarks",
]

#: Side of DECA's face crop in pixels; errors are reported in its pixels.
CROP_SIZE = DECA_CROP
_PX_PER_NDC = CROP_SIZE / 2
N_LANDMARKS = 68
N_CONTOUR = 17
#: DECA's eye-closure pairs (upper lid, lower lid), 0-based iBUG indices (anchors §1.10).
EYE_PAIRS: tuple[tuple[int, int], ...] = ((37, 41), (38, 40), (43, 47), (44, 46))
#: DECA's lip-distance pairs (upper inner lip, lower inner lip).
LIP_PAIRS: tuple[tuple[int, int], ...] = ((61, 67), (62, 66), (63, 65))
#: Outer eye corners, the inter-ocular normalisation of the 300-W benchmark.
OUTER_EYE_CORNERS = (36, 45)


# --------------------------------------------------------------------------------------------
# Landmark weights and errors


def landmark_weights(device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """DECA's per-landmark weights (anchors §1.10), shape (68,).

    1 everywhere except: contour 5, 6, 10, 11 -> 2; nose 27-35 -> 1.5 with 30, 31, 35 -> 3;
    mouth 48-67 -> 1.5 with the corners 48, 54 -> 3.
    """
    w = torch.ones(N_LANDMARKS, device=device, dtype=dtype)
    w[[5, 6, 10, 11]] = 2.0
    w[27:36] = 1.5
    w[[30, 31, 35]] = 3.0
    w[48:68] = 1.5
    w[[48, 54]] = 3.0
    return w


def landmark_errors(predicted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Mean unweighted point distance between two landmark sets.

    Args:
        predicted: (B, 68, 2) NDC of the crop.
        target: (B, 68, 2) NDC of the crop.

    Returns:
        ``(pixels, inter_ocular)``: (B,) mean distance in pixels of a 224 crop, and (B,) the
        same divided by the target's outer-eye-corner distance.
    """
    distance = (predicted[..., :2] - target[..., :2]).norm(dim=-1).mean(-1)
    i, j = OUTER_EYE_CORNERS
    iod = (target[:, i, :2] - target[:, j, :2]).norm(dim=-1)
    return distance * _PX_PER_NDC, distance / iod.clamp_min(1e-8)


@torch.no_grad()
def project_landmarks(flame: FlameModel, code: FaceCode) -> Tensor:
    """(B, 68, 2) DECA's landmarks of ``code`` (whole-degree contour rows) in crop NDC."""
    out = flame(
        code.shape,
        code.expression,
        code.global_pose,
        code.jaw_pose,
        neck_pose=code.neck_pose,
        eye_pose=code.eye_pose,
    )
    dtype = code.camera.dtype
    return orthographic_project(out.landmarks2d.to(dtype), code.camera)[..., :2]


# --------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class FitResult:
    """What a fit returns.

    Attributes:
        code: the fitted :class:`~emorig.types.FaceCode` (detached), batch B.
        landmark_error: (B,) final mean landmark distance in pixels of a 224 crop (unweighted
            over the 68 points), or ``None`` when no landmark targets were given.
        landmark_error_iod: (B,) the same divided by the target's outer-eye-corner distance
            (iBUG 36-45), or ``None``.
        photometric_error: (B,) final mean absolute colour error inside the fitted mask, or
            ``None`` when no photometric stage ran.
        history: objective value (summed over the batch) at every evaluation, in order.
        steps: number of objective evaluations (each one forward and one backward pass).
        seconds: wall-clock time of the fit.
    """

    code: FaceCode
    landmark_error: Tensor | None
    landmark_error_iod: Tensor | None
    photometric_error: Tensor | None
    history: tuple[float, ...]
    steps: int
    seconds: float


# --------------------------------------------------------------------------------------------
# Helpers


def _check_points(name: str, points: Tensor, count: int | None) -> None:
    if (
        points.dim() != 3
        or points.shape[-1] != 2
        or (count is not None and points.shape[1] != count)
    ):
        expected = f"(B, {count if count is not None else 'M'}, 2)"
        raise ValueError(f"{name} has shape {tuple(points.shape)}, expected {expected} in NDC")
    if not points.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {points.dtype}")


def _robust(squared: Tensor, scale: float | None) -> Tensor:
    """Pseudo-Huber of squared distances: ``2 c^2 (sqrt(1 + d^2 / c^2) - 1)``, ~d^2 near 0."""
    if scale is None:
        return squared
    c2 = scale * scale
    return 2 * c2 * (torch.sqrt(1 + squared / c2) - 1)


def _pair_offsets(points: Tensor, pairs: Sequence[tuple[int, int]]) -> Tensor:
    """(B, N, 2) -> (B, P, 2) offsets ``first - second`` of the given point pairs."""
    return points[:, [p[0] for p in pairs]] - points[:, [p[1] for p in pairs]]

"""Weight-free fitting of a FLAME-format head to face crops: landmarks, then photometric.

No network is involved: the codes of a :class:`~emorig.types.FaceCode` are optimised
directly so that the head's projected landmarks (and then its render) match one face crop or
a batch of them. Any FLAME-format head with DECA's 68-landmark embedding works: the official
FLAME or the built-in synthetic head.

Conventions (``docs/conventions.md``): landmark targets are DECA's 68 points (17 contour then
51 static, iBUG order) in NDC of the crop, ``x`` right and ``y`` down, pixel ``i`` spanning
``[i, i + 1)``; the camera is DECA's orthographic ``(s, tx, ty)``. Errors are reported in
pixels of a 224-pixel crop (DECA's size: 112 pixels per NDC unit) and as a fraction of the
target's outer-eye-corner distance (iBUG 36 and 45).

:func:`fit_landmarks` runs three stages:

1. closed-form initialisation (:func:`initialise_pose`): for a grid of yaw and pitch
   hypotheses the neutral template's landmarks are aligned to the targets by a weighted 2D
   similarity Procrustes (scale, in-plane rotation = roll, translation) on the 51 static
   points; the hypothesis with the smallest residual over all 68 points (contour from that
   yaw's row) is kept;
2. a short rigid stage: global pose and camera, on the eye, brow and nose points (17-47),
   which an unfitted identity and expression disturb least;
3. the full stage: identity, expression, global and jaw pose and camera, with L2 priors.

A batch is one optimisation: every forward and backward pass covers the whole batch, but
each image has its own L-BFGS state, line search and budget (:func:`batched_lbfgs`), so an
image gets the same fit in a batch as alone. The contour points are DECA's yaw-dependent
ones; how their rows are picked is explained in :class:`_LandmarkProblem`.

:func:`fit_photometric` fits albedo and light (optionally geometry) to the pixels with the
same optimiser, and :func:`fit` chains the two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.flame.model import FlameModel
from emorig.geometry.camera import orthographic_project
from emorig.geometry.landmarks import (
    contour_lut_row,
    vertices_to_landmarks,
    yaw_of_rotation,
)
from emorig.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    yaw_pitch_roll_to_matrix,
)
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode, FlameOutput

__all__ = [
    "CROP_SIZE",
    "EYE_PAIRS",
    "LIP_PAIRS",
    "PHOTOMETRIC_FIELDS",
    "FitResult",
    "batched_lbfgs",
    "fit",
    "fit_landmarks",
    "fit_photometric",
    "initialise_pose",
    "landmark_errors",
    "landmark_weights",
    "project_landmarks",
]

#: Side of DECA's face crop in pixels; errors are reported in its pixels.
CROP_SIZE = 224
_PX_PER_NDC = CROP_SIZE / 2
N_LANDMARKS = 68
N_CONTOUR = 17
#: DECA's eye-closure pairs (upper lid, lower lid), 0-based iBUG indices (anchors §1.10).
EYE_PAIRS: tuple[tuple[int, int], ...] = ((37, 41), (38, 40), (43, 47), (44, 46))
#: DECA's lip-distance pairs (upper inner lip, lower inner lip).
LIP_PAIRS: tuple[tuple[int, int], ...] = ((61, 67), (62, 66), (63, 65))
#: Outer eye corners, the inter-ocular normalisation of the 300-W benchmark.
OUTER_EYE_CORNERS = (36, 45)

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

#: Code fields :func:`fit_photometric` can optimise.
PHOTOMETRIC_FIELDS = ("albedo", "light", "shape", "expression", "global_pose", "jaw_pose", "camera")
# Charbonnier epsilon of the colour difference: |d| ~ sqrt(d^2 + eps^2) - eps, smooth at 0.
_COLOUR_EPSILON = 1e-3

# Relative decrease below which an image's fit stops (see batched_lbfgs): the landmark
# objective is in squared pixels (about 1 at the optimum), the photometric one in colour units.
_LANDMARK_TOLERANCE = 1e-5
_PHOTOMETRIC_TOLERANCE = 1e-7

#: Landmarks of the rigid stage: brows, nose and eyes (iBUG 17-47).
RIGID_LANDMARKS = range(17, 48)

# Optimisation variables are scaled so a unit step moves the landmarks by a few pixels:
# radians and log-scale by 0.05 (about 3 degrees, 5 % of the face size), NDC offsets by 0.05
# (5.6 pixels); identity and expression coefficients are used as they are.
_ANGLE_UNIT = 0.05
_LOG_SCALE_UNIT = 0.05
_OFFSET_UNIT = 0.05


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


# --------------------------------------------------------------------------------------------
# Landmark fitting


@dataclass
class _Variables:
    """The optimised tensors, scaled as in the ``_*_UNIT`` constants."""

    shape: Tensor
    expression: Tensor
    global_pose: Tensor
    jaw_pose: Tensor
    log_scale: Tensor  # (B, 1)
    offset: Tensor  # (B, 2) NDC offset s * (tx, ty)

    @staticmethod
    def from_code(code: FaceCode, n_shape: int, n_expression: int) -> _Variables:
        s = code.camera[:, :1]
        return _Variables(
            shape=F.pad(code.shape[:, :n_shape], (0, max(0, n_shape - code.shape.shape[1]))),
            expression=F.pad(
                code.expression[:, :n_expression],
                (0, max(0, n_expression - code.expression.shape[1])),
            ),
            global_pose=code.global_pose / _ANGLE_UNIT,
            jaw_pose=code.jaw_pose / _ANGLE_UNIT,
            log_scale=torch.log(s) / _LOG_SCALE_UNIT,
            offset=s * code.camera[:, 1:] / _OFFSET_UNIT,
        )

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            setattr(self, name, value.detach().clone())

    def tensors(self) -> dict[str, Tensor]:
        return dict(vars(self))

    def camera(self) -> Tensor:
        s = torch.exp(self.log_scale * _LOG_SCALE_UNIT)
        return torch.cat([s, self.offset * _OFFSET_UNIT / s], dim=1)

    def to_code(self, template: FaceCode) -> FaceCode:
        return template.replace(
            shape=self.shape.detach().clone(),
            expression=self.expression.detach().clone(),
            global_pose=(self.global_pose * _ANGLE_UNIT).detach().clone(),
            jaw_pose=(self.jaw_pose * _ANGLE_UNIT).detach().clone(),
            camera=self.camera().detach().clone(),
        )


@dataclass(frozen=True)
class _LandmarkTargets:
    landmarks: Tensor  # (B, 68, 2)
    dense: Tensor | None  # (B, M, 2)
    weights: Tensor  # (68,)
    rigid_weights: Tensor  # (68,)


@dataclass(frozen=True)
class _LandmarkWeights:
    shape: float
    expression: float
    jaw: float
    eye: float
    lip: float
    dense: float
    robust: float | None


def _head_yaw(global_pose: Tensor, neck_pose: Tensor) -> Tensor:
    """(B,) the yaw FLAME's contour follows (root and neck composed), radians."""
    return yaw_of_rotation(axis_angle_to_matrix(global_pose) @ axis_angle_to_matrix(neck_pose))


class _LandmarkProblem:
    """The landmark objective of a batch, with the contour rows held between refreshes.

    The contour rows are re-picked only when :meth:`refresh` is called (after each accepted
    optimiser step): inside a line search they stay fixed, so the objective is smooth there,
    and the gradient flows through the chosen surface points, not the choice. A refresh picks,
    among the rows of the current yaw and of the yaws ``contour_search`` degrees around it,
    the one that fits the target contour best. A contour table is a jumpy function of the yaw
    (each row holds the silhouette points of one whole-degree view), so always taking the
    current yaw's row leaves false minima a degree or two from the true yaw, where the rows
    and the yaw they pull towards agree; letting neighbouring rows compete removes them.
    """

    def __init__(
        self,
        flame: FlameModel,
        variables: _Variables,
        template: FaceCode,
        targets: _LandmarkTargets,
        weights: _LandmarkWeights,
        contour_search: int,
    ):
        self.flame, self.v, self.template = flame, variables, template
        self.targets, self.weights = targets, weights
        self.contour_search = contour_search
        self.rows = self._best_rows()

    def _pose(self) -> FlameOutput:
        v = self.v
        return self.flame(
            v.shape,
            v.expression,
            v.global_pose * _ANGLE_UNIT,
            v.jaw_pose * _ANGLE_UNIT,
            neck_pose=self.template.neck_pose,
            eye_pose=self.template.eye_pose,
        )

    def _contour(self, vertices: Tensor, rows: Tensor) -> Tensor:
        """(B, 17, 2) projected contour points of the given (B,) rows."""
        flame = self.flame
        points = vertices_to_landmarks(
            vertices, flame.faces, flame.dynamic_faces[rows], flame.dynamic_bary[rows]
        )
        return orthographic_project(points.to(self.v.shape.dtype), self.v.camera())[..., :2]

    @torch.no_grad()
    def _best_rows(self) -> Tensor:
        """(B,) the best-fitting contour rows near the current yaw."""
        out = self._pose()
        pose = (self.v.global_pose * _ANGLE_UNIT).to(out.vertices.dtype)
        yaw = _head_yaw(pose, self.template.neck_pose.to(pose.dtype))
        # the current yaw's row first, so that it wins ties
        offsets = [0] + [k for j in range(1, self.contour_search + 1) for k in (j, -j)]
        target = self.targets.landmarks[:, :N_CONTOUR]
        w = self.targets.weights[:N_CONTOUR]
        best_rows, best = None, None
        for k in offsets:
            rows = contour_lut_row(yaw + math.radians(k))
            error = (((self._contour(out.vertices, rows) - target) ** 2).sum(-1) * w).sum(-1)
            if best is None:
                best_rows, best = rows, error
            else:
                better = error < best * (1 - 1e-6)
                best_rows = torch.where(better, rows, best_rows)
                best = torch.where(better, error, best)
        return best_rows

    def refresh(self) -> Tensor:
        """Re-pick the contour rows; (B,) True where they changed."""
        rows = self._best_rows()
        changed = rows != self.rows
        self.rows = rows
        return changed

    def project(self) -> tuple[Tensor, Tensor | None]:
        """Landmarks (B, 68, 2) and dense points (B, M, 2) in crop NDC."""
        dtype = self.v.shape.dtype
        out = self._pose()
        camera = self.v.camera()
        static = orthographic_project(out.landmarks2d[:, N_CONTOUR:].to(dtype), camera)
        lm = torch.cat([self._contour(out.vertices, self.rows), static[..., :2]], dim=1)
        dense = None
        if out.mediapipe is not None:
            dense = orthographic_project(out.mediapipe.to(dtype), camera)[..., :2]
        return lm, dense

    def objective(self, rigid: bool) -> Tensor:
        """(B,) per-image objective in squared pixels of a 224 crop (plus priors)."""
        v, targets, weights = self.v, self.targets, self.weights
        lm, dense = self.project()
        residual = (lm - targets.landmarks) * _PX_PER_NDC
        w = targets.rigid_weights if rigid else targets.weights
        loss = (_robust((residual**2).sum(-1), weights.robust) * w).sum(-1) / w.sum()
        if not rigid:
            for pairs, weight in ((EYE_PAIRS, weights.eye), (LIP_PAIRS, weights.lip)):
                if weight > 0:
                    d = _pair_offsets(lm, pairs) - _pair_offsets(targets.landmarks, pairs)
                    loss = loss + weight * ((d * _PX_PER_NDC) ** 2).sum(-1).mean(-1)
            loss = loss + weights.shape * (v.shape**2).sum(-1)
            loss = loss + weights.expression * (v.expression**2).sum(-1)
            loss = loss + weights.jaw * ((v.jaw_pose * _ANGLE_UNIT) ** 2).sum(-1)
        if targets.dense is not None and weights.dense > 0:
            r = (dense - targets.dense) * _PX_PER_NDC
            loss = loss + weights.dense * _robust((r**2).sum(-1), weights.robust).mean(-1)
        return loss


def _flatten(params: Sequence[Tensor]) -> Tensor:
    """(B, ...) tensors -> (B, P) concatenation."""
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in params], dim=1)


@torch.no_grad()
def _assign(params: Sequence[Tensor], x: Tensor) -> None:
    """Write the (B, P) concatenation ``x`` back into the (B, ...) leaf tensors."""
    offset = 0
    for p in params:
        n = p[0].numel()
        p.copy_(x[:, offset : offset + n].view_as(p))
        offset += n


def _evaluate(objective: Callable[[], Tensor], params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image values (B,) and gradients (B, P) of a batch-separable objective."""
    for p in params:
        p.grad = None
    values = objective()
    values.sum().backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    return values.detach(), _flatten(grads)


def _push(memory: Tensor, new: Tensor, where: Tensor) -> Tensor:
    """Append ``new`` (B, ...) as the newest slot of ``memory`` (B, m, ...) where ``where``."""
    shifted = torch.cat([memory[:, 1:], new[:, None]], dim=1)
    return torch.where(where.view(-1, *[1] * (memory.dim() - 1)), shifted, memory)


def batched_lbfgs(
    objective: Callable[[], Tensor],
    params: Sequence[Tensor],
    max_evaluations: int,
    *,
    memory: int = 60,
    max_backtracks: int = 6,
    tolerance: float = 1e-9,
    history: list[float] | None = None,
    refresh: Callable[[], Tensor] | None = None,
) -> int:
    """Minimise a batch of independent objectives with one L-BFGS per batch entry.

    ``objective()`` returns (B,) values where entry ``b`` depends only on row ``b`` of every
    tensor in ``params`` (a separable objective). All entries share every forward and backward
    pass, but each keeps its own curvature pairs, direction, Armijo backtracking step and
    evaluation budget (Nocedal & Wright, Algorithms 7.4 and 3.1, initial scaling eq. 7.20), so
    an entry follows the same path in a batch as alone. ``torch.optim.LBFGS`` on the summed
    objective couples the entries through one line search and one curvature history instead.

    Args:
        objective: closure computing the (B,) values from the current ``params``.
        params: (B, ...) leaf tensors with ``requires_grad``; updated in place.
        max_evaluations: budget of evaluations per entry (the batch runs until every entry
            has used its budget or converged).
        memory: curvature pairs kept per entry.
        max_backtracks: halvings of the step before an entry drops its curvature pairs.
        tolerance: an entry stops when an accepted step lowers its value by less than
            ``tolerance * (1 + |f|)`` twice in a row, or when a steepest-descent step fails.
        history: if given, the summed objective at every batched evaluation is appended
            (entries not being moved count with their current value).
        refresh: called after every accepted step (``params`` hold the new point); returns a
            (B,) bool mask of the entries whose objective itself changed there (e.g.
            re-picked contour rows), which are evaluated again. Line searches never see such a
            change.

    Returns:
        The number of batched evaluations (forward and backward passes over the batch).
    """
    if max_evaluations <= 0:
        return 0
    x = _flatten(params)
    b, n = x.shape

    def evaluate(current: Tensor, which: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal calls
        f_, g_ = _evaluate(objective, params)
        calls += 1
        used.add_(which.long())
        if history is not None:
            history.append(float(torch.where(which, f_, current).sum()))
        return f_, g_

    calls = 0
    used = torch.zeros(b, dtype=torch.long, device=x.device)  # evaluations spent per entry
    f = x.new_zeros(b)
    f, g = evaluate(f, torch.ones(b, dtype=torch.bool, device=x.device))
    s_mem = x.new_zeros(b, memory, n)
    y_mem = x.new_zeros(b, memory, n)
    rho = x.new_zeros(b, memory)  # 0 marks an empty slot; the newest pair is last
    done = used >= max_evaluations
    stalls = torch.zeros(b, dtype=torch.long, device=x.device)
    while not bool(done.all()):
        # two-loop recursion; empty slots have rho = 0 and drop out
        q = g.clone()
        alpha = x.new_zeros(b, memory)
        for i in range(memory - 1, -1, -1):
            alpha[:, i] = rho[:, i] * (s_mem[:, i] * q).sum(1)
            q = q - alpha[:, i, None] * y_mem[:, i]
        fresh = rho[:, -1] == 0  # no curvature pair yet
        sy = (s_mem[:, -1] * y_mem[:, -1]).sum(1)
        yy = (y_mem[:, -1] ** 2).sum(1)
        gamma = torch.where(
            fresh, 1.0 / g.norm(dim=1).clamp_min(1e-30), sy / yy.clamp_min(1e-30)
        )  # without curvature information, a first step of unit length
        r = gamma[:, None] * q
        for i in range(memory):
            beta = rho[:, i] * (y_mem[:, i] * r).sum(1)
            r = r + (alpha[:, i] - beta)[:, None] * s_mem[:, i]
        d = -r
        slope = (g * d).sum(1)
        uphill = slope >= 0  # not a descent direction: restart from the gradient
        d = torch.where(uphill[:, None], -g / g.norm(dim=1, keepdim=True).clamp_min(1e-30), d)
        rho = torch.where(uphill[:, None], torch.zeros_like(rho), rho)
        fresh = fresh | uphill
        d = torch.where(done[:, None], torch.zeros_like(d), d)
        slope = (g * d).sum(1)

        # Armijo backtracking, every entry with its own step
        t = torch.ones(b, dtype=x.dtype, device=x.device)
        pending = ~done
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        for _ in range(max_backtracks + 1):
            pending = pending & (used < max_evaluations)
            if not bool(pending.any()):
                break
            trial = torch.where(pending[:, None], x + t[:, None] * d, x_new)
            _assign(params, trial)
            f_try, g_try = evaluate(f_new, pending)
            ok = pending & torch.isfinite(f_try) & (f_try <= f + 1e-4 * t * slope)
            x_new = torch.where(ok[:, None], trial, x_new)
            f_new = torch.where(ok, f_try, f_new)
            g_new = torch.where(ok[:, None], g_try, g_new)
            pending = pending & ~ok
            t = torch.where(pending, t * 0.5, t)
        failed = pending  # no acceptable step: forget the pairs, or stop if fresh
        done = done | (failed & fresh)
        rho = torch.where(failed[:, None], torch.zeros_like(rho), rho)

        moved = ~done & ~failed
        s_new, y_new = x_new - x, g_new - g
        curvature = (s_new * y_new).sum(1)
        store = moved & (curvature > 1e-10 * (y_new**2).sum(1).clamp_min(1e-30))
        if bool(store.any()):
            s_mem = _push(s_mem, s_new, store)
            y_mem = _push(y_mem, y_new, store)
            rho = _push(rho, 1.0 / curvature.where(store, torch.ones_like(curvature)), store)
        small = moved & (f - f_new <= tolerance * (1 + f.abs()))
        stalls = torch.where(small, stalls + 1, torch.where(moved, 0, stalls))
        done = done | (stalls >= 2)
        x, f, g = x_new, f_new, g_new
        _assign(params, x)
        if refresh is not None:
            changed = refresh() & ~done & (used < max_evaluations)
            if bool(changed.any()):
                f_again, g_again = evaluate(f, changed)
                f = torch.where(changed, f_again, f)
                g = torch.where(changed[:, None], g_again, g)
        done = done | (used >= max_evaluations)
    _assign(params, x)
    return calls


def _minimise(
    objective: Callable[[], Tensor],
    params: list[Tensor],
    steps: int,
    optimizer: str,
    lr: float,
    history: list[float],
    tolerance: float,
    refresh: Callable[[], Tensor] | None = None,
) -> int:
    """Minimise the (B,) separable ``objective``; returns the evaluations used.

    ``"lbfgs"``: :func:`batched_lbfgs` with the given relative ``tolerance``;
    ``"torch-lbfgs"``: ``torch.optim.LBFGS`` with a strong-Wolfe line search on the summed
    objective; ``"adam"``: ``steps`` Adam steps with learning rate ``lr``. ``refresh`` is
    called after accepted steps (batched L-BFGS) or before every evaluation (the others).
    """
    if steps <= 0:
        return 0
    if optimizer == "lbfgs":
        return batched_lbfgs(
            objective, params, steps, tolerance=tolerance, history=history, refresh=refresh
        )
    if optimizer == "torch-lbfgs":
        evaluations = 0
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=steps,
            max_eval=steps,
            history_size=10,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            nonlocal evaluations
            opt.zero_grad(set_to_none=True)
            if refresh is not None:
                refresh()
            loss = objective().sum()
            loss.backward()
            evaluations += 1
            history.append(float(loss.detach()))
            return loss

        opt.step(closure)
        return evaluations
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            if refresh is not None:
                refresh()
            loss = objective().sum()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
        return steps
    raise ValueError(f"optimizer must be 'lbfgs', 'torch-lbfgs' or 'adam', got {optimizer!r}")


def fit_landmarks(
    flame: FlameModel,
    landmarks: Tensor,
    *,
    dense: Tensor | None = None,
    n_shape: int = 100,
    n_expression: int = 50,
    steps: int = 100,
    rigid_steps: int = 20,
    shape_weight: float = 0.1,
    expression_weight: float = 0.1,
    jaw_weight: float = 1.0,
    eye_weight: float = 1.0,
    lip_weight: float = 0.5,
    dense_weight: float = 1.0,
    robust: float | None = None,
    optimizer: str = "lbfgs",
    lr: float = 0.1,
    contour_search: int = 4,
    init: FaceCode | None = None,
    yaws: Sequence[float] = DEFAULT_YAWS,
    pitches: Sequence[float] = DEFAULT_PITCHES,
) -> FitResult:
    """Fit identity, expression, global and jaw pose and camera to 68 landmarks.

    The objective per image, in squared pixels of a 224 crop, is

    * ``sum_i w_i rho(|p_i - t_i|^2) / sum_i w_i``: DECA's weights (:func:`landmark_weights`),
      ``p`` the projected landmarks, the 17 contour points taken from the rows of DECA's
      yaw-indexed table that fit best near the current yaw (see :class:`_LandmarkProblem`);
    * ``+ eye_weight * mean_k |e_k - e_k*|^2 + lip_weight * mean_k |m_k - m_k*|^2``: DECA's
      eye-closure and lip pairs (:data:`EYE_PAIRS`, :data:`LIP_PAIRS`), compared as 2D offsets
      ``upper - lower`` rather than DECA's distances, so an inverted lid or lip (same
      distance, wrong side) is not a minimum;
    * ``+ dense_weight * mean_j rho(|q_j - u_j|^2)``: the MediaPipe points, if given;
    * ``+ shape_weight |beta|^2 + expression_weight |psi|^2 + jaw_weight |theta_jaw|^2``
      (radians); the defaults suit about 1 pixel of landmark noise, lower them for exact
      targets, raise them for a noisy detector;

    with ``rho`` the identity or a pseudo-Huber function of scale ``robust`` pixels. The
    rigid stage uses only the first term, on :data:`RIGID_LANDMARKS`.

    Args:
        flame: the head (needs the 68-landmark embedding; with ``dense`` also MediaPipe's).
            Its buffers are not modified and receive no gradients.
        landmarks: (B, 68, 2) targets in NDC of the crop, DECA's order (17 contour + 51).
            Their dtype and device are those of the fit and of the returned code.
        dense: (B, M, 2) MediaPipe targets in crop NDC, in the order of the head's MediaPipe
            embedding, or None.
        n_shape: identity coefficients fitted (at most ``flame.n_shape``).
        n_expression: expression coefficients fitted (at most ``flame.n_expression``).
        steps: evaluation budget per image of the full stage; an image stops earlier once its
            objective no longer decreases (relative change below 1e-5 twice).
        rigid_steps: evaluation budget per image of the rigid stage.
        shape_weight, expression_weight, jaw_weight: L2 priors (coefficients ~ N(0, 1)).
        eye_weight, lip_weight, dense_weight: weights of the optional terms (0 disables).
        robust: pseudo-Huber scale in pixels, or None for squared distances.
        optimizer: ``"lbfgs"`` (:func:`batched_lbfgs`, the default), or the baselines
            ``"torch-lbfgs"`` (``torch.optim.LBFGS`` on the summed batch objective) and
            ``"adam"`` (``torch.optim.Adam``); see ``benchmarks/bench_fitting.py``.
        lr: Adam's learning rate, in the scaled variables (unused otherwise).
        contour_search: degrees around the current yaw whose contour rows compete.
        init: start from this code (batch B) instead of the closed-form initialisation; its
            light, albedo, neck and eye poses are carried over unchanged.
        yaws, pitches: hypotheses of the closed-form initialisation, degrees.

    Returns:
        :class:`FitResult`: the fitted code (albedo and light neutral unless ``init`` gives
        them) and the final errors of its DECA landmarks (whole-degree contour row, as
        :meth:`FlameModel.forward` picks it) against ``landmarks``.

    Raises:
        ValueError: on malformed targets or a head without the needed embeddings.
    """
    start = time.perf_counter()
    _check_points("landmarks", landmarks, N_LANDMARKS)
    b, dtype, device = landmarks.shape[0], landmarks.dtype, landmarks.device
    if not flame.has_landmarks:
        raise ValueError(f"{flame.name} has no 68-landmark embedding; fitting needs one")
    if dense is not None:
        if not flame.has_mediapipe:
            raise ValueError(f"dense targets given but {flame.name} has no MediaPipe embedding")
        m = flame.mediapipe_faces.shape[0]
        _check_points("dense", dense, m)
        if dense.shape[0] != b:
            raise ValueError(f"dense has batch {dense.shape[0]}, landmarks {b}")
        dense = dense.to(device=device, dtype=dtype)
    n_shape = min(n_shape, flame.n_shape)
    n_expression = min(n_expression, flame.n_expression)

    if init is None:
        pose, camera, _ = initialise_pose(flame, landmarks, yaws=yaws, pitches=pitches)
        template = FaceCode.neutral(b, n_shape, n_expression, device=device, dtype=dtype).replace(
            global_pose=pose, camera=camera
        )
    else:
        if init.batch_size != b:
            raise ValueError(f"init has batch {init.batch_size}, landmarks {b}")
        template = init.to(device=device, dtype=dtype)
    v = _Variables.from_code(template, n_shape, n_expression)
    lw = landmark_weights(device, dtype)
    rigid_lw = torch.zeros_like(lw)
    rigid_lw[RIGID_LANDMARKS] = lw[RIGID_LANDMARKS]
    targets = _LandmarkTargets(landmarks.detach(), dense, lw, rigid_lw)
    weights = _LandmarkWeights(
        shape_weight, expression_weight, jaw_weight, eye_weight, lip_weight, dense_weight, robust
    )
    tensors = list(v.tensors().values())
    for t in tensors:
        t.requires_grad_(True)
    problem = _LandmarkProblem(flame, v, template, targets, weights, contour_search)
    history: list[float] = []
    evaluations = 0
    for params, budget, rigid in (
        ([v.global_pose, v.log_scale, v.offset], rigid_steps, True),
        (tensors, steps, False),
    ):
        evaluations += _minimise(
            lambda rigid=rigid: problem.objective(rigid),
            params,
            budget,
            optimizer,
            lr,
            history,
            _LANDMARK_TOLERANCE,
            problem.refresh,
        )
    code = v.to_code(template)
    px, iod = landmark_errors(project_landmarks(flame, code), landmarks)
    return FitResult(
        code=code,
        landmark_error=px.detach(),
        landmark_error_iod=iod.detach(),
        photometric_error=None,
        history=tuple(history),
        steps=evaluations,
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------
# Photometric fitting


def _photometric_error(rendered: Tensor, image: Tensor, mask: Tensor, smooth: bool) -> Tensor:
    """(B,) mean absolute colour difference inside ``mask`` (B, 1, H, W)."""
    d = rendered - image
    d = torch.sqrt(d * d + _COLOUR_EPSILON**2) - _COLOUR_EPSILON if smooth else d.abs()
    area = mask.sum((1, 2, 3)).clamp_min(1.0) * image.shape[1]
    return (d * mask).sum((1, 2, 3)) / area


def fit_photometric(
    renderer: FaceRenderer,
    images: Tensor,
    code: FaceCode,
    *,
    mask: Tensor | None = None,
    steps: int = 100,
    optimise: Sequence[str] = ("albedo", "light"),
    size: int | None = 112,
    albedo_weight: float = 1e-4,
    light_weight: float = 0.1,
    shape_weight: float = 1e-3,
    expression_weight: float = 1e-3,
    optimizer: str = "lbfgs",
    lr: float = 0.05,
) -> FitResult:
    """Fit albedo and light (optionally geometry) so the render matches the crops.

    The objective per image is the mean absolute colour difference between
    ``renderer(code).buffers.rendered`` and the image over the pixels covered by the rendered
    head (times ``mask``), smoothed at 0 (Charbonnier, epsilon 1e-3), plus
    ``albedo_weight |alpha|^2 + light_weight mean((l - mean_rgb(l))^2)`` (DECA's light prior,
    which favours white light) and, when optimised, ``shape_weight |beta|^2`` and
    ``expression_weight |psi|^2``. There are no silhouette gradients: the geometry only moves
    through shading and texture inside the rendered mask, so fit it from landmarks first.

    Args:
        renderer: the head to render (needs its albedo space to fit ``albedo``). Its buffers
            are not modified and receive no gradients.
        images: (B, 3, H, W) RGB crops in [0, 1], the crops ``code.camera`` refers to. Their
            dtype and device are those of the fit.
        code: the starting code, batch B (e.g. :func:`fit_landmarks`'s).
        mask: (B, 1, H, W) pixels to compare (e.g. a skin segmentation) in [0, 1], or None.
        steps: budget of objective evaluations (renders with a backward pass).
        optimise: which :class:`FaceCode` fields to fit, from :data:`PHOTOMETRIC_FIELDS`.
        size: render and compare at ``size`` pixels on the shorter side (images and mask are
            resized with antialiasing); None keeps the images' resolution.
        albedo_weight, light_weight, shape_weight, expression_weight: prior weights.
        optimizer: ``"lbfgs"`` (:func:`batched_lbfgs`), ``"torch-lbfgs"`` or ``"adam"``.
        lr: Adam's learning rate.

    Returns:
        :class:`FitResult` with ``photometric_error`` the final mean absolute colour error
        (unsmoothed) inside the mask at the fitting resolution; no landmark errors.

    Raises:
        ValueError: on malformed inputs or unknown fields.
    """
    start = time.perf_counter()
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if code.batch_size != b:
        raise ValueError(f"code has batch {code.batch_size}, images {b}")
    if mask is not None and (mask.dim() != 4 or mask.shape != (b, 1, h, w)):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(b, 1, h, w)}")
    unknown = set(optimise) - set(PHOTOMETRIC_FIELDS)
    if unknown:
        raise ValueError(f"cannot optimise {sorted(unknown)}; choose from {PHOTOMETRIC_FIELDS}")
    fields = [f for f in PHOTOMETRIC_FIELDS if f in optimise]
    if renderer.n_albedo == 0 and "albedo" in fields:
        fields.remove("albedo")  # a constant grey albedo has nothing to fit
    dtype, device = images.dtype, images.device
    images = images.detach()
    if size is not None and min(h, w) != size:
        factor = size / min(h, w)
        out_size = (max(1, round(h * factor)), max(1, round(w * factor)))
        images = F.interpolate(images, out_size, mode="bilinear", antialias=True)
        if mask is not None:
            mask = F.interpolate(mask.to(dtype), out_size, mode="bilinear", antialias=True)
    out_size = tuple(images.shape[-2:])

    code = code.to(device=device, dtype=dtype)
    variables = {f: getattr(code, f).detach().clone().requires_grad_(True) for f in fields}

    def current() -> FaceCode:
        return code.replace(**variables)

    def objective(smooth: bool = True) -> tuple[Tensor, Tensor]:
        c = current()
        buffers = renderer(c, out_size).buffers
        covered = buffers.mask if mask is None else buffers.mask * mask
        error = _photometric_error(buffers.rendered, images, covered.detach(), smooth)
        loss = error
        if "albedo" in variables:
            loss = loss + albedo_weight * (c.albedo**2).sum(-1)
        if "light" in variables:
            grey = c.light.mean(-1, keepdim=True)
            loss = loss + light_weight * ((c.light - grey) ** 2).mean((1, 2))
        if "shape" in variables:
            loss = loss + shape_weight * (c.shape**2).sum(-1)
        if "expression" in variables:
            loss = loss + expression_weight * (c.expression**2).sum(-1)
        return loss, error

    history: list[float] = []
    evaluations = _minimise(
        lambda: objective()[0],
        list(variables.values()),
        steps,
        optimizer,
        lr,
        history,
        _PHOTOMETRIC_TOLERANCE,
    )
    with torch.no_grad():
        final = current().detach()
        _, error = objective(smooth=False)
    return FitResult(
        code=final,
        landmark_error=None,
        landmark_error_iod=None,
        photometric_error=error.detach(),
        history=tuple(history),
        steps=evaluations,
        seconds=time.perf_counter() - start,
    )


def fit(
    renderer: FaceRenderer,
    images: Tensor,
    landmarks: Tensor,
    *,
    photometric: bool = True,
    dense: Tensor | None = None,
    mask: Tensor | None = None,
    landmark_steps: int = 100,
    photometric_steps: int = 100,
    optimise: Sequence[str] = ("albedo", "light"),
    shape_weight: float = 0.1,
    expression_weight: float = 0.1,
    init: FaceCode | None = None,
) -> FitResult:
    """Landmark fit (:func:`fit_landmarks`) followed by a photometric one (:func:`fit_photometric`).

    Args:
        renderer: the head; its FLAME layer is fitted to the landmarks.
        images: (B, 3, H, W) RGB crops in [0, 1].
        landmarks: (B, 68, 2) targets in NDC of the crops (DECA's order).
        photometric: run the photometric stage.
        dense: (B, M, 2) MediaPipe targets, or None.
        mask: (B, 1, H, W) pixels to compare in the photometric stage, or None.
        landmark_steps, photometric_steps: evaluation budgets per image of the two fits.
        optimise: fields of the photometric stage (:data:`PHOTOMETRIC_FIELDS`).
        shape_weight, expression_weight: priors of the landmark fit.
        init: starting code for the landmark fit, or None for the closed-form initialisation.

    Returns:
        :class:`FitResult` of both stages: the final code, its landmark errors (recomputed
        after the photometric stage), the photometric error, the joined history and the total
        evaluations and time.
    """
    start = time.perf_counter()
    if images.shape[0] != landmarks.shape[0]:
        raise ValueError(f"images have batch {images.shape[0]}, landmarks {landmarks.shape[0]}")
    geometry = fit_landmarks(
        renderer.flame,
        landmarks.to(images.dtype),
        dense=dense,
        n_shape=renderer.flame.n_shape,
        n_expression=renderer.flame.n_expression,
        steps=landmark_steps,
        shape_weight=shape_weight,
        expression_weight=expression_weight,
        init=init,
    )
    if not photometric:
        return geometry
    colour = fit_photometric(
        renderer, images, geometry.code, mask=mask, steps=photometric_steps, optimise=optimise
    )
    px, iod = landmark_errors(project_landmarks(renderer.flame, colour.code), landmarks)
    return FitResult(
        code=colour.code,
        landmark_error=px,
        landmark_error_iod=iod,
        photometric_error=colour.photometric_error,
        history=geometry.history + colour.history,
        steps=geometry.steps + colour.steps,
        seconds=time.perf_counter() - start,
    )

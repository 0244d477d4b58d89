"""The landmark stage of the face fit: identity, expression, global and jaw pose and camera
fitted to DECA's 68 landmarks (and optionally MediaPipe points), see :func:`fit_landmarks`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.flame.model import FlameModel
from emorig.geometry.camera import orthographic_project
from emorig.geometry.landmarks import contour_lut_row, vertices_to_landmarks, yaw_of_rotation
from emorig.geometry.rotations import axis_angle_to_matrix
from emorig.optim.minimise import minimise
from emorig.reconstruct.fitting_common import (
    _PX_PER_NDC,
    EYE_PAIRS,
    LIP_PAIRS,
    N_CONTOUR,
    N_LANDMARKS,
    FitResult,
    _check_points,
    _pair_offsets,
    _robust,
    fit_quality,
    landmark_errors,
    landmark_head,
    landmark_weights,
    project_landmarks,
)
from emorig.reconstruct.fitting_init import DEFAULT_PITCHES, DEFAULT_YAWS, initialise_pose
from emorig.types import FaceCode, FlameOutput

__all__ = ["RIGID_LANDMARKS", "fit_landmarks"]

# Relative decrease below which an image's fit stops (see batched_lbfgs): the landmark
# objective is in squared pixels (about 1 at the optimum).
_LANDMARK_TOLERANCE = 1e-5

#: Landmarks of the rigid stage: brows, nose and eyes (iBUG 17-47).
RIGID_LANDMARKS = range(17, 48)

# Optimisation variables are scaled so a unit step moves the landmarks by a few pixels:
# radians and log-scale by 0.05 (about 3 degrees, 5 % of the face size), NDC offsets by 0.05
# (5.6 pixels); identity and expression coefficients are used as they are.
_ANGLE_UNIT = 0.05
_LOG_SCALE_UNIT = 0.05
_OFFSET_UNIT = 0.05


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

    def require_grad(self) -> None:
        """Make every tensor require gradients (they are the leaves being optimised)."""
        for t in self.tensors().values():
            t.requires_grad_(True)

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


#: Yaw (degrees) up to which both contour sides keep their full weight, and the yaw from
#: which the far side keeps only ``occluded_contour`` of it (linear in between).
CONTOUR_FADE = (10.0, 40.0)


def contour_factors(yaw: Tensor, occluded: float) -> Tensor:
    """(B,) head yaws (radians) -> (B, 17) weight factors of the 17 contour landmarks.

    On a turned face the far side's contour is the silhouette, which detectors place poorly
    (it slides along the cheek, or onto hair and background) and which only a few rows of
    DECA's table model; fitted at full weight it pulls the identity into a deformed skull
    while the landmark error stays low. The far side (iBUG 9-16 at a positive yaw, the
    subject's left; 0-7 at a negative one) fades linearly from 1 at ``CONTOUR_FADE[0]``
    degrees to ``occluded`` at ``CONTOUR_FADE[1]``; the chin (8) and the near side keep 1.
    ``fit_landmarks``'s 0.2 keeps turned real faces (yaw 15 to 30 degrees) from fitting identity
    coefficients of 6 to 8 standard deviations (measured: at most 3.8 with it).
    """
    start, end = (math.radians(a) for a in CONTOUR_FADE)
    t = ((yaw.abs() - start) / (end - start)).clamp(0, 1)
    fade = 1 - (1 - occluded) * t  # (B,)
    ones = torch.ones(yaw.shape[0], N_CONTOUR, dtype=yaw.dtype, device=yaw.device)
    left = torch.arange(N_CONTOUR, device=yaw.device) > 8  # subject's left: iBUG 9-16
    right = torch.arange(N_CONTOUR, device=yaw.device) < 8
    far = torch.where((yaw > 0)[:, None], left[None], right[None])
    return torch.where(far, fade[:, None] * ones, ones)


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
        occluded_contour: float = 1.0,
    ):
        self.flame, self.v, self.template = flame, variables, template
        self.occluded_contour = occluded_contour
        self.targets, self.weights = targets, weights
        self.contour_search = contour_search
        self.rows, self.contour_factor = self._best_rows()

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
    def _best_rows(self) -> tuple[Tensor, Tensor]:
        """(B,) the best-fitting contour rows near the current yaw, and (B, 17) the contour
        weight factors of that yaw (:func:`contour_factors`)."""
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
        return best_rows, contour_factors(yaw, self.occluded_contour).to(self.v.shape.dtype)

    def refresh(self) -> Tensor:
        """Re-pick the contour rows and weights; (B,) True where they changed."""
        rows, factor = self._best_rows()
        changed = (rows != self.rows) | ((factor - self.contour_factor).abs() > 1e-6).any(-1)
        self.rows, self.contour_factor = rows, factor
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
        w = torch.cat(
            [w[:N_CONTOUR] * self.contour_factor, w[N_CONTOUR:].expand(lm.shape[0], -1)], 1
        )
        loss = (_robust((residual**2).sum(-1), weights.robust) * w).sum(-1) / w.sum(-1)
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


def _checked_targets(flame: FlameModel, landmarks: Tensor, dense: Tensor | None) -> Tensor | None:
    """Check the targets against the head; ``dense`` in the dtype and on the device of
    ``landmarks`` (or None)."""
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
    return dense


def _starting_code(
    flame: FlameModel,
    landmarks: Tensor,
    init: FaceCode | None,
    sizes: tuple[int, int],
    yaws: Sequence[float],
    pitches: Sequence[float],
) -> FaceCode:
    """``init`` in the landmarks' dtype and device, or a neutral code with ``sizes`` (identity,
    expression) coefficients posed by :func:`~emorig.reconstruct.fitting_init.initialise_pose`.
    """
    b, dtype, device = landmarks.shape[0], landmarks.dtype, landmarks.device
    n_shape, n_expression = sizes
    if init is None:
        pose, camera, _ = initialise_pose(flame, landmarks, yaws=yaws, pitches=pitches)
        return FaceCode.neutral(b, n_shape, n_expression, device=device, dtype=dtype).replace(
            global_pose=pose, camera=camera
        )
    if init.batch_size != b:
        raise ValueError(f"init has batch {init.batch_size}, landmarks {b}")
    return init.to(device=device, dtype=dtype)


def _landmark_targets(landmarks: Tensor, dense: Tensor | None) -> _LandmarkTargets:
    """The targets with DECA's weights, and the same restricted to :data:`RIGID_LANDMARKS`."""
    lw = landmark_weights(landmarks.device, landmarks.dtype)
    rigid_lw = torch.zeros_like(lw)
    rigid_lw[RIGID_LANDMARKS] = lw[RIGID_LANDMARKS]
    return _LandmarkTargets(landmarks.detach(), dense, lw, rigid_lw)


def _run_stages(
    problem: _LandmarkProblem,
    budgets: tuple[int, int],
    optimizer: str,
    lr: float,
) -> tuple[int, list[float]]:
    """The rigid stage (global pose and camera) then the full one, with ``(rigid, full)``
    evaluation budgets; the evaluations used and the objective's history."""
    v = problem.v
    rigid_steps, steps = budgets
    tensors = list(v.tensors().values())
    history: list[float] = []
    evaluations = 0
    for params, budget, rigid in (
        ([v.global_pose, v.log_scale, v.offset], rigid_steps, True),
        (tensors, steps, False),
    ):
        evaluations += minimise(
            lambda rigid=rigid: problem.objective(rigid),
            params,
            budget,
            optimizer,
            lr,
            history,
            _LANDMARK_TOLERANCE,
            problem.refresh,
        )
    return evaluations, history


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
    occluded_contour: float = 0.2,
    init: FaceCode | None = None,
    yaws: Sequence[float] = DEFAULT_YAWS,
    pitches: Sequence[float] = DEFAULT_PITCHES,
    restrict_head: bool = True,
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
        n_shape, n_expression: coefficients fitted (at most the head's ``n_shape`` and so on).
        steps: evaluation budget per image of the full stage; an image stops earlier once its
            objective no longer decreases (relative change below 1e-5 twice).
        rigid_steps: evaluation budget per image of the rigid stage.
        shape_weight, expression_weight, jaw_weight: L2 priors (coefficients ~ N(0, 1)).
        eye_weight, lip_weight, dense_weight: weights of the optional terms (0 disables).
        robust: pseudo-Huber scale in pixels, or None for squared distances.
        optimizer: ``"lbfgs"`` (:func:`~emorig.optim.lbfgs.batched_lbfgs`), or the baselines
            ``"torch-lbfgs"`` and ``"adam"`` (:func:`~emorig.optim.minimise.minimise`).
        lr: Adam's learning rate, in the scaled variables (unused otherwise).
        contour_search: degrees around the current yaw whose contour rows compete.
        occluded_contour: weight the far side's contour keeps on a face turned by 40 degrees
            or more (:func:`contour_factors`; 1: no fading).
        init: start from this code (batch B) instead of the closed-form initialisation; its
            light, albedo, neck and eye poses are carried over unchanged.
        yaws, pitches: hypotheses of the closed-form initialisation, degrees.
        restrict_head: pose only the vertices the landmarks use (same landmarks, faster:
            :func:`~emorig.reconstruct.fitting_common.landmark_head`); False: the whole head.

    Returns:
        :class:`FitResult`: the fitted code (albedo and light neutral unless ``init`` gives
        them) and the final errors of its DECA landmarks (whole-degree contour row, as
        :meth:`FlameModel.forward` picks it) against ``landmarks``.

    Raises:
        ValueError: on malformed targets or a head without the needed embeddings.
    """
    start = time.perf_counter()
    dense = _checked_targets(flame, landmarks, dense)
    sizes = (min(n_shape, flame.n_shape), min(n_expression, flame.n_expression))
    if restrict_head:
        flame = landmark_head(flame)  # the same landmarks from the vertices they use
    template = _starting_code(flame, landmarks, init, sizes, yaws, pitches)
    v = _Variables.from_code(template, *sizes)
    v.require_grad()
    weights = _LandmarkWeights(
        shape_weight, expression_weight, jaw_weight, eye_weight, lip_weight, dense_weight, robust
    )
    targets = _landmark_targets(landmarks, dense)
    contour = (contour_search, occluded_contour)
    problem = _LandmarkProblem(flame, v, template, targets, weights, *contour)
    evaluations, history = _run_stages(problem, (rigid_steps, steps), optimizer, lr)
    code = v.to_code(template)
    px, iod = landmark_errors(project_landmarks(flame, code), landmarks)
    seconds = time.perf_counter() - start
    return FitResult(
        code, px.detach(), iod.detach(), None, tuple(history), evaluations, seconds,
        fit_quality(code, px),
    )  # fmt: skip

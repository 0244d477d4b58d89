"""Album fitting: one identity (shape and albedo) shared by every photo of one person, with
each photo's own expression, pose, camera and light, see :func:`fit_album`.

A single photo leaves the identity poorly determined: expression, pose and the detector's
noise all trade against it, and the prior decides what the landmarks cannot. Several photos of
the same person constrain one identity from several views and expressions, so its error to the
truth drops below that of any one photo's fit, and below the mean of the per-photo shapes
(measured in ``tests/reconstruct/test_fitting_album.py``). This is what DiffusionRig's stage 2
wants: one identity for the whole album.

The joint objective couples the photos through the shared coefficients, so it is not
batch-separable and runs under ``torch.optim.LBFGS`` on the mean of the per-photo objectives
(each photo's landmark objective of :func:`~emorig.reconstruct.fitting_landmarks.fit_landmarks`
with its prior, so the prior weighs as in a single-photo fit), starting from the per-photo fits
with their mean identity.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from emorig.optim.minimise import minimise
from emorig.reconstruct.fitting_common import (
    FitResult,
    fit_quality,
    landmark_errors,
    landmark_head,
    project_landmarks,
)
from emorig.reconstruct.fitting_landmarks import (
    _LANDMARK_TOLERANCE,
    _landmark_targets,
    _LandmarkProblem,
    _LandmarkWeights,
    _Variables,
    fit_landmarks,
)
from emorig.reconstruct.fitting_photometric import (
    _PHOTOMETRIC_TOLERANCE,
    _PhotometricPriors,
    _resized,
    _ShadingProblem,
)
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

__all__ = ["fit_album"]


def _shared_landmarks(
    flame, landmarks: Tensor, start: FaceCode, steps: int, priors: tuple[float, float], occluded
) -> tuple[FaceCode, int, list[float]]:
    """The joint landmark stage: one identity, per-photo expression, pose, jaw and camera."""
    b = landmarks.shape[0]
    v = _Variables.from_code(start, start.shape.shape[1], start.expression.shape[1])
    shared = v.shape.mean(0, keepdim=True).detach().clone().requires_grad_(True)
    v.require_grad()
    v.shape = shared.expand(b, -1)
    weights = _LandmarkWeights(priors[0], priors[1], 1.0, 1.0, 0.5, 0.0, None)
    targets = _landmark_targets(landmarks, None)
    problem = _LandmarkProblem(flame, v, start, targets, weights, 4, occluded)

    def objective() -> Tensor:
        v.shape = shared.expand(b, -1)
        return problem.objective(False).mean()[None]

    params = [shared, v.expression, v.global_pose, v.jaw_pose, v.log_scale, v.offset]
    history: list[float] = []
    used = minimise(objective, params, steps, "torch-lbfgs", 0.0, history, _LANDMARK_TOLERANCE)
    for _ in range(2):  # the contour rows follow the new yaws; a short restart settles them
        problem.refresh()
        used += minimise(
            objective, params, steps // 4, "torch-lbfgs", 0.0, history, _LANDMARK_TOLERANCE
        )
    v.shape = shared.detach().expand(b, -1)
    return v.to_code(start), used, history


def _shared_albedo(
    renderer: FaceRenderer, images: Tensor, code: FaceCode, steps: int, size: int | None
) -> tuple[FaceCode, Tensor, int, list[float]]:
    """The joint photometric stage: one albedo, per-photo light (geometry fixed)."""
    b = images.shape[0]
    images, _ = _resized(images.detach(), None, size)
    shared = code.albedo.mean(0, keepdim=True).detach().clone().requires_grad_(True)
    light = code.light.detach().clone().requires_grad_(True)
    variables = {"albedo": shared.expand(b, -1), "light": light}
    problem = _ShadingProblem(
        renderer, images, None, code, variables, _PhotometricPriors(1e-4, 0.1, 0.0, 0.0)
    )

    def objective() -> Tensor:
        variables["albedo"] = shared.expand(b, -1)
        return problem.objective()[0].mean()[None]

    history: list[float] = []
    used = minimise(
        objective, [shared, light], steps, "torch-lbfgs", 0.0, history, _PHOTOMETRIC_TOLERANCE
    )
    with torch.no_grad():
        variables["albedo"] = shared.expand(b, -1)
        _, error = problem.objective(smooth=False)
        final = problem.current().detach()
    return final, error, used, history


def fit_album(
    renderer: FaceRenderer,
    images: Tensor | None,
    landmarks: Tensor,
    *,
    photometric: bool = True,
    landmark_steps: int = 100,
    album_steps: int = 150,
    photometric_steps: int = 100,
    shape_weight: float = 0.1,
    expression_weight: float = 0.1,
    occluded_contour: float = 0.2,
    photometric_size: int | None = 112,
) -> FitResult:
    """Fit one identity (shape and albedo) to several photos of one person.

    First every photo is fitted alone (:func:`~emorig.reconstruct.fitting_landmarks.
    fit_landmarks`, batched); then, from their mean identity, one shape and each photo's
    expression, global and jaw pose and camera are fitted to all the landmarks at once; with
    ``photometric``, one albedo and each photo's light are then fitted to the pixels.

    Args:
        renderer: the head.
        images: (B, 3, H, W) DECA crops in [0, 1] (only read with ``photometric``), or None.
        landmarks: (B, 68, 2) targets in NDC of the crops (DECA's order), one photo each.
        photometric: also fit one albedo and per-photo light.
        landmark_steps: evaluation budget of the per-photo fits.
        album_steps: evaluation budget of the joint landmark stage.
        photometric_steps: evaluation budget of the joint photometric stage.
        shape_weight, expression_weight: priors, as in a single-photo fit (the objective is the
            mean of the photos' objectives).
        occluded_contour: far-side contour weight on turned faces (see ``fit_landmarks``).
        photometric_size: resolution of the photometric stage.

    Returns:
        :class:`~emorig.reconstruct.fitting_common.FitResult` of batch B: every row has the
        same ``shape`` (and ``albedo`` with ``photometric``), per-photo landmark errors and
        quality records.
    """
    start_time = time.perf_counter()
    if photometric and (images is None or images.shape[0] != landmarks.shape[0]):
        raise ValueError("the photometric album fit needs one image per landmark set")
    alone = fit_landmarks(
        renderer.flame,
        landmarks,
        steps=landmark_steps,
        shape_weight=shape_weight,
        expression_weight=expression_weight,
        occluded_contour=occluded_contour,
    )
    head = landmark_head(renderer.flame)
    code, steps, history = _shared_landmarks(
        head,
        landmarks.detach(),
        alone.code,
        album_steps,
        (shape_weight, expression_weight),
        occluded_contour,
    )
    photo_error = None
    if photometric:
        assert images is not None
        code = code.to(dtype=images.dtype, device=images.device)
        code, photo_error, used, more = _shared_albedo(
            renderer, images, code, photometric_steps, photometric_size
        )
        steps, history = steps + used, history + more
    px, iod = landmark_errors(project_landmarks(head, code), landmarks)
    return FitResult(
        code=code,
        landmark_error=px,
        landmark_error_iod=iod,
        photometric_error=photo_error,
        history=tuple(alone.history) + tuple(history),
        steps=alone.steps + steps,
        seconds=time.perf_counter() - start_time,
        quality=fit_quality(code, px),
    )

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
each image has its own L-BFGS state, line search and budget
(:func:`~emorig.optim.lbfgs.batched_lbfgs`), so an image gets the same fit in a batch as
alone. The contour points are DECA's yaw-dependent ones; how their rows are picked is
explained in :class:`emorig.reconstruct.fitting_landmarks._LandmarkProblem`.

:func:`fit_photometric` fits albedo and light (optionally geometry) to the pixels with the
same optimiser, and :func:`fit` chains the two.

Speed (``benchmarks/bench_fitting.py``): the landmark stage evaluates only the vertices the
landmarks use (:func:`~emorig.reconstruct.fitting_common.landmark_head`) and the photometric
stage, whose geometry is fixed, rasterizes once and only re-shades per evaluation; both give
the same objectives as posing and rendering the whole head (``fast=False``), about 0.3 s per
photo in batches of 8 on 2 CPU cores instead of several seconds.

Robustness: on a turned face the far side's contour (the silhouette, which detectors place
poorly) fades to a fifth of its weight (:func:`~emorig.reconstruct.fitting_landmarks.
contour_factors`), so that it cannot pull the identity into a deformed skull.

Every result carries a quality record per image
(:class:`~emorig.reconstruct.fitting_common.FitQuality`: landmark error, prior scores,
``ok`` / ``doubtful``). :func:`~emorig.reconstruct.fitting_album.fit_album` fits one identity
to several photos of one person.

The stages live in their own modules, re-exported here: :mod:`~emorig.reconstruct.fitting_common`
(landmark conventions, weights, errors, the quality record and :class:`FitResult`),
:mod:`~emorig.reconstruct.fitting_init` (the closed-form initialisation),
:mod:`~emorig.reconstruct.fitting_landmarks` and :mod:`~emorig.reconstruct.fitting_photometric`;
the optimiser is :mod:`emorig.optim.lbfgs`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import Tensor

from emorig.optim.lbfgs import batched_lbfgs
from emorig.reconstruct.fitting_common import (
    CROP_SIZE,
    EYE_PAIRS,
    LIP_PAIRS,
    FitQuality,
    FitResult,
    fit_quality,
    landmark_errors,
    landmark_weights,
    project_landmarks,
)
from emorig.reconstruct.fitting_common import N_CONTOUR as N_CONTOUR
from emorig.reconstruct.fitting_common import N_LANDMARKS as N_LANDMARKS
from emorig.reconstruct.fitting_common import OUTER_EYE_CORNERS as OUTER_EYE_CORNERS
from emorig.reconstruct.fitting_init import DEFAULT_PITCHES as DEFAULT_PITCHES
from emorig.reconstruct.fitting_init import DEFAULT_YAWS as DEFAULT_YAWS
from emorig.reconstruct.fitting_init import initialise_pose
from emorig.reconstruct.fitting_landmarks import RIGID_LANDMARKS as RIGID_LANDMARKS
from emorig.reconstruct.fitting_landmarks import fit_landmarks
from emorig.reconstruct.fitting_photometric import PHOTOMETRIC_FIELDS, fit_photometric
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

__all__ = [
    "CROP_SIZE",
    "EYE_PAIRS",
    "LIP_PAIRS",
    "PHOTOMETRIC_FIELDS",
    "FitQuality",
    "FitResult",
    "batched_lbfgs",
    "fit",
    "fit_landmarks",
    "fit_photometric",
    "fit_quality",
    "initialise_pose",
    "landmark_errors",
    "landmark_weights",
    "project_landmarks",
]


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
    occluded_contour: float = 0.2,
    photometric_size: int | None = 112,
    fast: bool = True,
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
        occluded_contour: see :func:`fit_landmarks` (1 gives every contour point full weight).
        photometric_size: resolution of the photometric stage (see :func:`fit_photometric`).
        fast: landmark fit on the vertices the landmarks use and a photometric stage that
            rasterizes once (same objectives, several times faster); False is the slower
            path, kept to measure against (``benchmarks/bench_fitting.py``).

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
        occluded_contour=occluded_contour,
        restrict_head=fast,
    )
    if not photometric:
        return geometry
    colour = fit_photometric(
        renderer,
        images,
        geometry.code,
        mask=mask,
        steps=photometric_steps,
        optimise=optimise,
        size=photometric_size,
        reuse_raster=fast,
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
        quality=fit_quality(colour.code, px),
    )

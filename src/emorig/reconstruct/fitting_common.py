"""What the face fits share: DECA's landmark conventions, weights and errors, the result type
and small helpers of the objectives (see :mod:`emorig.reconstruct.fitting`).

Landmark targets are DECA's 68 points (17 contour then 51 static, iBUG order) in NDC of the
crop, ``x`` right and ``y`` down; errors are reported in pixels of a 224-pixel crop (DECA's
size: 112 pixels per NDC unit) and as a fraction of the target's outer-eye-corner distance.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emorig.flame.model import FlameModel
from emorig.geometry.camera import DECA_CROP, orthographic_project
from emorig.types import FaceCode

__all__ = [
    "CROP_SIZE",
    "DOUBTFUL",
    "EYE_PAIRS",
    "LIP_PAIRS",
    "N_CONTOUR",
    "N_LANDMARKS",
    "OUTER_EYE_CORNERS",
    "FitQuality",
    "FitResult",
    "fit_quality",
    "landmark_errors",
    "landmark_head",
    "landmark_weights",
    "prior_scores",
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
# The landmark head: FLAME restricted to the vertices the landmarks use

_LANDMARK_HEADS: weakref.WeakKeyDictionary[FlameModel, dict] = weakref.WeakKeyDictionary()


def landmark_head(flame: FlameModel) -> FlameModel:
    """``flame`` restricted to the vertices its landmark embeddings touch, for fitting.

    A landmark fit evaluates the head a few hundred times but only reads the 68 DECA points
    (every contour row), the fixed 68 and the MediaPipe points: about 770 of the built-in
    head's 6,136 vertices. The returned layer has the same :meth:`FlameModel.forward` and gives
    the same landmarks, joints and MediaPipe points (to float rounding) about eight times
    faster; its ``vertices`` are only the used ones (plus one pseudo-vertex per joint), so do
    not render them. The joints stay exact because they are linear in the shaped vertices:
    ``J = R (T + D c) = R T + (R D) c``, held as pseudo-vertices that the identity map regresses.
    Cached per head, device and dtype.
    """
    key = (flame.v_template.device, flame.v_template.dtype)
    heads = _LANDMARK_HEADS.setdefault(flame, {})
    if key not in heads:
        heads[key] = _restricted_head(flame)
    return heads[key]


@torch.no_grad()
def _restricted_head(flame: FlameModel) -> FlameModel:
    """The layer of :func:`landmark_head` (built without the head's arrays)."""
    refs = [flame.static_faces, flame.dynamic_faces, flame.full_faces]
    if flame.has_mediapipe:
        refs.append(flame.mediapipe_faces)
    used = torch.unique(flame.faces[torch.cat([r.flatten() for r in refs])].flatten())
    n, j, v = used.numel(), flame.n_joints, flame.n_vertices
    remap = torch.zeros(v, dtype=torch.long, device=used.device)
    remap[used] = torch.arange(n, device=used.device)
    sub = FlameModel.__new__(FlameModel)
    nn.Module.__init__(sub)
    for name in ("name", "synthetic", "n_shape", "n_expression", "has_landmarks", "has_mediapipe"):
        setattr(sub, name, getattr(flame, name))
    regress = flame.j_regressor
    blend = flame.blenddirs
    posedirs = flame.posedirs.view(flame.posedirs.shape[0], v, 3)[:, used]
    joints_only = torch.zeros(j, j + n, dtype=regress.dtype, device=regress.device)
    joints_only[:, n:] = torch.eye(j, dtype=regress.dtype, device=regress.device)
    root = torch.zeros(j, j, dtype=flame.weights.dtype, device=regress.device)
    root[:, 0] = 1
    buffers = {
        "v_template": torch.cat([flame.v_template[used], regress @ flame.v_template]),
        "blenddirs": torch.cat([blend[used], torch.einsum("jv,vck->jck", regress, blend)]),
        "posedirs": torch.cat([posedirs, posedirs.new_zeros(posedirs.shape[0], j, 3)], 1)
        .reshape(posedirs.shape[0], -1)
        .contiguous(),
        "j_regressor": joints_only,
        "weights": torch.cat([flame.weights[used], root]),
        "faces": remap[flame.faces],
        "parents": flame.parents,
    }
    buffers["shapedirs"] = buffers["blenddirs"][:, :, : flame.n_shape]
    buffers["exprdirs"] = buffers["blenddirs"][:, :, flame.n_shape :]
    names = ["static_faces", "static_bary", "dynamic_faces", "dynamic_bary"]
    names += ["full_faces", "full_bary"]
    if flame.has_mediapipe:
        names += ["mediapipe_faces", "mediapipe_bary", "mediapipe_index"]
    buffers.update({name: getattr(flame, name) for name in names})
    for name, value in buffers.items():
        sub.register_buffer(name, value)
    return sub


# --------------------------------------------------------------------------------------------
# Result


# --------------------------------------------------------------------------------------------
# Fit quality

#: Thresholds of the fit-quality verdict, measured on the built-in head (see
#: ``benchmarks/bench_fitting.py`` and ``docs/reconstruction.md``): ``landmark_px``, the mean
#: landmark error in pixels of the 224 crop (good fits of real photos: 2.5 to 5 px; synthetic
#: renders: below 1.5 px); ``prior_rms``, the RMS of a field's coefficients in standard
#: deviations (a draw from the prior has about 1, fitted real faces 0.3 to 1.0); ``prior_max``,
#: its largest coefficient (fitted real faces at most 4; the deformed skulls of turned faces
#: fitted at full contour weight reach 6 to 8).
DOUBTFUL = {"landmark_px": 8.0, "prior_rms": 1.5, "prior_max": 5.0}


@dataclass(frozen=True)
class FitQuality:
    """How much one fit can be trusted.

    Attributes:
        landmark_px: mean distance of the code's 68 projected landmarks to the targets, pixels
            of the 224 crop.
        shape_rms, expression_rms: the prior score of identity and expression: the RMS of the
            coefficients, which are in standard deviations of the prior (a draw from the prior
            scores about 1; most fits of real faces score below 1).
        shape_max, expression_max: the largest absolute coefficient of each, in standard
            deviations (the RMS dilutes one runaway component among a hundred).
        verdict: ``"ok"`` or ``"doubtful"``.
        reasons: why a fit is doubtful (empty when ok), one short phrase each.
    """

    landmark_px: float
    shape_rms: float
    shape_max: float
    expression_rms: float
    expression_max: float
    verdict: str
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def to_json(self) -> dict:
        """The record as written under ``"quality"`` in a reconstruction's JSON."""
        return {
            "quality": self.verdict,
            "reasons": list(self.reasons),
            "landmark_error_px": round(self.landmark_px, 3),
            "prior": {
                "shape_rms": round(self.shape_rms, 3),
                "shape_max": round(self.shape_max, 3),
                "expression_rms": round(self.expression_rms, 3),
                "expression_max": round(self.expression_max, 3),
            },
            "thresholds": dict(DOUBTFUL),
        }

    def summary(self) -> str:
        """One short line: the verdict, the landmark error and the prior scores."""
        line = (
            f"{self.verdict}: landmarks {self.landmark_px:.1f} px, identity rms "
            f"{self.shape_rms:.2f} (max {self.shape_max:.1f}), expression rms "
            f"{self.expression_rms:.2f} (max {self.expression_max:.1f}) sd"
        )
        return line + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def prior_scores(code: FaceCode) -> dict[str, Tensor]:
    """(B,) RMS and largest absolute coefficient of identity and expression, in standard
    deviations of the prior: ``shape_rms``, ``shape_max``, ``expression_rms``,
    ``expression_max``."""
    out = {}
    for name, field in (("shape", code.shape), ("expression", code.expression)):
        c = field.detach().float()
        out[f"{name}_rms"] = c.pow(2).mean(-1).sqrt()
        out[f"{name}_max"] = c.abs().amax(-1)
    return out


def fit_quality(code: FaceCode, landmark_px: Tensor) -> tuple[FitQuality, ...]:
    """The :class:`FitQuality` of each face of ``code`` given its (B,) landmark errors in
    pixels of the 224 crop; doubtful when a value passes a threshold of :data:`DOUBTFUL`."""
    scores = {k: v.tolist() for k, v in prior_scores(code).items()}
    records = []
    for i, px in enumerate(landmark_px.detach().float().tolist()):
        reasons = []
        if px > DOUBTFUL["landmark_px"]:
            reasons.append(f"landmark error {px:.1f} px > {DOUBTFUL['landmark_px']:g}")
        for name, label in (("shape", "identity"), ("expression", "expression")):
            rms, top = scores[f"{name}_rms"][i], scores[f"{name}_max"][i]
            if rms > DOUBTFUL["prior_rms"]:
                reasons.append(f"{label} rms {rms:.2f} sd > {DOUBTFUL['prior_rms']:g}")
            if top > DOUBTFUL["prior_max"]:
                reasons.append(f"{label} coefficient {top:.1f} sd > {DOUBTFUL['prior_max']:g}")
        records.append(
            FitQuality(
                px,
                scores["shape_rms"][i],
                scores["shape_max"][i],
                scores["expression_rms"][i],
                scores["expression_max"][i],
                "doubtful" if reasons else "ok",
                tuple(reasons),
            )
        )
    return tuple(records)


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
        quality: one :class:`FitQuality` per image (landmark error, prior scores, verdict),
            or ``None`` when no landmark targets were given.
    """

    code: FaceCode
    landmark_error: Tensor | None
    landmark_error_iod: Tensor | None
    photometric_error: Tensor | None
    history: tuple[float, ...]
    steps: int
    seconds: float
    quality: tuple[FitQuality, ...] | None = None


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

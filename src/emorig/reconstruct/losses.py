"""Training losses of the reconstruction stage: DECA's coarse and detail terms, EMOCA's.

Every term is a pure function (tensors in, scalar out) whose docstring gives the formula and
where it comes from. Upstream code followed:

* DECA (Feng et al. 2021), ``decalib/utils/lossfunc.py`` and ``decalib/trainer.py``;
* EMOCA (Danecek et al. 2022), ``gdl/layers/losses/DecaLosses.py``, ``EmoNetLoss.py`` and
  ``MediaPipeLandmarkLosses.py`` (v2).

Conventions: images are (B, 3, H, W) RGB in [0, 1]; landmarks are (B, N, 2) in DECA's NDC
(``[-1, 1]``, x right, y down) or (B, N, 3) with a visibility/confidence column; UV maps are
(B, C, H_uv, W_uv). Reductions follow the upstream code, including its sums over the batch,
and each docstring says which reduction it uses.

The default weights of both methods are :data:`DECA_WEIGHTS` and :data:`EMOCA_WEIGHTS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.reconstruct.vgg import VGG19Features, imagenet_normalize

__all__ = [
    "DECA_IDMRF_CONTENT_LAYERS",
    "DECA_IDMRF_STYLE_LAYERS",
    "DECA_WEIGHTS",
    "EMOCA_WEIGHTS",
    "EYE_PAIRS",
    "LANDMARK_WEIGHTS",
    "LIP_PAIRS",
    "MEDIAPIPE_EMBEDDING_INDICES",
    "MEDIAPIPE_EYELIDS",
    "MEDIAPIPE_EYELIDS_EMOCA",
    "MEDIAPIPE_LIPS",
    "MEDIAPIPE_MOUTH_CORNERS",
    "MOUTH_CORNER_PAIRS",
    "UV_FACE_BOX_2048",
    "VGGFACE2_MEAN_BGR",
    "IDMRFLoss",
    "LossWeights",
    "binary_erosion",
    "coefficient_regulariser",
    "crop_uv_face",
    "displacement_regulariser",
    "embedding_positions",
    "emotion_consistency_loss",
    "eye_closure_loss",
    "group_permutation",
    "identity_loss",
    "jaw_regulariser",
    "landmark_loss",
    "light_regulariser",
    "lip_closure_loss",
    "mouth_corner_loss",
    "mrf_loss",
    "permute_within_groups",
    "photometric_loss",
    "relative_distance_loss",
    "shading_smooth_loss",
    "symmetry_loss",
    "uv_photometric_loss",
    "vggface2_preprocess",
]

# ---------------------------------------------------------------------------------------------
# Constants


def _deca_landmark_weights() -> tuple[float, ...]:
    # DECA lossfunc.weighted_landmark_loss, in its order of assignment.
    w = [1.0] * 68
    for i in (5, 6, 10, 11):  # jaw line below the mouth corners
        w[i] = 2.0
    for i in range(27, 36):  # nose
        w[i] = 1.5
    for i in (30, 31, 35):  # nose tip and nostril corners
        w[i] = 3.0
    for i in range(48, 68):  # outer and inner lips
        w[i] = 1.5
    for i in (48, 54):  # mouth corners
        w[i] = 3.0
    return tuple(w)


#: DECA's per-landmark weights for the 68-point (iBUG) set, 0-based: 1 everywhere except
#: 5, 6, 10, 11 -> 2; nose 27..35 -> 1.5 with 30, 31, 35 -> 3; lips 48..67 -> 1.5 with the
#: mouth corners 48, 54 -> 3 (``weighted_landmark_loss``).
LANDMARK_WEIGHTS: tuple[float, ...] = _deca_landmark_weights()

#: DECA ``eye_dis``: upper-lid points 37, 38, 43, 44 against lower-lid 41, 40, 47, 46.
EYE_PAIRS: tuple[tuple[int, ...], tuple[int, ...]] = ((37, 38, 43, 44), (41, 40, 47, 46))
#: DECA ``lip_dis``: upper inner lip 61, 62, 63 against lower inner lip 67, 66, 65.
LIP_PAIRS: tuple[tuple[int, ...], tuple[int, ...]] = ((61, 62, 63), (67, 66, 65))
#: EMOCA ``mouth_corner_dis``: right corners (outer 48, inner 60) against left (54, 64).
MOUTH_CORNER_PAIRS: tuple[tuple[int, ...], tuple[int, ...]] = ((48, 60), (54, 64))

# MediaPipe face mesh (478 points) index lists of EMOCA v2's MediaPipeLandmarkLosses.py,
# "right"/"left" from the subject's point of view; upper and lower lists correspond.
_MP_RIGHT_UPPER_EYELID = (246, 161, 160, 159, 158, 157, 173)
_MP_RIGHT_LOWER_EYELID = (7, 163, 144, 145, 153, 154, 155)
_MP_LEFT_UPPER_EYELID = (398, 384, 385, 386, 387, 388, 466)
_MP_LEFT_LOWER_EYELID = (382, 381, 380, 374, 373, 390, 249)
_MP_UPPER_OUTER_LIP = (185, 40, 39, 37, 0, 267, 269, 270, 409)
_MP_LOWER_OUTER_LIP = (146, 91, 181, 84, 17, 314, 405, 321, 375)
_MP_UPPER_INNER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415)
_MP_LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)

#: MediaPipe eyelid pairs (478-point numbering), each upper point against the lower point
#: below it: right eye then left eye, 14 pairs.
MEDIAPIPE_EYELIDS: tuple[tuple[int, ...], tuple[int, ...]] = (
    _MP_RIGHT_UPPER_EYELID + _MP_LEFT_UPPER_EYELID,
    _MP_RIGHT_LOWER_EYELID + _MP_LEFT_LOWER_EYELID,
)
#: The eyelid pairing EMOCA v2 actually uses: its ``UPPER_EYELIDS`` and ``LOWER_EYELIDS`` are
#: each *sorted* by index, which breaks the correspondence (e.g. 157-7 instead of 157-154);
#: only 4 of the 14 pairs stay vertical. Use this to reproduce EMOCA v2, the one above to
#: measure eye closure.
MEDIAPIPE_EYELIDS_EMOCA: tuple[tuple[int, ...], tuple[int, ...]] = (
    tuple(sorted(MEDIAPIPE_EYELIDS[0])),
    tuple(sorted(MEDIAPIPE_EYELIDS[1])),
)
#: MediaPipe lip pairs: outer upper/lower lines then inner lines, 18 pairs (EMOCA v2).
MEDIAPIPE_LIPS: tuple[tuple[int, ...], tuple[int, ...]] = (
    _MP_UPPER_OUTER_LIP + _MP_UPPER_INNER_LIP,
    _MP_LOWER_OUTER_LIP + _MP_LOWER_INNER_LIP,
)
#: MediaPipe mouth corners: right (inner 78, outer 61) against left (inner 308, outer 291).
MEDIAPIPE_MOUTH_CORNERS: tuple[tuple[int, ...], tuple[int, ...]] = ((78, 61), (308, 291))
#: The 105 MediaPipe points embedded on FLAME by EMOCA v2, in the order of its
#: ``mediapipe_landmark_embedding.npz`` (``landmark_indices``); predicted MediaPipe landmarks
#: come in this order.
MEDIAPIPE_EMBEDDING_INDICES: tuple[int, ...] = (
    276, 282, 283, 285, 293, 295, 296, 300, 334, 336, 46, 52, 53,
    55, 63, 65, 66, 70, 105, 107, 249, 263, 362, 373, 374, 380,
    381, 382, 384, 385, 386, 387, 388, 390, 398, 466, 7, 33, 133,
    144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246,
    168, 6, 197, 195, 5, 4, 129, 98, 97, 2, 326, 327, 358,
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84,
    87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270, 291,
    308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409,
    415,
)  # fmt: skip

#: VGGFace2 ResNet-50 mean in BGR, 0..255 (cydonia999/VGGFace2-pytorch, DECA VGGFace2Loss).
VGGFACE2_MEAN_BGR: tuple[float, float, float] = (91.4953, 103.8827, 131.0912)

#: DECA's face box in a 2048 UV map, ``(left, right, top, bottom)`` (``util.load_local_mask``,
#: mode "bbx"); scaled to the UV size: rows and columns 50:206 of a 256 map.
UV_FACE_BOX_2048: tuple[int, int, int, int] = (400, 1648, 400, 1648)

#: ID-MRF layers and weights as DECA uses them (``IDMRFLoss``): style on two layers, content on
#: one. DECA names them ``relu3_2`` and ``relu4_2``, but its layer counter increments on convs
#: and ReLUs alike, so those keys hold torchvision's ``features[11]`` and ``features[20]``:
#: ``relu3_1`` and ``relu4_1`` in standard names, which these are.
DECA_IDMRF_STYLE_LAYERS: tuple[tuple[str, float], ...] = (("relu3_1", 1.0), ("relu4_1", 1.0))
DECA_IDMRF_CONTENT_LAYERS: tuple[tuple[str, float], ...] = (("relu4_1", 1.0),)

#: ``(layer name, weight)`` pairs, or a mapping of them.
LayerWeights = Sequence[tuple[str, float]] | Mapping[str, float]


# ---------------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class LossWeights:
    """Multipliers of the reconstruction losses (0 switches a term off).

    Field comments give the upstream config names (DECA ``cfg.loss.*``; EMOCA ``model.*``).

    Attributes:
        landmark: weighted 68-landmark L1 (DECA ``lmk``; EMOCA v1 logs it as a metric only).
        eye_closure: 68-point eye distances (``eyed``).
        lip_closure: 68-point inner-lip distances (``lipd``).
        mouth_corner: 68-point mouth-corner distance (EMOCA; it reuses ``lipd``).
        landmark_mediapipe: mean L1 on the 105 embedded MediaPipe points (EMOCA v2
            ``lmk_weight_mp``).
        eye_closure_mediapipe: MediaPipe eyelid distances (EMOCA v2 ``eyed_mp``).
        lip_closure_mediapipe: MediaPipe lip distances (EMOCA v2 ``lipd_mp``).
        mouth_corner_mediapipe: MediaPipe mouth corners (EMOCA v2, reuses ``lipd_mp``).
        photometric: masked L1 of the coarse render (``photo`` / ``photow``).
        identity: VGGFace2 cosine identity loss (``id`` / ``idw``).
        emotion: emotion-feature MSE (EMOCA ``emonet_weight``).
        shape_reg: ``sum beta^2 / 2`` (``reg_shape`` / ``shape_reg``).
        expression_reg: ``sum psi^2 / 2`` (``reg_exp`` / ``exp_reg``).
        albedo_reg: ``sum alpha^2 / 2`` (``reg_tex`` / ``tex_reg``).
        light_reg: white-light prior (``reg_light`` / ``light_reg``).
        jaw_reg: multiplier of :func:`jaw_regulariser` (DECA applies it with 1 only when
            ``jaw_type == "euler"``; its default ``"aa"`` skips it, hence 0).
        detail_photometric: UV-space L1 of the detail stage (``photo_D``; EMOCA ``sfsw[0]``).
        detail_mrf: ID-MRF factor; the term is ``detail_photometric * detail_mrf * ID-MRF``
            exactly as DECA multiplies it (``mrf``), see :attr:`detail_mrf_total`.
        detail_symmetry: displacement symmetry (``reg_sym`` / ``zsymw``).
        detail_displacement: mean absolute displacement (``reg_z`` / ``zregw``).
        detail_shading_smooth: detail-shading smoothness (``reg_diff`` / ``zdiffw``).
        shape_consistency: swap shape codes within identity groups (coarse stage).
        detail_consistency: swap detail codes within identity groups (detail stage).
    """

    landmark: float
    eye_closure: float
    lip_closure: float
    mouth_corner: float
    landmark_mediapipe: float
    eye_closure_mediapipe: float
    lip_closure_mediapipe: float
    mouth_corner_mediapipe: float
    photometric: float
    identity: float
    emotion: float
    shape_reg: float
    expression_reg: float
    albedo_reg: float
    light_reg: float
    jaw_reg: float
    detail_photometric: float
    detail_mrf: float
    detail_symmetry: float
    detail_displacement: float
    detail_shading_smooth: float
    shape_consistency: bool
    detail_consistency: bool

    @property
    def detail_mrf_total(self) -> float:
        """The factor in front of ID-MRF: ``detail_photometric * detail_mrf``."""
        return self.detail_photometric * self.detail_mrf


#: DECA's defaults (``decalib/utils/config.py``). Its logged pretraining run
#: (``logs/full_config.yaml``) used eyed 0.5, reg_tex 1e-5, photo_D 5.0 and mrf 0.01 instead.
DECA_WEIGHTS = LossWeights(
    landmark=1.0,
    eye_closure=1.0,
    lip_closure=0.5,
    mouth_corner=0.0,
    landmark_mediapipe=0.0,
    eye_closure_mediapipe=0.0,
    lip_closure_mediapipe=0.0,
    mouth_corner_mediapipe=0.0,
    photometric=2.0,
    identity=0.2,
    emotion=0.0,
    shape_reg=1e-4,
    expression_reg=1e-4,
    albedo_reg=1e-4,
    light_reg=1.0,
    jaw_reg=0.0,
    detail_photometric=2.0,
    detail_mrf=5e-2,
    detail_symmetry=5e-3,
    detail_displacement=5e-3,
    detail_shading_smooth=5e-3,
    shape_consistency=True,
    detail_consistency=True,
)

#: EMOCA v1 as released (``gdl_apps/EMOCA/training/emoca.yaml``): coarse stage trains only the
#: expression encoder with the emotion loss and relative landmark losses (no absolute
#: landmark or identity loss; one image per identity, so no shape consistency); the detail
#: stage uses ``sfsw = [5, 0, 0, 0]`` (L1 x5, ID-MRF x5 x0.05) and exchanges detail codes.
EMOCA_WEIGHTS = LossWeights(
    landmark=0.0,
    eye_closure=0.5,
    lip_closure=0.5,
    mouth_corner=0.5,
    landmark_mediapipe=0.0,
    eye_closure_mediapipe=0.0,
    lip_closure_mediapipe=0.0,
    mouth_corner_mediapipe=0.0,
    photometric=2.0,
    identity=0.0,
    emotion=1.0,
    shape_reg=1e-4,
    expression_reg=1e-4,
    albedo_reg=1e-5,
    light_reg=12.0,
    jaw_reg=0.0,
    detail_photometric=5.0,
    detail_mrf=5e-2,
    detail_symmetry=5e-3,
    detail_displacement=5e-3,
    detail_shading_smooth=5e-3,
    shape_consistency=False,
    detail_consistency=True,
)


# ---------------------------------------------------------------------------------------------
# Landmarks


def _check_landmarks(pred: Tensor, target: Tensor) -> None:
    if pred.dim() != 3 or pred.shape[-1] < 2:
        raise ValueError(f"pred must be (B, N, 2+), got {tuple(pred.shape)}")
    if target.dim() != 3 or target.shape[-1] not in (2, 3):
        raise ValueError(f"target must be (B, N, 2) or (B, N, 3), got {tuple(target.shape)}")
    if pred.shape[:2] != target.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")


def landmark_loss(
    pred: Tensor,
    target: Tensor,
    weights: Sequence[float] | Tensor = LANDMARK_WEIGHTS,
) -> Tensor:
    """DECA's weighted landmark L1 (``batch_kp_2d_l1_loss`` via ``weighted_landmark_loss``).

    ``L = sum_{b,i} w_i v_bi (|dx_bi| + |dy_bi|) / (2 sum_{b,i} w_i v_bi + 1e-8)``

    DECA normalises by the *visible* weights summed over the whole batch (its ``k``), so
    hidden points neither count nor dilute the loss. DECA multiplies the weights into the
    target's visibility column in place; this function does not modify its inputs.
    With uniform weights and full visibility this is the plain mean absolute coordinate
    error, i.e. EMOCA v2's absolute MediaPipe landmark loss.

    Args:
        pred: (B, N, 2+) predicted landmarks; only x, y are used.
        target: (B, N, 2), or (B, N, 3) whose last column is the visibility/confidence.
        weights: (N,) per-landmark weights, default :data:`LANDMARK_WEIGHTS` (N = 68).

    Returns:
        Scalar loss.
    """
    _check_landmarks(pred, target)
    w = torch.as_tensor(weights, dtype=pred.dtype, device=pred.device)
    if w.shape != (pred.shape[1],):
        raise ValueError(f"weights must be ({pred.shape[1]},), got {tuple(w.shape)}")
    vis = target[..., 2] if target.shape[-1] == 3 else torch.ones_like(target[..., 0])
    wv = w * vis.to(pred.dtype)  # (B, N)
    abs_diff = (pred[..., :2] - target[..., :2]).abs().sum(-1)  # |dx| + |dy|
    return (abs_diff * wv).sum() / (2.0 * wv.sum() + 1e-8)


def relative_distance_loss(
    pred: Tensor,
    target: Tensor,
    pairs_a: Sequence[int] | Tensor,
    pairs_b: Sequence[int] | Tensor,
) -> Tensor:
    """Mean absolute difference of within-face distances (DECA ``eyed_loss``/``lipd_loss``).

    ``L = mean_{b,p} | ||x_b[a_p] - x_b[b_p]|| - ||y_b[a_p] - y_b[b_p]|| |`` on x, y only,
    with ``x`` predicted and ``y`` target landmarks. Visibility is ignored, as in DECA and
    EMOCA. The distance has a zero (not NaN) gradient when two predicted points coincide.

    The eye, lip and mouth-corner losses of DECA, EMOCA and EMOCA v2 are all this function
    with different pairs (:data:`EYE_PAIRS`, :data:`LIP_PAIRS`, :data:`MOUTH_CORNER_PAIRS`,
    :data:`MEDIAPIPE_EYELIDS`, :data:`MEDIAPIPE_LIPS`, :data:`MEDIAPIPE_MOUTH_CORNERS`).

    Args:
        pred: (B, N, 2+) predicted landmarks.
        target: (B, N, 2+) target landmarks in the same numbering (a third column is ignored).
        pairs_a: (P,) indices of the first point of each pair.
        pairs_b: (P,) indices of the second point of each pair.

    Returns:
        Scalar loss.
    """
    if pred.dim() != 3 or target.dim() != 3 or pred.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"pred and target must be (B, N, 2+) alike, got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}"
        )
    a = torch.as_tensor(pairs_a, dtype=torch.long, device=pred.device)
    b = torch.as_tensor(pairs_b, dtype=torch.long, device=pred.device)
    if a.dim() != 1 or a.shape != b.shape:
        raise ValueError(f"pairs_a {tuple(a.shape)} and pairs_b {tuple(b.shape)} must be (P,)")
    d_pred = torch.linalg.vector_norm(pred[:, a, :2] - pred[:, b, :2], dim=-1)
    d_target = torch.linalg.vector_norm(target[:, a, :2] - target[:, b, :2], dim=-1)
    return (d_pred - d_target.to(d_pred.dtype)).abs().mean()


def eye_closure_loss(pred: Tensor, target: Tensor) -> Tensor:
    """DECA's eye-distance loss on 68 landmarks (:data:`EYE_PAIRS`).

    Args:
        pred: (B, 68, 2+) predicted landmarks.
        target: (B, 68, 2+) target landmarks.

    Returns:
        Scalar :func:`relative_distance_loss`.
    """
    return relative_distance_loss(pred, target, *EYE_PAIRS)


def lip_closure_loss(pred: Tensor, target: Tensor) -> Tensor:
    """DECA's inner-lip distance loss on 68 landmarks (:data:`LIP_PAIRS`).

    Args:
        pred: (B, 68, 2+) predicted landmarks.
        target: (B, 68, 2+) target landmarks.

    Returns:
        Scalar :func:`relative_distance_loss`.
    """
    return relative_distance_loss(pred, target, *LIP_PAIRS)


def mouth_corner_loss(pred: Tensor, target: Tensor) -> Tensor:
    """EMOCA's mouth-corner distance loss on 68 landmarks (:data:`MOUTH_CORNER_PAIRS`).

    Args:
        pred: (B, 68, 2+) predicted landmarks.
        target: (B, 68, 2+) target landmarks.

    Returns:
        Scalar :func:`relative_distance_loss`.
    """
    return relative_distance_loss(pred, target, *MOUTH_CORNER_PAIRS)


def embedding_positions(
    mediapipe_indices: Sequence[int],
    embedding_indices: Sequence[int] | Tensor = MEDIAPIPE_EMBEDDING_INDICES,
) -> tuple[int, ...]:
    """Positions of MediaPipe points (478 numbering) within an embedded subset.

    Predicted MediaPipe landmarks come in the embedding's order (105 points), detected ones
    in MediaPipe's 478. Select the target with ``target[:, embedding_indices]`` and map pairs
    with this function to compare both in the embedding's numbering::

        a, b = (embedding_positions(p) for p in MEDIAPIPE_LIPS)
        relative_distance_loss(pred_105, target_478[:, MEDIAPIPE_EMBEDDING_INDICES], a, b)

    Args:
        mediapipe_indices: indices in MediaPipe's 478-point numbering.
        embedding_indices: (M,) the embedded points in order (the npz ``landmark_indices``).

    Returns:
        Index into the embedded points for each input index.

    Raises:
        ValueError: an index is not part of the embedding.
    """
    order = [int(i) for i in torch.as_tensor(embedding_indices).reshape(-1).tolist()]
    where = {index: pos for pos, index in enumerate(order)}
    missing = [int(i) for i in mediapipe_indices if int(i) not in where]
    if missing:
        raise ValueError(f"MediaPipe points {missing} are not in the embedding")
    return tuple(where[int(i)] for i in mediapipe_indices)


# ---------------------------------------------------------------------------------------------
# Images


def photometric_loss(
    rendered: Tensor,
    image: Tensor,
    mask: Tensor,
    normalization: Literal["mean", "mask"] = "mean",
) -> Tensor:
    """Masked L1 between a render and the photo (DECA ``photometric_texture``).

    ``"mean"`` (DECA; EMOCA's ``photometric_normalization: mean``):
    ``L = mean_{b,c,h,w} m_bhw |R - I|``, averaged over *all* pixels, so a smaller mask gives
    a smaller loss. ``"mask"``: ``sum m |R - I| / sum m`` over the broadcast mask, the mean
    over masked pixels and channels (0 when the mask is empty).

    Args:
        rendered: (B, C, H, W) rendered image.
        image: (B, C, H, W) target image, same range.
        mask: (B, 1, H, W) or (B, C, H, W) weights in [0, 1] (skin segmentation or rendered
            face mask).
        normalization: ``"mean"`` or ``"mask"``.

    Returns:
        Scalar loss.
    """
    if rendered.shape != image.shape or rendered.dim() != 4:
        raise ValueError(f"rendered {tuple(rendered.shape)} and image {tuple(image.shape)}")
    weighted = mask * (rendered - image).abs()
    if normalization == "mean":
        return weighted.mean()
    if normalization == "mask":
        area = mask.expand_as(weighted).sum()
        return weighted.sum() / area.clamp_min(torch.finfo(weighted.dtype).tiny)
    raise ValueError(f"normalization must be 'mean' or 'mask', got {normalization!r}")


def identity_loss(features_a: Tensor, features_b: Tensor) -> Tensor:
    """Cosine identity loss (DECA ``VGGFace2Loss``): ``mean_b (1 - cos(f_a, f_b))``.

    Args:
        features_a: (B, D) or (B, ...) face-recognition features (flattened per item).
        features_b: same shape.

    Returns:
        Scalar loss in [0, 2].
    """
    if features_a.shape != features_b.shape:
        raise ValueError(f"shapes differ: {tuple(features_a.shape)}, {tuple(features_b.shape)}")
    a = features_a.flatten(1)
    b = features_b.flatten(1)
    return (1.0 - F.cosine_similarity(a, b, dim=1)).mean()


def vggface2_preprocess(
    images: Tensor,
    *,
    deca_rescale: bool = True,
    margin: int = 10,
    size: int = 224,
) -> Tensor:
    """Input of the VGGFace2 ResNet-50 as DECA feeds it (``VGGFace2Loss.transform`` and
    ``reg_features``).

    1. RGB -> BGR, ``x * 255 - mean_bgr`` with ``mean_bgr =`` :data:`VGGFACE2_MEAN_BGR`
       (the network's own convention);
    2. crop ``margin`` pixels from every side (DECA: ``x[:, :, 10:214, 10:214]`` of its 224
       crops; here the margin is taken from each side of any size);
    3. DECA's quirk, when ``deca_rescale``: ``x * 2 - 1`` *after* the mean subtraction, which
       doubles the amplitude (a leftover of a [-1, 1] convention). DECA's identity loss was
       trained this way; ``deca_rescale=False`` gives the network's documented input;
    4. bilinear resize to ``size`` (``align_corners=False``).

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
        deca_rescale: apply DECA's ``x * 2 - 1`` (default True, matching DECA).
        margin: pixels cropped from each side before resizing.
        size: output side.

    Returns:
        (B, 3, size, size) BGR network input.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if 2 * margin >= min(h, w):
        raise ValueError(f"margin {margin} leaves nothing of a {h}x{w} image")
    mean = images.new_tensor(VGGFACE2_MEAN_BGR).view(1, 3, 1, 1)
    x = images.flip(1) * 255.0 - mean
    if margin > 0:
        x = x[:, :, margin : h - margin, margin : w - margin]
    if deca_rescale:
        x = x * 2.0 - 1.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def emotion_consistency_loss(
    rendered_features: Tensor,
    image_features: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """EMOCA's emotion consistency: MSE between emotion-network features of the render and
    of the photo (``EmoLossBase.compute_loss``, ``emo_feat_2`` with ``F.mse_loss``).

    ``L = (1 / (|S| D)) sum_{b in S} ||f(R_b) - f(I_b)||^2`` over the selected items ``S``
    (all when ``mask`` is None, which is ``F.mse_loss``'s mean). EMOCA computes the photo's
    features without gradient; ``image_features`` is detached here to match.

    Args:
        rendered_features: (B, D) or (B, ...) features of the rendered images (released
            EMOCA: the 2048-d pooled ResNet-50 feature).
        image_features: same shape, features of the input photos.
        mask: optional (B,) bool or {0, 1} selection of the items to average over; with no
            item selected the loss is 0 (and still part of the graph).

    Returns:
        Scalar loss.
    """
    if rendered_features.shape != image_features.shape:
        raise ValueError(
            f"shapes differ: {tuple(rendered_features.shape)}, {tuple(image_features.shape)}"
        )
    sq = (rendered_features - image_features.detach()).pow(2).flatten(1)  # (B, D)
    if mask is None:
        return sq.mean()
    m = mask.reshape(-1).to(sq.dtype)
    if m.shape[0] != sq.shape[0]:
        raise ValueError(f"mask must be ({sq.shape[0]},), got {tuple(mask.shape)}")
    count = m.sum() * sq.shape[1]
    return (sq.sum(1) * m).sum() / count.clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# Regularisers


def coefficient_regulariser(coeffs: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """Gaussian prior on model coefficients (DECA ``shape_reg``/``expression_reg``/``tex_reg``).

    ``"sum"`` (DECA and EMOCA): ``sum_{b,i} beta_bi^2 / 2``, summed over the batch too, so the
    term grows with the batch size (and doubles with the consistency-doubled batch).
    ``"mean"``: the same divided by the batch size B.

    Args:
        coeffs: (B, K) coefficients (shape, expression or albedo).
        reduction: ``"sum"`` or ``"mean"``.

    Returns:
        Scalar loss.
    """
    total = coeffs.pow(2).sum() / 2.0
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / coeffs.shape[0]
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def light_regulariser(light: Tensor) -> Tensor:
    """DECA's white-light prior: ``mean_{b,k,c} (mean_c' l_bkc' - l_bkc)^2``.

    Pulls every SH coefficient's RGB triple towards its grey mean.

    Args:
        light: (B, 9, 3) SH coefficients, coefficient-major, RGB minor.

    Returns:
        Scalar loss.
    """
    if light.dim() != 3 or light.shape[-1] != 3:
        raise ValueError(f"light must be (B, 9, 3), got {tuple(light.shape)}")
    return (light.mean(dim=2, keepdim=True) - light).pow(2).mean()


def jaw_regulariser(
    jaw_euler: Tensor, roll_weight: float = 100.0, close_weight: float = 10.0
) -> Tensor:
    """DECA's jaw prior for its Euler jaw parametrisation (``jaw_type: euler``).

    ``L = roll_weight * sum_b theta_z^2 / 2 + close_weight * sum_b relu(-theta_x)^2 / 2``:
    no jaw roll, no closing past the rest pose (opening is a positive x rotation). Sums over
    the batch as DECA (``reg_jawpose_roll`` x100, ``reg_jawpose_close`` x10 in ``trainer.py``).

    Args:
        jaw_euler: (B, 3) jaw Euler angles in radians, (x pitch, y yaw, z roll).
        roll_weight: factor of the roll term.
        close_weight: factor of the over-closing term.

    Returns:
        Scalar loss.
    """
    if jaw_euler.dim() != 2 or jaw_euler.shape[1] != 3:
        raise ValueError(f"jaw_euler must be (B, 3), got {tuple(jaw_euler.shape)}")
    roll = jaw_euler[:, 2].pow(2).sum() / 2.0
    close = F.relu(-jaw_euler[:, 0]).pow(2).sum() / 2.0
    return roll_weight * roll + close_weight * close


# ---------------------------------------------------------------------------------------------
# Shape and detail consistency


def group_permutation(
    num_groups: int,
    group_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A random permutation of ``num_groups * group_size`` items that only moves items within
    their group of ``group_size`` consecutive items (DECA ``training_step``'s ``new_order``).

    Each group gets an independent uniform permutation; as in DECA it may be the identity.

    Args:
        num_groups: number of identities B.
        group_size: images per identity K.
        generator: CPU random generator (for reproducibility).
        device: device of the result.

    Returns:
        (B * K,) int64 index with ``order[i] // K == i // K``.
    """
    if num_groups < 0 or group_size < 1:
        raise ValueError(
            f"need num_groups >= 0 and group_size >= 1, got {num_groups}, {group_size}"
        )
    keys = torch.rand(num_groups, group_size, generator=generator)
    within = keys.argsort(dim=1)
    offsets = torch.arange(num_groups).unsqueeze(1) * group_size
    return (within + offsets).reshape(-1).to(device)


def permute_within_groups(
    x: Tensor, group_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """Shuffle the batch axis of ``x`` within groups of ``group_size`` consecutive items.

    DECA's shape consistency (coarse) and detail consistency (detail) swap codes between
    images of the same identity: ``shape' = shape[order]``; the batch is then doubled as
    ``cat([code, code'])`` and every loss is applied to both halves. Use
    :func:`group_permutation` directly to permute several tensors with one order.

    Args:
        x: (B * K, ...) codes, identities in consecutive groups of K images.
        group_size: K.
        generator: CPU random generator.

    Returns:
        (B * K, ...) ``x[order]`` with ``order`` from :func:`group_permutation`.
    """
    n = x.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"batch of {n} is not a whole number of groups of {group_size}")
    order = group_permutation(n // group_size, group_size, generator, device=x.device)
    return x[order]


# ---------------------------------------------------------------------------------------------
# Detail stage


def crop_uv_face(uv: Tensor, size: int = 256) -> Tensor:
    """DECA's face patch of a UV map: :data:`UV_FACE_BOX_2048` scaled to the map, then a
    bilinear resize to ``size`` (``align_corners=False``).

    Args:
        uv: (B, C, H, W) UV-space map (DECA: 256x256, giving rows/columns 50:206).
        size: output side.

    Returns:
        (B, C, size, size) patch.
    """
    if uv.dim() != 4:
        raise ValueError(f"uv must be (B, C, H, W), got {tuple(uv.shape)}")
    h, w = uv.shape[-2:]
    left, right, top, bottom = UV_FACE_BOX_2048
    # DECA scales the box by uv_size / 2048 and truncates (numpy astype(int)).
    sx, sy = w / 2048.0, h / 2048.0
    patch = uv[:, :, int(top * sy) : int(bottom * sy), int(left * sx) : int(right * sx)]
    return F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)


def uv_photometric_loss(pred_uv: Tensor, target_uv: Tensor, visibility: Tensor) -> Tensor:
    """DECA's detail photometric term: ``mean |P * V - T * V|`` in UV space.

    In DECA all three maps are first cropped to the face patch (:func:`crop_uv_face`);
    ``V`` is skin mask (sampled to UV) x self-visibility (UV normal z < -0.05) x face-eye mask.

    Args:
        pred_uv: (B, 3, H, W) rendered detail texture (albedo x detail shading).
        target_uv: (B, 3, H, W) photo sampled into UV.
        visibility: (B, 1, H, W) visibility weights.

    Returns:
        Scalar loss (mean over all elements).
    """
    if pred_uv.shape != target_uv.shape:
        raise ValueError(f"pred {tuple(pred_uv.shape)} and target {tuple(target_uv.shape)}")
    return (pred_uv * visibility - target_uv * visibility).abs().mean()


def displacement_regulariser(uv_z: Tensor) -> Tensor:
    """DECA ``z_reg``: ``mean |z|`` of the displacement map.

    Args:
        uv_z: (B, 1, H, W) displacements (DECA: ``D_detail`` output, before the fixed map).

    Returns:
        Scalar loss.
    """
    return uv_z.abs().mean()


def shading_smooth_loss(uv_shading: Tensor) -> Tensor:
    """DECA ``z_diff`` (``lossfunc.shading_smooth_loss``, after Lifting AutoEncoders).

    Forward differences over the interior: ``dx = S[:, :, 1:-1, 1:] - S[:, :, 1:-1, :-1]``,
    ``dy = S[:, :, 1:, 1:-1] - S[:, :, :-1, 1:-1]``; ``L = mean(dx^2) + mean(dy^2)``.

    Args:
        uv_shading: (B, C, H, W) detail shading in UV (SH of the detail normals), H, W >= 3.

    Returns:
        Scalar loss.
    """
    if uv_shading.dim() != 4 or min(uv_shading.shape[-2:]) < 3:
        raise ValueError(f"uv_shading must be (B, C, H>=3, W>=3), got {tuple(uv_shading.shape)}")
    dx = uv_shading[:, :, 1:-1, 1:] - uv_shading[:, :, 1:-1, :-1]
    dy = uv_shading[:, :, 1:, 1:-1] - uv_shading[:, :, :-1, 1:-1]
    return dx.pow(2).mean() + dy.pow(2).mean()


def binary_erosion(mask: Tensor, kernel_size: int = 5) -> Tensor:
    """Binary erosion with a square structuring element, like DECA's ``util.binary_erosion``
    (``scipy.ndimage.binary_erosion``, ``np.ones((5, 5))``, ``border_value=0``).

    Non-zero counts as set; pixels within ``kernel_size // 2`` of the border are cleared, as
    scipy treats the outside as unset. Not differentiable (a mask operation).

    Args:
        mask: (B, 1, H, W) mask.
        kernel_size: odd side of the square element.

    Returns:
        (B, 1, H, W) float {0, 1} mask, dtype of ``mask`` if floating else float32.
    """
    if mask.dim() != 4 or kernel_size % 2 != 1:
        raise ValueError(f"need a (B, 1, H, W) mask and an odd kernel, got {tuple(mask.shape)}")
    dtype = mask.dtype if mask.is_floating_point() else torch.float32
    unset = (mask == 0).to(dtype)
    r = kernel_size // 2
    unset = F.pad(unset, (r, r, r, r), value=1.0)
    return 1.0 - F.max_pool2d(unset, kernel_size, stride=1)


def symmetry_loss(uv_z: Tensor, visibility: Tensor, erosion_size: int = 5) -> Tensor:
    """DECA ``z_sym``: left-right symmetry of the displacement where the face is not seen.

    ``L = sum_{b,h,w} (1 - erode(V))_bhw |z_bhw - sg(z_b,h,W-1-w)|`` with ``sg`` stop-gradient
    (DECA detaches the flipped map) and ``erode`` a 5x5 binary erosion of the visibility
    (:func:`binary_erosion`). A sum, not a mean, as in DECA (weight ``reg_sym`` 5e-3).

    Args:
        uv_z: (B, 1, H, W) displacement map.
        visibility: (B, 1, H, W) UV visibility mask (see :func:`uv_photometric_loss`).
        erosion_size: side of the erosion element.

    Returns:
        Scalar loss.
    """
    if uv_z.shape != visibility.shape:
        raise ValueError(f"uv_z {tuple(uv_z.shape)} and visibility {tuple(visibility.shape)}")
    hidden = 1.0 - binary_erosion(visibility.detach(), erosion_size).to(uv_z.dtype)
    return (hidden * (uv_z - uv_z.flip(-1).detach()).abs()).sum()


# ---------------------------------------------------------------------------------------------
# ID-MRF


def mrf_loss(generated: Tensor, target: Tensor, sigma: float = 0.5, eps: float = 1e-5) -> Tensor:
    """Implicit diversified MRF term on one feature layer (Wang et al., "Image Inpainting via
    Generative Multi-column CNNs", NeurIPS 2018, Sec. 3.2), with 1x1 patches, as DECA's
    ``IDMRFLoss.mrf_loss`` computes it (relative *distances*, the paper's code form).

    With ``mu`` the target's per-pixel channel mean (DECA centres both maps with it), unit
    vectors ``g_i = (G_i - mu_i)/||.||`` and ``t_j = (T_j - mu_j)/||.||``:

    * cosine distance ``d_ij = (1 - g_i . t_j) / 2``;
    * relative distance ``r_ij = d_ij / (min_k d_ik + eps)``;
    * contextual similarity ``CX_ij = exp((bias - r_ij) / sigma) / sum_k exp((bias - r_ik) /
      sigma)`` over target points k (DECA's bias 1.0 cancels in this ratio, so it is computed
      as a softmax);
    * ``L = sum_b -log(mean_j max_i CX_ij)``, summed over the batch as DECA.

    ``L >= 0``, and ``L`` is ~0 when every target point has an identical generated point and
    no two target points are alike (repeated target features share their similarity). DECA
    divides by the norms unguarded (a zero feature vector gives NaN); here such vectors
    normalise to 0. Memory is O(B N^2) for N = H W points: DECA's relu3_1 of a 256 patch has
    N = 4096, 64 MB per item and intermediate in float32.

    Args:
        generated: (B, C, H, W) features of the generated image.
        target: (B, C, H, W) features of the target image.
        sigma: bandwidth (DECA ``nn_stretch_sigma`` 0.5).
        eps: DECA's 1e-5 in the relative distance.

    Returns:
        Scalar loss.
    """
    if generated.shape != target.shape or generated.dim() != 4:
        raise ValueError(f"generated {tuple(generated.shape)} and target {tuple(target.shape)}")
    mu = target.mean(dim=1, keepdim=True)
    g = F.normalize((generated - mu).flatten(2), dim=1)  # (B, C, N)
    t = F.normalize((target - mu).flatten(2), dim=1)
    cos = torch.bmm(g.transpose(1, 2), t)  # (B, N_gen, N_target)
    d = (1.0 - cos) / 2.0
    r = d / (d.min(dim=2, keepdim=True).values + eps)
    cx = torch.softmax(-r / sigma, dim=2)
    best = cx.max(dim=1).values  # (B, N_target): best generated match of each target point
    return -torch.log(best.mean(dim=1)).sum()


class IDMRFLoss(nn.Module):
    """DECA's ID-MRF loss on VGG19 features (``lossfunc.IDMRFLoss``).

    ``L = lambda_style sum_l w_l MRF(phi_l(G), phi_l(T)) + lambda_content sum_l w_l MRF(...)``
    with :func:`mrf_loss` on ImageNet-normalised inputs; DECA uses style layers relu3_1 and
    relu4_1 (its names ``relu3_2``/``relu4_2``, see :data:`DECA_IDMRF_STYLE_LAYERS`) and
    content layer relu4_1, all weights and lambdas 1, sigma 0.5. In DECA's detail stage the
    term is ``ID-MRF(P * V, T * V) * photo_D * mrf`` on the cropped UV face patches.

    The VGG is a fixed loss network: its parameters do not require gradients.

    Args:
        vgg: feature extractor with loaded weights (:func:`~emorig.reconstruct.vgg.load_vgg19`);
            ``None`` builds a randomly initialised one (tests only).
        style_layers: ``(name, weight)`` pairs.
        content_layers: ``(name, weight)`` pairs.
        lambda_style: factor of the style sum.
        lambda_content: factor of the content sum.
        sigma: :func:`mrf_loss` bandwidth.
    """

    def __init__(
        self,
        vgg: VGG19Features | None = None,
        style_layers: LayerWeights = DECA_IDMRF_STYLE_LAYERS,
        content_layers: LayerWeights = DECA_IDMRF_CONTENT_LAYERS,
        lambda_style: float = 1.0,
        lambda_content: float = 1.0,
        sigma: float = 0.5,
    ) -> None:
        super().__init__()
        self.vgg = vgg if vgg is not None else VGG19Features()
        self.vgg.requires_grad_(False)
        self.vgg.eval()
        self.style_layers = tuple(_pairs(style_layers))
        self.content_layers = tuple(_pairs(content_layers))
        self.lambda_style = float(lambda_style)
        self.lambda_content = float(lambda_content)
        self.sigma = float(sigma)
        self._layers = tuple(dict.fromkeys(n for n, _ in self.style_layers + self.content_layers))

    def forward(self, generated: Tensor, target: Tensor) -> Tensor:
        """ID-MRF between two batches of images.

        Args:
            generated: (B, 3, H, W) RGB in [0, 1], gradients flow back to it.
            target: (B, 3, H, W) RGB in [0, 1].

        Returns:
            Scalar loss (summed over the batch, as DECA).
        """
        if generated.shape != target.shape:
            raise ValueError(f"generated {tuple(generated.shape)}, target {tuple(target.shape)}")
        feats_g = self.vgg(imagenet_normalize(generated), self._layers)
        feats_t = self.vgg(imagenet_normalize(target), self._layers)
        style = sum(w * mrf_loss(feats_g[n], feats_t[n], self.sigma) for n, w in self.style_layers)
        content = sum(
            w * mrf_loss(feats_g[n], feats_t[n], self.sigma) for n, w in self.content_layers
        )
        return self.lambda_style * style + self.lambda_content * content


def _pairs(layers: LayerWeights) -> list[tuple[str, float]]:
    items = layers.items() if isinstance(layers, Mapping) else layers
    return [(str(name), float(weight)) for name, weight in items]

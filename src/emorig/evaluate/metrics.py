"""Metrics for edited faces: identity, code errors, emotion accuracy, multi-view consistency,
FID and NoW-style scan-to-mesh error.

Pure functions of tensors (any device; results computed on the inputs' device, reductions in
float64 where precision matters), each returning a float, a per-item tensor or a frozen
result. Bad inputs raise :class:`~emorig.errors.EmorigError` with one line naming the argument.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.errors import EmorigError
from emorig.geometry.rotations import axis_angle_to_matrix
from emorig.types import EMOTION_CLASSES, FaceCode

__all__ = [
    "DLIB_SAME_PERSON",
    "CodeErrors",
    "EmotionAccuracy",
    "IdentityScore",
    "MeshDistance",
    "ScanError",
    "ShapeIdentityScore",
    "Similarity",
    "ViewConsistency",
    "closest_points_on_triangles",
    "code_errors",
    "cosine_similarity",
    "emotion_accuracy",
    "expression_error",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "fid_from_images",
    "frechet_distance",
    "identity_embeddings",
    "identity_similarity",
    "light_rmse",
    "multiview_consistency",
    "now_scan_to_mesh_error",
    "point_to_mesh_distance",
    "rotation_angle_deg",
    "shape_identity",
    "sqrtm_psd",
    "umeyama",
]

#: dlib's same-person threshold on the Euclidean distance of its 128-d descriptors.
DLIB_SAME_PERSON = 0.6
_EPS = 1e-12


def _tensor(name: str, value, dims: int | None = None, last: int | None = None) -> Tensor:
    """``value`` as a floating tensor, checking its number of dims and last size."""
    t = torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.double()
    if dims is not None and t.dim() != dims:
        raise EmorigError(f"{name}: expected {dims} dims, got shape {tuple(t.shape)}")
    if last is not None and t.shape[-1] != last:
        raise EmorigError(f"{name}: last dim must be {last}, got shape {tuple(t.shape)}")
    return t


def _same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise EmorigError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} differ")


def _pad_to(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad the last dim of the shorter one (absent coefficients are zero)."""
    n = max(a.shape[-1], b.shape[-1])
    return F.pad(a, (0, n - a.shape[-1])), F.pad(b, (0, n - b.shape[-1]))


# ---------------------------------------------------------------------------------------------
# identity


@dataclass(frozen=True)
class IdentityScore:
    """Identity kept between pairs of faces, from face-recognition embeddings.

    Attributes:
        cosine: mean cosine similarity over the valid pairs, in [-1, 1] (1 = same direction).
        distance: mean Euclidean distance over the valid pairs (dlib: below 0.6 = same person).
        same_rate: share of valid pairs closer than the threshold, or None without one.
        per_pair_cosine: (N,) cosine per pair, NaN where an embedding is missing.
        per_pair_distance: (N,) distance per pair, NaN where an embedding is missing.
        n: valid pairs (both embeddings finite).
    """

    cosine: float
    distance: float
    same_rate: float | None
    per_pair_cosine: Tensor
    per_pair_distance: Tensor
    n: int


@dataclass(frozen=True)
class ShapeIdentityScore:
    """Identity kept in parameter space (synthetic data: the true shape codes are known).

    Attributes:
        cosine: mean cosine similarity of the shape codes, in [-1, 1].
        l2: mean Euclidean distance of the shape codes (coefficient units).
        per_item_cosine, per_item_l2: (N,) values.
    """

    cosine: float
    l2: float
    per_item_cosine: Tensor
    per_item_l2: Tensor


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity.

    Args:
        a, b: (N, D) vectors.

    Returns:
        (N,) in [-1, 1], float64; a zero vector gives 0.
    """
    a, b = _tensor("a", a, 2).double(), _tensor("b", b, 2).double()
    _same_shape("a", a, "b", b)
    dot = (a * b).sum(-1)
    return dot / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(_EPS)


def identity_similarity(
    source: Tensor, edited: Tensor, threshold: float | None = DLIB_SAME_PERSON
) -> IdentityScore:
    """Mean identity similarity of pairs of face embeddings (e.g. dlib's 128-d descriptors).

    Args:
        source: (N, D) embeddings of the original faces; rows with NaN (no face found) are
            left out of the means.
        edited: (N, D) embeddings of the edited faces, paired row by row.
        threshold: same-person distance for ``same_rate`` (dlib: 0.6), or None.

    Returns:
        :class:`IdentityScore`; means are NaN when no pair is valid.
    """
    a, b = _tensor("source", source, 2).double(), _tensor("edited", edited, 2).double()
    _same_shape("source", a, "edited", b)
    valid = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    nan = torch.full((a.shape[0],), math.nan, dtype=torch.float64, device=a.device)
    cos = torch.where(valid, cosine_similarity(a.nan_to_num(), b.nan_to_num()), nan)
    dist = torch.where(valid, (a - b).nan_to_num().norm(dim=-1), nan)
    n = int(valid.sum())
    mean = lambda t: float(t[valid].mean()) if n else math.nan  # noqa: E731
    rate = None
    if threshold is not None:
        rate = float((dist[valid] < threshold).double().mean()) if n else math.nan
    return IdentityScore(mean(cos), mean(dist), rate, cos, dist, n)


def shape_identity(requested: Tensor, reconstructed: Tensor) -> ShapeIdentityScore:
    """Identity in parameter space: cosine and L2 between shape codes.

    Args:
        requested: (N, S) true identity coefficients.
        reconstructed: (N, S') re-reconstructed ones (the shorter is zero-padded).
    """
    a, b = _tensor("requested", requested, 2), _tensor("reconstructed", reconstructed, 2)
    a, b = _pad_to(a.double(), b.double().to(a.device))
    cos = cosine_similarity(a, b)
    l2 = (a - b).norm(dim=-1)
    return ShapeIdentityScore(float(cos.mean()), float(l2.mean()), cos, l2)


def identity_embeddings(images, backend=None) -> Tensor:
    """Face-recognition embeddings of images, one per image (its largest face).

    Args:
        images: (B, 3, H, W) float tensor in [0, 1], or a sequence of (H, W, 3) uint8 arrays.
        backend: a :class:`~emorig.faces.backends.FaceBackend` with detector, 68 landmarks and
            embedder (default: ``load_backend("dlib")``, 128-d).

    Returns:
        (B, D) float64 on the CPU; a row of NaN where no face was found.
    """
    from emorig.io.images import to_uint8

    if backend is None:
        from emorig.faces.backends import load_backend

        backend = load_backend("dlib")
    if backend.detector is None or backend.landmarks68 is None or backend.embedder is None:
        raise EmorigError(f"face backend '{backend.name}' cannot embed identities")
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise EmorigError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
        pictures = [to_uint8(im) for im in images]
    else:
        pictures = [to_uint8(np.asarray(im)) for im in images]
    out = torch.full((len(pictures), backend.embedder.dim), math.nan, dtype=torch.float64)
    for i, pic in enumerate(pictures):
        faces = backend.detector.detect(pic)
        if not faces:
            continue
        face = max(faces, key=lambda d: d.area)
        landmarks = backend.landmarks68.landmarks(pic, face)
        out[i] = torch.as_tensor(np.asarray(backend.embedder.embed(pic, landmarks)))
    return out


# ---------------------------------------------------------------------------------------------
# code errors


@dataclass(frozen=True)
class CodeErrors:
    """Requested vs re-reconstructed codes, means over the batch.

    Attributes:
        expression_l2: L2 norm of the difference of (expression, jaw) vectors.
        expression_mae: mean absolute difference over those coefficients.
        pose_deg: geodesic angle between global head rotations, degrees in [0, 180].
        jaw_deg: geodesic angle between jaw rotations, degrees.
        light_rmse: RMSE over the 27 SH coefficients.
        n: faces compared.
    """

    expression_l2: float
    expression_mae: float
    pose_deg: float
    jaw_deg: float
    light_rmse: float
    n: int


def expression_error(
    requested: Tensor,
    reconstructed: Tensor,
    requested_jaw: Tensor | None = None,
    reconstructed_jaw: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Expression error over expression coefficients and (optionally) the jaw rotation.

    Args:
        requested, reconstructed: (B, E) and (B, E') expression coefficients (the shorter is
            zero-padded: absent coefficients are zero).
        requested_jaw, reconstructed_jaw: (B, 3) jaw axis-angles (radians), appended to the
            vectors when given (both or neither).

    Returns:
        ``(l2, mae)``: (B,) L2 norm of the difference and (B,) mean absolute difference over
        the E + 3 (or E) entries, float64.
    """
    a = _tensor("requested", requested, 2).double()
    b = _tensor("reconstructed", reconstructed, 2).double().to(a.device)
    if a.shape[0] != b.shape[0]:
        raise EmorigError(f"requested has {a.shape[0]} rows, reconstructed {b.shape[0]}")
    a, b = _pad_to(a, b)
    if (requested_jaw is None) != (reconstructed_jaw is None):
        raise EmorigError("give both jaw poses or neither")
    if requested_jaw is not None:
        ja = _tensor("requested_jaw", requested_jaw, 2, 3).double().to(a.device)
        jb = _tensor("reconstructed_jaw", reconstructed_jaw, 2, 3).double().to(a.device)
        _same_shape("requested_jaw", ja, "reconstructed_jaw", jb)
        a, b = torch.cat([a, ja], -1), torch.cat([b, jb], -1)
    diff = a - b
    return diff.norm(dim=-1), diff.abs().mean(-1)


def rotation_angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """Geodesic distance between rotations given as axis-angles.

    The angle of ``R_a^T R_b``, from ``atan2(|vee(M - M^T)| / 2, (tr M - 1) / 2)``, accurate
    near 0 and 180 degrees.

    Args:
        a, b: (..., 3) axis-angle vectors in radians.

    Returns:
        (...,) angles in degrees in [0, 180], float64.
    """
    a = _tensor("a", a, last=3).double()
    b = _tensor("b", b, last=3).double().to(a.device)
    _same_shape("a", a, "b", b)
    m = axis_angle_to_matrix(a).transpose(-1, -2) @ axis_angle_to_matrix(b)
    skew = torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]],
        -1,
    )
    sin = skew.norm(dim=-1) / 2
    cos = (m.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def light_rmse(requested: Tensor, reconstructed: Tensor) -> Tensor:
    """RMSE between SH light codes.

    Args:
        requested, reconstructed: (B, 9, 3) DECA SH coefficients.

    Returns:
        (B,) root mean square difference over the 27 coefficients, float64.
    """
    a = _tensor("requested", requested, 3).double()
    b = _tensor("reconstructed", reconstructed, 3).double().to(a.device)
    _same_shape("requested", a, "reconstructed", b)
    return (a - b).pow(2).flatten(1).mean(-1).sqrt()


def code_errors(requested: FaceCode, reconstructed: FaceCode) -> CodeErrors:
    """Expression, pose, jaw and light errors between requested and re-reconstructed codes."""
    if requested.batch_size != reconstructed.batch_size:
        raise EmorigError(
            f"requested has {requested.batch_size} faces, reconstructed {reconstructed.batch_size}"
        )
    l2, mae = expression_error(
        requested.expression, reconstructed.expression, requested.jaw_pose, reconstructed.jaw_pose
    )
    return CodeErrors(
        expression_l2=float(l2.mean()),
        expression_mae=float(mae.mean()),
        pose_deg=float(rotation_angle_deg(requested.global_pose, reconstructed.global_pose).mean()),
        jaw_deg=float(rotation_angle_deg(requested.jaw_pose, reconstructed.jaw_pose).mean()),
        light_rmse=float(light_rmse(requested.light, reconstructed.light).mean()),
        n=requested.batch_size,
    )


# ---------------------------------------------------------------------------------------------
# emotion


@dataclass(frozen=True)
class EmotionAccuracy:
    """Requested emotion classes vs what a recogniser sees in the edits.

    Attributes:
        accuracy: share of labelled edits predicted as the requested class, in [0, 1].
        per_class: recall of each requested class (NaN for classes never requested).
        confusion: (C, C) int64 counts, rows requested, columns predicted.
        n: labelled edits counted (requested class >= 0).
    """

    accuracy: float
    per_class: tuple[float, ...]
    confusion: Tensor
    n: int


def emotion_accuracy(
    requested: Tensor, predicted: Tensor, n_classes: int = len(EMOTION_CLASSES)
) -> EmotionAccuracy:
    """Emotion accuracy of edits.

    Args:
        requested: (N,) int class indices (:data:`~emorig.types.EMOTION_CLASSES` order);
            negative entries (unlabelled) are skipped.
        predicted: (N,) int predicted classes, or (N, C) logits / probabilities.
        n_classes: C.
    """
    req = torch.as_tensor(requested)
    pred = torch.as_tensor(predicted)
    if pred.dim() == 2:
        pred = pred.argmax(-1)
    if req.dim() != 1 or pred.shape != req.shape:
        raise EmorigError(
            f"requested {tuple(req.shape)} and predicted {tuple(pred.shape)}: expected (N,) "
            "classes and (N,) classes or (N, C) scores"
        )
    if req.is_floating_point() or pred.is_floating_point():
        raise EmorigError("requested and predicted classes must be integers")
    pred = pred.to(req.device)
    keep = req >= 0
    req, pred = req[keep].long(), pred[keep].long()
    if req.numel() and (
        int(req.max()) >= n_classes or int(pred.min()) < 0 or int(pred.max()) >= n_classes
    ):
        raise EmorigError(f"class indices must be in [0, {n_classes})")
    confusion = torch.bincount(req * n_classes + pred, minlength=n_classes * n_classes)
    confusion = confusion.view(n_classes, n_classes).cpu()
    totals = confusion.sum(1)
    per_class = tuple(
        float(confusion[c, c] / totals[c]) if totals[c] else math.nan for c in range(n_classes)
    )
    n = int(req.numel())
    acc = float((req == pred).double().mean()) if n else math.nan
    return EmotionAccuracy(acc, per_class, confusion, n)


# ---------------------------------------------------------------------------------------------
# multi-view consistency


@dataclass(frozen=True)
class ViewConsistency:
    """Spread of codes re-reconstructed from several views of the same face and edit.

    Attributes:
        mean: mean over groups of the mean distance of each view's code to its group mean.
        max: the largest distance of any view's code to its group mean.
        per_group: (G,) mean distance to the group mean.
        n_groups, n_views: G and K.
    """

    mean: float
    max: float
    per_group: Tensor
    n_groups: int
    n_views: int


def multiview_consistency(codes: Tensor) -> ViewConsistency:
    """Multi-view consistency of re-reconstructed codes (0 when every view agrees).

    Args:
        codes: (G, K, D): for each of G groups (one identity and edit), the code (e.g.
            expression and jaw) re-reconstructed from each of K views.

    Returns:
        :class:`ViewConsistency`, Euclidean distances in code units.
    """
    x = _tensor("codes", codes, 3).double()
    if x.shape[1] < 1 or x.shape[0] < 1:
        raise EmorigError(f"codes: need at least one group and view, got {tuple(x.shape)}")
    dist = (x - x.mean(1, keepdim=True)).norm(dim=-1)  # (G, K)
    per_group = dist.mean(1)
    return ViewConsistency(
        float(per_group.mean()), float(dist.max()), per_group, x.shape[0], x.shape[1]
    )


# ---------------------------------------------------------------------------------------------
# FID


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition.

    Args:
        matrix: (D, D), symmetrised first; eigenvalues below zero (rounding) are clamped.

    Returns:
        (D, D) float64 symmetric ``S`` with ``S @ S = matrix``.
    """
    m = _tensor("matrix", matrix, 2).double()
    if m.shape[0] != m.shape[1]:
        raise EmorigError(f"matrix: expected a square matrix, got {tuple(m.shape)}")
    m = (m + m.T) / 2
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance of features.

    Args:
        features: (N, D), N >= 2.

    Returns:
        ``(mu, sigma)``: (D,) and (D, D) float64, covariance with ``N - 1`` (as numpy's
        ``np.cov`` and pytorch-fid).
    """
    x = _tensor("features", features, 2).double()
    if x.shape[0] < 2:
        raise EmorigError(f"features: need at least 2 rows for a covariance, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise EmorigError("features: contain NaN or infinity")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians (Heusel et al. 2017, eq. 6):

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``.

    The trace term is computed as ``tr((A S2 A)^(1/2))`` with ``A = S1^(1/2)``: the same
    eigenvalues as ``S1 S2`` but a symmetric PSD matrix, so float64 ``eigh`` gives it stably
    (no complex parts, no singular-matrix retries). Clamped at 0.

    Args:
        mu1, mu2: (D,) means (tensors or arrays).
        sigma1, sigma2: (D, D) covariances.

    Returns:
        The distance (squared feature units), >= 0.
    """
    m1, m2 = _tensor("mu1", mu1, 1).double(), _tensor("mu2", mu2, 1).double()
    s1, s2 = _tensor("sigma1", sigma1, 2).double(), _tensor("sigma2", sigma2, 2).double()
    dev = m1.device
    m2, s1, s2 = m2.to(dev), s1.to(dev), s2.to(dev)
    d = m1.shape[0]
    for name, t, shape in (("mu2", m2, (d,)), ("sigma1", s1, (d, d)), ("sigma2", s2, (d, d))):
        if tuple(t.shape) != shape:
            raise EmorigError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    for name, t in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        if not torch.isfinite(t).all():
            raise EmorigError(f"{name}: contains NaN or infinity")
    root1 = sqrtm_psd(s1)
    inner = root1 @ ((s2 + s2.T) / 2) @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (m1 - m2).pow(2).sum() + s1.trace() + s2.trace() - 2 * trace_sqrt
    return max(float(value), 0.0)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """FID between two sets of features (N, D) and (M, D) (N, M >= 2)."""
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    if mu1.shape != mu2.shape:
        raise EmorigError(f"features have {mu1.shape[0]} and {mu2.shape[0]} dims")
    return frechet_distance(mu1, s1, mu2, s2.to(s1.device))


def _batches(images, batch_size: int) -> Iterable[Tensor]:
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise EmorigError(f"images: expected (N, 3, H, W), got {tuple(images.shape)}")
        yield from images.split(batch_size)
    else:
        for batch in images:
            if not isinstance(batch, Tensor) or batch.dim() != 4 or batch.shape[1] != 3:
                raise EmorigError("images: expected (B, 3, H, W) tensors from the iterable")
            yield from batch.split(batch_size)


@torch.no_grad()
def extract_features(
    network: nn.Module | str | os.PathLike[str],
    images: Tensor | Iterable[Tensor],
    *,
    batch_size: int = 50,
    size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run a feature network (e.g. an Inception for FID) over images.

    Args:
        network: a module mapping (B, 3, H, W) images in [0, 1] to (B, D) features (any
            normalisation happens inside it), or the path of a ``torch.export`` program
            (``.pt2``) or TorchScript archive (loaded with
            :func:`emorig.io.networks.load_feature_network`).
        images: (N, 3, H, W) in [0, 1], or an iterable of such batches.
        batch_size: images per forward pass.
        size: resize to ``size`` x ``size`` (bilinear, antialiased) first, e.g. 299.
        device: where to run (default: the device of each batch).

    Returns:
        (N, D) float64 features on the CPU; (B, D, 1, 1) outputs are flattened.
    """
    if batch_size < 1:
        raise EmorigError(f"batch size {batch_size}: must be at least 1")
    if not isinstance(network, nn.Module):
        from emorig.io.networks import load_feature_network

        network = load_feature_network(network, "feature (FID)")
    feats = []
    for batch in _batches(images, batch_size):
        dev = torch.device(device) if device is not None else batch.device
        x = batch.to(dev, torch.float32)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        network.to(dev)
        out = network(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        feats.append(out.reshape(out.shape[0], -1).double().cpu())
    if not feats:
        raise EmorigError("images: no images given")
    return torch.cat(feats)


def fid_from_images(
    network: nn.Module | str | os.PathLike[str],
    images_a: Tensor | Iterable[Tensor],
    images_b: Tensor | Iterable[Tensor],
    *,
    batch_size: int = 50,
    size: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """FID between two image sets through one feature network (see :func:`extract_features`).

    Meaningful FID needs thousands of images per set and the exact network of the numbers you
    compare with (pytorch-fid's Inception at 299 px for the usual FID).
    """
    if not isinstance(network, nn.Module):
        from emorig.io.networks import load_feature_network

        network = load_feature_network(network, "feature (FID)")
    kw = {"batch_size": batch_size, "size": size, "device": device}
    return fid_from_features(
        extract_features(network, images_a, **kw), extract_features(network, images_b, **kw)
    )


# ---------------------------------------------------------------------------------------------
# NoW-style scan-to-mesh error


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation``.

    Attributes:
        scale: positive scale.
        rotation: (3, 3) proper rotation (det +1).
        translation: (3,).
    """

    scale: float
    rotation: Tensor
    translation: Tensor

    def apply(self, points: Tensor) -> Tensor:
        """(..., 3) points transformed (in the rotation's dtype and device)."""
        p = points.to(self.rotation)
        return self.scale * p @ self.rotation.T + self.translation

    def then(self, other: Similarity) -> Similarity:
        """``other`` applied after ``self``."""
        return Similarity(
            other.scale * self.scale,
            other.rotation @ self.rotation,
            other.scale * other.rotation @ self.translation + other.translation,
        )


def umeyama(source: Tensor, target: Tensor, with_scale: bool = True) -> Similarity:
    """Least-squares similarity transform mapping ``source`` onto ``target`` (Umeyama 1991).

    Minimises ``sum_i |s R x_i + t - y_i|^2``; the reflection case is handled (det R = +1).

    Args:
        source, target: (N, 3) corresponding points, N >= 3 not collinear.
        with_scale: also estimate the scale (else 1: Kabsch).

    Returns:
        :class:`Similarity` in float64 on the inputs' device.
    """
    x = _tensor("source", source, 2, 3).double()
    y = _tensor("target", target, 2, 3).double().to(x.device)
    _same_shape("source", x, "target", y)
    if x.shape[0] < 3:
        raise EmorigError(f"source: need at least 3 points, got {x.shape[0]}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cov = yc.T @ xc / x.shape[0]
    u, d, vt = torch.linalg.svd(cov)
    sign = torch.ones(3, dtype=x.dtype, device=x.device)
    if torch.det(u) * torch.det(vt) < 0:
        sign[2] = -1.0
    rotation = u @ torch.diag(sign) @ vt
    var_x = xc.pow(2).sum() / x.shape[0]
    if with_scale:
        if var_x <= _EPS:
            raise EmorigError("source: points coincide; cannot estimate a scale")
        scale = float((d * sign).sum() / var_x)
    else:
        scale = 1.0
    translation = my - scale * rotation @ mx
    return Similarity(scale, rotation, translation)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _safe_div(n: Tensor, d: Tensor) -> Tensor:
    return n / torch.where(d == 0, torch.ones_like(d), d)


def closest_points_on_triangles(points: Tensor, triangles: Tensor) -> Tensor:
    """Exact closest point on each triangle (Ericson, Real-Time Collision Detection, 5.1.5).

    Tests the Voronoi regions of the vertices, then the edges, then the face, vectorised.

    Args:
        points: (..., 3) query points.
        triangles: (..., 3, 3) triangles (vertex, xyz), broadcast against ``points``.

    Returns:
        (..., 3) closest points on the triangles (degenerate triangles give a point on them).
    """
    p = points
    a, b, c = triangles[..., 0, :], triangles[..., 1, :], triangles[..., 2, :]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    # the face region (lowest priority), then edges and vertices override it
    denom = va + vb + vc
    v = _safe_div(vb, denom)[..., None]
    w = _safe_div(vc, denom)[..., None]
    out = a + ab * v + ac * w
    on_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    t_bc = _safe_div(d4 - d3, (d4 - d3) + (d5 - d6))[..., None]
    out = torch.where(on_bc[..., None], b + (c - b) * t_bc, out)
    on_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    out = torch.where(on_ac[..., None], a + ac * _safe_div(d2, d2 - d6)[..., None], out)
    on_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    out = torch.where(on_ab[..., None], a + ab * _safe_div(d1, d1 - d3)[..., None], out)
    out = torch.where(((d6 >= 0) & (d5 <= d6))[..., None], c, out)
    out = torch.where(((d3 >= 0) & (d4 <= d3))[..., None], b, out)
    out = torch.where(((d1 <= 0) & (d2 <= 0))[..., None], a, out)
    return out


@dataclass(frozen=True)
class MeshDistance:
    """Distance from points to a triangle mesh.

    Attributes:
        distances: (P,) Euclidean distance to the nearest point of the surface.
        closest: (P, 3) that nearest point.
        face_index: (P,) int64 the triangle it lies on.
    """

    distances: Tensor
    closest: Tensor
    face_index: Tensor


def point_to_mesh_distance(
    points: Tensor,
    vertices: Tensor,
    faces: Tensor,
    *,
    candidates: int = 32,
    chunk_elements: int = 1 << 22,
) -> MeshDistance:
    """Exact point-to-surface distance to a triangle mesh, vectorised and chunked.

    Each point is tested against the ``candidates`` triangles whose bounding spheres come
    nearest (``|p - centre| - radius`` bounds the true distance from below). Where the best
    distance found exceeds the bound of the nearest untested triangle, the point is tested
    again with four times as many candidates, up to every triangle. The result is exact
    either way; only the time changes.

    Args:
        points: (P, 3) query points (e.g. scan points).
        vertices: (V, 3) mesh vertices.
        faces: (F, 3) int vertex indices.
        candidates: triangles tested first per point.
        chunk_elements: point x triangle pairs held at once (bounds, ~12 bytes a pair);
            exact tests hold a sixteenth as many (~200 bytes a pair).

    Returns:
        :class:`MeshDistance` in the dtype of ``points`` (at least float32) on their device.
    """
    p = _tensor("points", points, 2, 3)
    dtype = torch.promote_types(p.dtype, torch.float32)
    p = p.to(dtype)
    verts = _tensor("vertices", vertices, 2, 3).to(p.device, dtype)
    f = torch.as_tensor(faces, device=p.device)
    if f.dim() != 2 or f.shape[1] != 3 or f.is_floating_point():
        raise EmorigError(f"faces: expected (F, 3) integer indices, got {tuple(f.shape)}")
    if f.numel() == 0:
        raise EmorigError("faces: the mesh has no triangles")
    f = f.long()
    if int(f.min()) < 0 or int(f.max()) >= verts.shape[0]:
        raise EmorigError(f"faces: indices must be in [0, {verts.shape[0]})")
    if candidates < 1 or chunk_elements < 1:
        raise EmorigError("candidates and chunk_elements must be at least 1")
    tri = verts[f]  # (F, 3, 3)
    centre = tri.mean(1)
    radius = (tri - centre[:, None]).norm(dim=-1).amax(1)
    n_faces, n_points = tri.shape[0], p.shape[0]
    distances = torch.empty(n_points, dtype=dtype, device=p.device)
    closest = torch.empty(n_points, 3, dtype=dtype, device=p.device)
    index = torch.empty(n_points, dtype=torch.long, device=p.device)
    exact_pairs = max(1, chunk_elements // 16)
    step = max(1, chunk_elements // n_faces)
    for start in range(0, n_points, step):
        bound = torch.cdist(p[start : start + step], centre) - radius  # (R, F) lower bounds
        rows = torch.arange(bound.shape[0], device=p.device)
        k = min(candidates, n_faces)
        while rows.numel():
            lb, cand = bound[rows].topk(k, dim=1, largest=False)  # ascending
            best = _nearest_among(
                p, tri, start + rows, cand, exact_pairs, distances, closest, index
            )
            if k == n_faces:
                break
            rows = rows[best > lb[:, -1]]  # an untested triangle might be nearer
            k = min(4 * k, n_faces)
    return MeshDistance(distances, closest, index)


def _nearest_among(p, tri, rows, cand, max_pairs, distances, closest, index) -> Tensor:
    """For points ``p[rows]``, the nearest of their candidate triangles ``cand`` (R, k):
    writes distance, closest point and triangle; returns (R,) the distances."""
    k = cand.shape[1]
    step = max(1, max_pairs // k)
    for s in range(0, rows.shape[0], step):
        r, c = rows[s : s + step], cand[s : s + step]
        q = p[r]
        near = closest_points_on_triangles(q[:, None], tri[c])  # (r, k, 3)
        d, j = (near - q[:, None]).norm(dim=-1).min(1)
        distances[r] = d
        closest[r] = near.gather(1, j[:, None, None].expand(-1, 1, 3)).squeeze(1)
        index[r] = c.gather(1, j[:, None]).squeeze(1)
    return distances[rows]


@dataclass(frozen=True)
class ScanError:
    """NoW-style reconstruction error of one scan (units of the scan, NoW: millimetres).

    Attributes:
        mean, median, std: statistics of the scan-to-mesh distances.
        distances: (P,) distance of every scan point to the aligned predicted mesh.
        alignment: the similarity that maps the predicted mesh onto the scan.
    """

    mean: float
    median: float
    std: float
    distances: Tensor
    alignment: Similarity


def now_scan_to_mesh_error(
    scan_points: Tensor,
    scan_landmarks: Tensor,
    vertices: Tensor,
    faces: Tensor,
    mesh_landmarks: Tensor,
    *,
    icp_iterations: int = 0,
    candidates: int = 32,
    chunk_elements: int = 1 << 22,
) -> ScanError:
    """Scan-to-mesh error as the NoW benchmark measures it (Sanyal et al. 2019).

    The predicted mesh is aligned to the scan by the similarity transform (rotation,
    translation, scale) that best maps its 7 landmarks (NoW: the four eye corners, the nose
    tip and the two mouth corners) onto the scan's; then every scan point's distance to the
    aligned mesh surface is measured (exact point-to-triangle distance). NoW's official
    script refines the alignment further on the whole surface: ``icp_iterations`` > 0 does so
    with point-to-surface ICP (Umeyama with scale on the closest points).

    Args:
        scan_points: (P, 3) the ground-truth scan's points (NoW crops them around the face).
        scan_landmarks: (L, 3) landmarks on the scan (NoW: L = 7).
        vertices: (V, 3) the predicted mesh's vertices.
        faces: (F, 3) its triangles.
        mesh_landmarks: (L, 3) the same landmarks on the predicted mesh.
        icp_iterations: rounds of rigid (with scale) point-to-surface refinement.
        candidates, chunk_elements: see :func:`point_to_mesh_distance`.

    Returns:
        :class:`ScanError` (float64).
    """
    scan = _tensor("scan_points", scan_points, 2, 3).double()
    verts = _tensor("vertices", vertices, 2, 3).double().to(scan.device)
    lm_scan = _tensor("scan_landmarks", scan_landmarks, 2, 3).double().to(scan.device)
    lm_mesh = _tensor("mesh_landmarks", mesh_landmarks, 2, 3).double().to(scan.device)
    _same_shape("scan_landmarks", lm_scan, "mesh_landmarks", lm_mesh)
    if scan.shape[0] == 0:
        raise EmorigError("scan_points: the scan has no points")
    if icp_iterations < 0:
        raise EmorigError(f"icp_iterations {icp_iterations}: must be >= 0")
    alignment = umeyama(lm_mesh, lm_scan, with_scale=True)
    kw = {"candidates": candidates, "chunk_elements": chunk_elements}
    result = point_to_mesh_distance(scan, alignment.apply(verts), faces, **kw)
    for _ in range(icp_iterations):
        step = umeyama(result.closest, scan, with_scale=True)
        alignment = alignment.then(step)
        result = point_to_mesh_distance(scan, alignment.apply(verts), faces, **kw)
    d = result.distances
    median = float(np.median(d.cpu().numpy()))  # the mean of the two middle values, as NoW
    return ScanError(float(d.mean()), median, float(d.std(unbiased=False)), d, alignment)

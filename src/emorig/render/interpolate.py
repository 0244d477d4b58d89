"""Barycentric interpolation of vertex or face-corner attributes over rasterized pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from emorig.types import Fragments

__all__ = ["interpolate"]


def interpolate(fragments: Fragments, attributes: Tensor, faces: Tensor | None = None) -> Tensor:
    """Interpolate attributes at every covered pixel with the fragments' barycentrics.

    ``out[b, :, y, x] = sum_k bary[b, y, x, k] * attr(face, corner k)``, zero on background.

    Args:
        fragments: rasterizer output for a batch of B images of H x W pixels.
        attributes: either (B, V, C) per-vertex attributes, looked up through ``faces``, or
            (B, F, 3, C) per-face-corner attributes (``faces`` must then be ``None``), e.g.
            texture coordinates with their own face list. Any float dtype and device matching
            ``fragments``; a batch of 1 is broadcast.
        faces: (F, 3) integer vertex indices, required with per-vertex attributes.

    Returns:
        (B, C, H, W) in the dtype of ``attributes``; differentiable with respect to
        ``attributes`` and ``fragments.bary``. Not renormalised (interpolated unit normals are
        shorter than 1 inside a face, as in DECA).

    Raises:
        ValueError: on inconsistent shapes or a missing/unexpected ``faces``.
    """
    p2f, bary = fragments.pix_to_face, fragments.bary
    b, h, w = p2f.shape
    if attributes.dim() == 3:
        if faces is None:
            raise ValueError("per-vertex attributes (B, V, C) need faces (F, 3)")
        if faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    elif attributes.dim() == 4:
        if faces is not None:
            raise ValueError("per-face-corner attributes (B, F, 3, C) take no faces")
        if attributes.shape[2] != 3:
            raise ValueError(f"face attributes must be (B, F, 3, C), got {tuple(attributes.shape)}")
    else:
        raise ValueError(
            f"attributes must be (B, V, C) or (B, F, 3, C), got {tuple(attributes.shape)}"
        )
    if attributes.shape[0] not in (1, b):
        raise ValueError(f"attributes batch {attributes.shape[0]} does not match fragments {b}")
    if attributes.device != p2f.device:
        raise ValueError(f"attributes on {attributes.device} but fragments on {p2f.device}")
    if not attributes.is_floating_point():
        raise ValueError(f"attributes must be floating point, got {attributes.dtype}")
    c = attributes.shape[-1]

    with torch.no_grad():
        covered = (p2f.reshape(-1) >= 0).nonzero().squeeze(1)  # flat b * H W + pixel
        face = p2f.reshape(-1)[covered]
        if faces is not None:  # rows of the (B V, C) attributes
            corners = faces.to(face.device).long()[face]
            per_item = attributes.shape[1]
        else:  # rows of the (B F 3, C) attributes
            corners = (face * 3)[:, None] + torch.arange(3, device=face.device)
            per_item = attributes.shape[1] * 3
        if attributes.shape[0] > 1:
            batch = torch.div(covered, h * w, rounding_mode="floor")
            corners += (batch * per_item)[:, None]
    # gather with a broadcast index is markedly faster than index_select for short rows on CPU
    rows = corners.reshape(-1, 1).expand(-1, c)
    values = attributes.reshape(-1, c).gather(0, rows).view(-1, 3, c)  # (M, 3, C)
    weights = bary.reshape(-1, 3).gather(0, covered[:, None].expand(-1, 3)).to(attributes.dtype)
    out_m = torch.einsum("mk,mkc->mc", weights, values)
    out = attributes.new_zeros(b * h * w, c).index_copy_(0, covered, out_m)
    return out.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()

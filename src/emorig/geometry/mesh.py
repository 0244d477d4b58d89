"""Per-face gathering and normals of triangle meshes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def face_vertices(attributes: Tensor, faces: Tensor) -> Tensor:
    """Gather per-corner attributes. attributes (B, V, C), faces (F, 3) -> (B, F, 3, C)."""
    return attributes[:, faces]


def face_normals(vertices: Tensor, faces: Tensor, normalize: bool = True) -> Tensor:
    """(B, V, 3), (F, 3) -> (B, F, 3) normals ``(v1 - v0) x (v2 - v0)`` (outward for CCW faces)."""
    tri = face_vertices(vertices, faces)
    n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    return F.normalize(n, dim=-1, eps=1e-12) if normalize else n


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals, as DECA computes them. (B, V, 3), (F, 3) -> (B, V, 3)."""
    n = face_normals(vertices, faces, normalize=False)  # |n| = 2 * area
    out = torch.zeros_like(vertices)
    idx = faces.reshape(-1)
    out.index_add_(1, idx, n.repeat_interleave(3, dim=1))
    return F.normalize(out, dim=-1, eps=1e-12)

"""DECA's detail model in UV space: position maps, displacement -> detail normals, detail
shading and a dense detail mesh.

A UV map here is a (B, C, S, S) image over the head's texture layout with row 0 at ``v = 1``
(the layout :class:`emorig.render.MeshRenderer` samples albedo from).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.geometry.mesh import face_vertices, vertex_normals
from emorig.render.interpolate import interpolate
from emorig.render.rasterize import rasterize
from emorig.types import Fragments

UV_SIZE = 256


def dense_grid_faces(size: int, margin_x: int = 2, margin_y: int = 5) -> np.ndarray:
    """Triangles over a ``size`` x ``size`` pixel grid (DECA's ``generate_triangles``).

    Vertex ``y * size + x`` is pixel (x, y); two triangles per quad, a margin of grid cells
    left out on each side as DECA does. Returns (F, 3) int64, counter-clockwise with the
    v-up orientation of the UV map.
    """
    xs = np.arange(margin_x, size - 1 - margin_x)
    ys = np.arange(margin_y, size - 1 - margin_y)
    x, y = np.meshgrid(xs, ys, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    i = y * size + x
    t0 = np.stack([i, i + 1, i + size], 1)
    t1 = np.stack([i + 1, i + size + 1, i + size], 1)
    tri = np.stack([t0, t1], 1).reshape(-1, 3)
    return tri[:, [0, 2, 1]].astype(np.int64)


class UVMapper(nn.Module):
    """Rasterizes a mesh's UV layout once and maps per-vertex attributes into UV space.

    Args:
        faces: (F, 3) mesh triangles.
        uv: (T, 2) texture coordinates in [0, 1], v up.
        uv_faces: (F, 3) indices into ``uv``.
        size: side of the UV maps (DECA: 256).
    """

    def __init__(self, faces: Tensor, uv: Tensor, uv_faces: Tensor, size: int = UV_SIZE):
        super().__init__()
        self.size = size
        screen = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2, torch.ones_like(uv[:, 0])], -1)
        frags = rasterize(screen[None].double(), uv_faces.long(), (size, size))
        self.register_buffer("faces", faces.long(), persistent=False)
        self.register_buffer("pix_to_face", frags.pix_to_face, persistent=False)
        self.register_buffer("bary", frags.bary.float(), persistent=False)

    @property
    def mask(self) -> Tensor:
        """(1, 1, S, S) texels covered by the layout."""
        return (self.pix_to_face >= 0).unsqueeze(1).to(self.bary.dtype)

    def fragments(self, batch: int, dtype: torch.dtype) -> Fragments:
        shape = (batch, self.size, self.size)
        return Fragments(
            self.pix_to_face.expand(*shape),
            self.bary.to(dtype).expand(*shape, 3),
            torch.zeros(shape, dtype=dtype, device=self.bary.device),
        )

    def forward(self, attributes: Tensor) -> Tensor:
        """(B, V, C) per-vertex attributes -> (B, C, S, S) UV map (zero outside the layout)."""
        b = attributes.shape[0]
        corners = face_vertices(attributes, self.faces)
        return interpolate(self.fragments(b, attributes.dtype), corners)


def displacement_to_normals(
    uv_z: Tensor,
    uv_vertices: Tensor,
    uv_normals: Tensor,
    face_eye_mask: Tensor,
    dense_faces: Tensor,
    fixed_displacement: Tensor | None = None,
) -> Tensor:
    """Detail normals from a displacement map (DECA's ``displacement2normal``).

    ``v_detail = v_coarse + (z * mask + z_fixed) * n_coarse`` on every texel, normals of the
    dense texel mesh, coarse normals kept outside the face/eye mask.

    Args:
        uv_z: (B, 1, S, S) displacement along the normal, metres.
        uv_vertices: (B, 3, S, S) coarse positions in UV (:class:`UVMapper`).
        uv_normals: (B, 3, S, S) coarse vertex normals in UV.
        face_eye_mask: (S, S) or (1, 1, S, S) in [0, 1].
        dense_faces: (F, 3) triangles over the texel grid (:func:`dense_grid_faces`).
        fixed_displacement: (S, S) DECA's fixed displacement, or None.

    Returns:
        (B, 3, S, S) unit normals.
    """
    b, _, s, _ = uv_z.shape
    mask = face_eye_mask.reshape(1, 1, s, s).to(uv_z)
    n_coarse = uv_normals.detach()
    offset = uv_z * mask
    if fixed_displacement is not None:
        offset = offset + fixed_displacement.reshape(1, 1, s, s).to(uv_z)
    dense = (uv_vertices.detach() + offset * n_coarse).permute(0, 2, 3, 1).reshape(b, -1, 3)
    normals = vertex_normals(dense, dense_faces).reshape(b, s, s, 3).permute(0, 3, 1, 2)
    return normals * mask + n_coarse * (1 - mask)


def sample_uv(uv_map: Tensor, uv: Tensor, mask: Tensor) -> Tensor:
    """Look a UV map up at every pixel of a render.

    Args:
        uv_map: (B, C, S, S).
        uv: (B, 2, H, W) texture coordinates of the visible surface (RenderBuffers.uv).
        mask: (B, 1, H, W) coverage.

    Returns:
        (B, C, H, W), zero on background.
    """
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1)
    return F.grid_sample(uv_map, grid, mode="bilinear", align_corners=False) * mask


def detail_mesh(
    uv_vertices: Tensor,
    uv_normals: Tensor,
    uv_z: Tensor,
    region: Tensor,
    fixed_displacement: Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dense mesh of the displaced surface over ``region`` (one vertex per texel).

    Args:
        uv_vertices, uv_normals: (3, S, S) coarse position and normal maps of one face.
        uv_z: (1, S, S) displacement.
        region: (S, S) bool texels to keep (e.g. the face/eye mask and the layout's coverage).
        fixed_displacement: (S, S) or None.

    Returns:
        vertices (V, 3), faces (F, 3) and per-vertex texture coordinates (V, 2) in [0, 1].
    """
    s = uv_z.shape[-1]
    offset = uv_z[0]
    if fixed_displacement is not None:
        offset = offset + fixed_displacement.to(offset)
    pos = (uv_vertices + offset * uv_normals).permute(1, 2, 0).reshape(-1, 3)
    keep = region.reshape(-1).cpu().numpy().astype(bool)
    grid = dense_grid_faces(s, 0, 0)
    faces = grid[keep[grid].all(1)]
    index = np.full(s * s, -1, dtype=np.int64)
    index[keep] = np.arange(int(keep.sum()))
    ys, xs = np.divmod(np.flatnonzero(keep), s)
    uv = np.stack([(xs + 0.5) / s, 1 - (ys + 0.5) / s], 1)
    return pos.detach().cpu().numpy()[keep], index[faces], uv


class DetailRenderer(nn.Module):
    """Detail normals and their images for one head topology.

    Args:
        faces, uv, uv_faces: the head's mesh and UV layout.
        face_eye_mask: (S, S) where displacements apply (DECA's ``uv_face_eye_mask.png``).
        fixed_displacement: (S, S) DECA's ``fixed_displacement_256.npy`` or None.
    """

    def __init__(
        self,
        faces: Tensor,
        uv: Tensor,
        uv_faces: Tensor,
        face_eye_mask: Tensor,
        fixed_displacement: Tensor | None = None,
    ):
        super().__init__()
        size = face_eye_mask.shape[-1]
        self.uv_mapper = UVMapper(faces, uv, uv_faces, size)
        self.register_buffer("face_eye_mask", face_eye_mask.float().reshape(size, size))
        fixed = torch.zeros(size, size) if fixed_displacement is None else fixed_displacement
        self.register_buffer("fixed_displacement", fixed.float().reshape(size, size))
        self.register_buffer(
            "dense_faces", torch.from_numpy(dense_grid_faces(size)), persistent=False
        )

    def uv_maps(self, vertices: Tensor) -> tuple[Tensor, Tensor]:
        """Coarse position and normal maps (B, 3, S, S) of posed world vertices (B, V, 3)."""
        normals = vertex_normals(vertices, self.uv_mapper.faces)
        return self.uv_mapper(vertices), self.uv_mapper(normals)

    def detail_normals(self, vertices: Tensor, uv_z: Tensor) -> Tensor:
        """(B, 3, S, S) detail normals for world vertices (B, V, 3) and displacements."""
        uv_v, uv_n = self.uv_maps(vertices)
        return displacement_to_normals(
            uv_z, uv_v, uv_n, self.face_eye_mask, self.dense_faces, self.fixed_displacement
        )

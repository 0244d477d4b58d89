"""A mesh renderer composing rasterize -> interpolate -> shade, DECA's ``SRenderY`` buffers.

The module only holds the topology (faces, texture coordinates); every stage is a pure
function of :mod:`emorig.render`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.geometry import CropTransform, face_vertices, vertex_normals
from emorig.render.interpolate import interpolate
from emorig.render.rasterize import rasterize
from emorig.render.shading import directional_shading, sh_shading
from emorig.types import Fragments, RenderBuffers

__all__ = [
    "MAX_RENDER_PIXELS",
    "SHAPE_COLOR",
    "SHAPE_LIGHT_DIRECTIONS",
    "SHAPE_LIGHT_INTENSITY",
    "SHAPE_SCREEN_NORMAL_MAX_Z",
    "MeshRenderer",
]

#: DECA's ``render_shape``: grey albedo, five directional lights (towards the light, FLAME
#: world space, normalised when shading) of intensity 1.7, and the screen-normal threshold
#: that hides faces seen edge-on or from behind.
SHAPE_COLOR = 180.0 / 255.0
SHAPE_LIGHT_DIRECTIONS = (
    (-1.0, 1.0, 1.0),
    (1.0, 1.0, 1.0),
    (-1.0, -1.0, 1.0),
    (1.0, -1.0, 1.0),
    (0.0, 0.0, 1.0),
)
SHAPE_LIGHT_INTENSITY = 1.7
SHAPE_SCREEN_NORMAL_MAX_Z = 0.15


def _check_mesh(vertices: Tensor, screen_vertices: Tensor, max_vertex: int) -> None:
    for name, t in (("vertices", vertices), ("screen_vertices", screen_vertices)):
        if t.dim() != 3 or t.shape[-1] != 3 or not t.is_floating_point():
            raise ValueError(f"{name} must be float (B, V, 3), got {tuple(t.shape)} {t.dtype}")
    if vertices.shape != screen_vertices.shape:
        raise ValueError(
            f"vertices {tuple(vertices.shape)} and screen_vertices "
            f"{tuple(screen_vertices.shape)} differ"
        )
    if vertices.shape[1] <= max_vertex:
        raise ValueError(
            f"faces index up to vertex {max_vertex}, but only {vertices.shape[1]} vertices given"
        )


#: The most pixels one rendered buffer may have (a 8192 x 8192 image): beyond this a size is a
#: mistake, not a photo, and the buffers would not fit in memory.
MAX_RENDER_PIXELS = 8192 * 8192


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    if h < 1 or w < 1 or h * w > MAX_RENDER_PIXELS:
        raise ValueError(
            f"image size {h}x{w}: choose sides of at least 1 and at most "
            f"{MAX_RENDER_PIXELS // 1_000_000} megapixels"
        )
    return size


def _resolve_size(
    image_size: tuple[int, int] | int | None, crop: CropTransform | None
) -> tuple[int, int]:
    return _check_size(_requested_size(image_size, crop))


def _requested_size(
    image_size: tuple[int, int] | int | None, crop: CropTransform | None
) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if crop is not None:
        crop_size = tuple(int(s) for s in crop.image_size)
        if image_size is not None and tuple(image_size) != crop_size:
            raise ValueError(f"image_size {image_size} differs from crop.image_size {crop_size}")
        return crop_size  # type: ignore[return-value]
    if image_size is None:
        raise ValueError("image_size is required without a crop")
    if len(image_size) != 2:
        raise ValueError(f"image_size {image_size}: give (H, W) or an int")
    return tuple(int(s) for s in image_size)  # type: ignore[return-value]


class MeshRenderer(nn.Module):
    """Render DiffusionRig's physical buffers and DECA's grey shape images of one topology.

    Args:
        faces: (F, 3) integer vertex indices, counter-clockwise seen from outside (FLAME).
        uv: (T, 2) texture coordinates in ``[0, 1]``, ``u`` right, ``v`` up (OBJ ``vt``).
        uv_faces: (F, 3) integer indices into ``uv`` per face corner.

    Buffers (not saved in the state dict: the topology comes from the user's asset files):
        ``faces``, ``uv_faces`` (int64), ``uv`` (T, 2) and ``uv_grid`` (T, 2), the latter the
        grid-sample coordinates ``(2 u - 1, -(2 v - 1))`` DECA uses (texture row 0 is ``v = 1``).
    """

    faces: Tensor
    uv_faces: Tensor
    uv: Tensor
    uv_grid: Tensor

    def __init__(self, faces: Tensor, uv: Tensor, uv_faces: Tensor) -> None:
        super().__init__()
        if faces.dim() != 2 or faces.shape[1] != 3 or faces.is_floating_point():
            raise ValueError(
                f"faces must be integer (F, 3), got {tuple(faces.shape)} {faces.dtype}"
            )
        if uv_faces.shape != faces.shape or uv_faces.is_floating_point():
            raise ValueError(
                f"uv_faces must be integer {tuple(faces.shape)}, got "
                f"{tuple(uv_faces.shape)} {uv_faces.dtype}"
            )
        if uv.dim() != 2 or uv.shape[1] != 2 or not uv.is_floating_point():
            raise ValueError(f"uv must be float (T, 2), got {tuple(uv.shape)} {uv.dtype}")
        if uv_faces.numel() and (int(uv_faces.min()) < 0 or int(uv_faces.max()) >= uv.shape[0]):
            raise ValueError(f"uv_faces index outside [0, {uv.shape[0]})")
        if faces.numel() and int(faces.min()) < 0:
            raise ValueError("faces has negative indices")
        self.register_buffer("faces", faces.long(), persistent=False)
        self.register_buffer("uv_faces", uv_faces.long(), persistent=False)
        self.register_buffer("uv", uv.clone(), persistent=False)
        grid = torch.stack([uv[:, 0] * 2 - 1, -(uv[:, 1] * 2 - 1)], -1)
        self.register_buffer("uv_grid", grid, persistent=False)
        self.max_vertex = int(faces.max()) if faces.numel() else -1

    def _rasterize(
        self,
        screen_vertices: Tensor,
        image_size: tuple[int, int] | int | None,
        crop: CropTransform | None,
        perspective_correct: bool,
    ) -> tuple[Fragments, Tensor, Tensor]:
        size = _resolve_size(image_size, crop)
        if crop is not None:
            screen_vertices = crop.crop_ndc_to_image_ndc(screen_vertices)
        faces = self.faces.to(screen_vertices.device)
        fragments = rasterize(screen_vertices, faces, size, perspective_correct=perspective_correct)
        return fragments, faces, screen_vertices

    def forward(
        self,
        vertices: Tensor,
        screen_vertices: Tensor,
        albedo_texture: Tensor,
        light: Tensor,
        image_size: tuple[int, int] | int | None = None,
        *,
        crop: CropTransform | None = None,
        perspective_correct: bool = False,
    ) -> RenderBuffers:
        """Rasterize, interpolate and shade: DECA's ``SRenderY.forward`` with SH light.

        Args:
            vertices: (B, V, 3) world-space vertices (FLAME: y up, z towards the camera); their
                area-weighted vertex normals are shaded.
            screen_vertices: (B, V, 3) DECA screen space (NDC x right, y down, smaller z
                nearer), of the output image or, with ``crop``, of the crop.
            albedo_texture: (B, 3, S, S) UV albedo in [0, 1], row 0 at ``v = 1`` (DECA's
                FLAMETex output); sampled bilinearly, ``align_corners=False``.
            light: (B, 9, 3) SH coefficients (DECA's light code).
            image_size: ``(H, W)`` of the output, or an int; taken from ``crop`` if given.
            crop: maps ``screen_vertices`` from crop NDC to the original image, whose size
                (``crop.image_size``) the buffers then have (DECA's ``render_orig``).
            perspective_correct: see :func:`~emorig.render.rasterize`.

        Returns:
            :class:`~emorig.types.RenderBuffers` (B, C, H, W), zero on background, in the
            dtype of ``vertices``: ``albedo`` = sampled texture, ``normal`` = interpolated
            world normals (not renormalised), ``shading`` = SH shading of ``normal``,
            ``rendered`` = albedo x shading, ``mask``, ``depth`` (screen depth), ``uv`` in
            [0, 1] (v up). Differentiable with respect to ``vertices``, ``screen_vertices``
            (no silhouette gradients), ``albedo_texture`` and ``light``.

        Raises:
            ValueError: on inconsistent shapes or sizes.
        """
        _check_mesh(vertices, screen_vertices, self.max_vertex)
        b = vertices.shape[0]
        if (
            albedo_texture.dim() != 4
            or albedo_texture.shape[1] != 3
            or (albedo_texture.shape[0] not in (1, b))
        ):
            raise ValueError(
                f"albedo_texture must be (B, 3, S, S) with B = {b}, got "
                f"{tuple(albedo_texture.shape)}"
            )
        if light.dim() != 3 or light.shape[1:] != (9, 3) or light.shape[0] not in (1, b):
            raise ValueError(f"light must be (B, 9, 3) with B = {b}, got {tuple(light.shape)}")
        dtype = vertices.dtype
        fragments, faces, _ = self._rasterize(
            screen_vertices, image_size, crop, perspective_correct
        )
        mask = fragments.mask.to(dtype)

        normals = vertex_normals(vertices, faces)  # (B, V, 3)
        grid_corners = face_vertices(self.uv_grid.to(vertices)[None], self.uv_faces.to(faces))
        corners = torch.cat(
            [grid_corners.expand(b, -1, -1, -1), face_vertices(normals, faces)], -1
        )  # (B, F, 3, 2 + 3)
        pixels = interpolate(fragments, corners)
        grid, normal = pixels[:, :2], pixels[:, 2:].contiguous()

        albedo = (
            F.grid_sample(
                albedo_texture.to(dtype).expand(b, -1, -1, -1),
                grid.permute(0, 2, 3, 1),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            * mask
        )
        shading = sh_shading(normal, light.to(dtype)) * mask
        uv = torch.stack([grid[:, 0] + 1, 1 - grid[:, 1]], 1) * 0.5 * mask
        depth = torch.where(mask > 0, fragments.zbuf.unsqueeze(1).to(dtype), 0.0)
        return RenderBuffers(
            rendered=albedo * shading,
            normal=normal,
            albedo=albedo,
            mask=mask,
            depth=depth,
            uv=uv,
            shading=shading,
        )

    def render_shape(
        self,
        vertices: Tensor,
        screen_vertices: Tensor,
        image_size: tuple[int, int] | int | None = None,
        *,
        crop: CropTransform | None = None,
        background: Tensor | None = None,
        normal_images: Tensor | None = None,
        perspective_correct: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """DECA's grey geometry image (``SRenderY.render_shape``).

        Albedo ``180/255`` lit by five directional lights of intensity 1.7 towards
        ``(-1, 1, 1), (1, 1, 1), (-1, -1, 1), (1, -1, 1), (0, 0, 1)`` (world space), mean of
        ``clamp(n . l, 0, 1) * 1.7``; pixels whose interpolated screen-space normal has
        ``z >= 0.15`` (edge-on or facing away; front faces point to ``-z``) are transparent.
        Screen normals are the vertex normals of the rasterized screen vertices (after the
        crop mapping, as DECA's ``render_orig``).

        Args:
            vertices: (B, V, 3) world-space vertices.
            screen_vertices: (B, V, 3) DECA screen space (of the crop when ``crop`` is given).
            image_size: ``(H, W)`` or an int; taken from ``crop`` if given.
            crop: crop-to-image mapping, see :meth:`forward`.
            background: (B, 3, H, W) image composited behind the shape; black by default.
            normal_images: (B, 3, H, W) normals to shade instead of the interpolated world
                normals (e.g. DECA's detail normals).
            perspective_correct: see :func:`~emorig.render.rasterize`.

        Returns:
            ``images`` (B, 3, H, W) and ``alpha`` (B, 1, H, W) in {0, 1}.
        """
        _check_mesh(vertices, screen_vertices, self.max_vertex)
        b, dtype = vertices.shape[0], vertices.dtype
        fragments, faces, screen = self._rasterize(
            screen_vertices, image_size, crop, perspective_correct
        )
        h, w = fragments.pix_to_face.shape[1:]
        for name, t in (("background", background), ("normal_images", normal_images)):
            if t is not None and (t.dim() != 4 or t.shape[1] != 3 or t.shape[2:] != (h, w)):
                raise ValueError(f"{name} must be (B, 3, {h}, {w}), got {tuple(t.shape)}")
        mask = fragments.mask.to(dtype)
        screen_nz = vertex_normals(screen, faces)[..., 2:]
        attributes = torch.cat([vertex_normals(vertices, faces), screen_nz.to(dtype)], -1)
        pixels = interpolate(fragments, attributes, faces)
        normal = pixels[:, :3] if normal_images is None else normal_images.to(dtype)
        directions = vertices.new_tensor(SHAPE_LIGHT_DIRECTIONS)[None].expand(b, -1, -1)
        intensities = torch.full_like(directions, SHAPE_LIGHT_INTENSITY)
        shaded = SHAPE_COLOR * mask * directional_shading(normal, directions, intensities)
        alpha = mask * (pixels[:, 3:4] < SHAPE_SCREEN_NORMAL_MAX_Z).to(dtype)
        images = shaded * alpha
        if background is not None:
            images = images + background.to(dtype) * (1 - alpha)
        return images, alpha

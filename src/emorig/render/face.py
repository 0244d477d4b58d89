"""From a :class:`~emorig.types.FaceCode` to image buffers: FLAME layer, albedo space,
camera and mesh renderer composed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emorig.flame.albedo import AlbedoModel
from emorig.flame.data import HeadAssets
from emorig.flame.model import FlameModel
from emorig.geometry.camera import CropTransform, PerspectiveCamera, orthographic_project
from emorig.render.renderer import MeshRenderer
from emorig.types import FaceCode, FlameOutput, RenderBuffers

# EMOCA renders a constant 0.5 grey when a model has no albedo space.
GREY_ALBEDO = 0.5


@dataclass(frozen=True)
class FaceRender:
    """Everything one render produces.

    Attributes:
        buffers: image-space buffers (B, C, H, W).
        flame: world-space FLAME output.
        screen_vertices: (B, V, 3) DECA screen-space vertices of the crop (or of the image
            when no crop is used).
        landmarks: (B, 68, 2) DECA's landmarks (contour + static) in NDC of the output image,
            or None without an embedding.
        albedo_texture: (B, 3, S, S) the UV albedo used.
    """

    buffers: RenderBuffers
    flame: FlameOutput
    screen_vertices: Tensor
    landmarks: Tensor | None
    albedo_texture: Tensor


class FaceRenderer(nn.Module):
    """FLAME head + albedo space + renderer for one head.

    Args:
        head: the head's assets; it needs a UV layout.
        n_shape, n_expression: FLAME components used (DECA: 100 and 50).
        n_albedo: albedo components used (DECA: 50); capped by the head's albedo space.
        texture_size: side of the UV albedo texture fed to the renderer (DECA: 256).
    """

    def __init__(
        self,
        head: HeadAssets,
        n_shape: int = 100,
        n_expression: int = 50,
        n_albedo: int = 50,
        texture_size: int = 256,
    ):
        super().__init__()
        if not 1 <= int(texture_size) <= 4096:
            raise ValueError(f"texture_size {texture_size}: choose a side from 1 to 4096")
        if head.uv is None:
            raise ValueError(
                f"{head.flame.name} has no UV layout; rendering needs one "
                "(for FLAME: head_template.obj)"
            )
        self.head_name = head.flame.name
        self.synthetic = head.synthetic
        self.flame = FlameModel(head, n_shape=n_shape, n_expression=n_expression)
        self.albedo_model = None
        if head.albedo is not None:
            k = min(n_albedo, head.albedo.n_components)
            self.albedo_model = AlbedoModel(head.albedo, n_components=k, output_size=texture_size)
        self.texture_size = texture_size
        self.mesh = MeshRenderer(
            torch.as_tensor(head.flame.faces),
            torch.as_tensor(head.uv.uv, dtype=torch.float32),
            torch.as_tensor(head.uv.uv_faces),
        )

    @property
    def n_albedo(self) -> int:
        return 0 if self.albedo_model is None else self.albedo_model.n_components

    def albedo_texture(self, code: FaceCode) -> Tensor:
        """(B, 3, S, S) albedo for ``code.albedo``; constant grey without an albedo space."""
        if self.albedo_model is None:
            return torch.full(
                (code.batch_size, 3, self.texture_size, self.texture_size),
                GREY_ALBEDO,
                dtype=code.shape.dtype,
                device=code.shape.device,
            )
        return self.albedo_model(code.albedo[:, : self.albedo_model.n_components])

    def geometry(self, code: FaceCode) -> FlameOutput:
        return self.flame(
            code.shape,
            code.expression,
            code.global_pose,
            code.jaw_pose,
            neck_pose=code.neck_pose,
            eye_pose=code.eye_pose,
        )

    def project(
        self, points: Tensor, code: FaceCode, perspective: PerspectiveCamera | None = None
    ) -> Tensor:
        """World points -> screen (DECA's orthographic camera unless ``perspective``)."""
        if perspective is not None:
            return perspective.project(points)
        return orthographic_project(points, code.camera.to(points))

    def forward(
        self,
        code: FaceCode,
        image_size: int | tuple[int, int] = 224,
        *,
        crop: CropTransform | None = None,
        perspective: PerspectiveCamera | None = None,
    ) -> FaceRender:
        """Render the condition buffers of ``code``.

        Args:
            code: the face parameters (batch B).
            image_size: output size (ignored with ``crop``, which renders onto the original
                image size).
            crop: render onto the original photo through this crop transform.
            perspective: use this pinhole camera instead of ``code.camera``.
        """
        flame = self.geometry(code)
        screen = self.project(flame.vertices, code, perspective)
        texture = self.albedo_texture(code)
        buffers = self.mesh(
            flame.vertices,
            screen,
            texture,
            code.light,
            None if crop is not None else image_size,
            crop=crop,
            perspective_correct=perspective is not None,
        )
        landmarks = None
        if flame.landmarks2d is not None:
            lm = self.project(flame.landmarks2d, code, perspective)
            if crop is not None:
                lm = crop.crop_ndc_to_image_ndc(lm)
            landmarks = lm[..., :2]
        return FaceRender(buffers, flame, screen, landmarks, texture)

    def render_shape(
        self,
        code: FaceCode,
        image_size: int | tuple[int, int] = 224,
        *,
        crop: CropTransform | None = None,
        perspective: PerspectiveCamera | None = None,
        background: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """DECA-style grey geometry images (B, 3, H, W) and their alpha (B, 1, H, W)."""
        flame = self.geometry(code)
        screen = self.project(flame.vertices, code, perspective)
        return self.mesh.render_shape(
            flame.vertices,
            screen,
            None if crop is not None else image_size,
            crop=crop,
            background=background,
            perspective_correct=perspective is not None,
        )

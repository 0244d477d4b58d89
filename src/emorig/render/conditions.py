"""The diffusion model's condition: a face code rendered onto the aligned image through the
DECA crop its camera belongs to, background zeroed (DiffusionRig's ``rendered``, ``normal``,
``albedo`` buffers)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from emorig.geometry.camera import DECA_CROP, CropTransform
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode, RenderBuffers

__all__ = ["CROP_SIZE", "render_conditions"]

#: DECA's crop side: the cameras of reconstructed codes are in its pixels.
CROP_SIZE = DECA_CROP


@torch.no_grad()
def render_conditions(
    renderer: FaceRenderer,
    code: FaceCode,
    crop_transforms: Tensor,
    size: int,
    crop_size: int = CROP_SIZE,
) -> RenderBuffers:
    """Render ``code`` (cameras of the 224 crop) onto the S x S image through the crops.

    Args:
        renderer: the head's renderer (its device is used).
        code: (B, ...) codes.
        crop_transforms: (B, 3, 3) image pixels -> crop pixels.
        size: S.
        crop_size: side of the crop the cameras belong to (DECA: 224).

    Returns:
        :class:`RenderBuffers` (B, C, S, S) with ``rendered``, ``normal`` and ``albedo``
        multiplied by the alpha mask (zero on the background).
    """
    device = renderer.flame.v_template.device
    crop = CropTransform(
        torch.as_tensor(crop_transforms, dtype=torch.float32, device=device),
        crop_size,
        (size, size),
    )
    out = renderer(code.to(device), crop=crop).buffers
    m = out.mask
    return replace(out, rendered=out.rendered * m, normal=out.normal * m, albedo=out.albedo * m)

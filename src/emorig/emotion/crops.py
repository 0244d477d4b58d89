"""What emotion networks read: DECA-style face crops of aligned images, and the FLAME
expression input (expression coefficients ++ jaw rotation) of DiffusionRig-EMO's expression
encoder."""

from __future__ import annotations

import torch
from torch import Tensor

from emorig.geometry.camera import DECA_CROP

__all__ = ["CROP", "code_expression_input", "face_crops"]

CROP = DECA_CROP


def code_expression_input(code: dict[str, Tensor]) -> Tensor:
    """(B, E + 3) FLAME expression coefficients followed by the jaw rotation (axis-angle)."""
    return torch.cat([code["expression"], code["jaw_pose"]], dim=1).float()


def face_crops(images: Tensor, crop_transform: Tensor, size: int = CROP) -> Tensor:
    """DECA-style face crops of aligned images.

    Args:
        images: (B, 3, S, S) in [0, 1].
        crop_transform: (B, 3, 3) image pixels -> 224-crop pixels (as stored by
            ``emorig prepare``), continuous pixel coordinates.
        size: output side; the transform is rescaled from 224.

    Returns:
        (B, 3, size, size) in [0, 1].
    """
    import kornia

    m = crop_transform.to(images.dtype)
    if size != CROP:
        scale = torch.diag(torch.tensor([size / CROP, size / CROP, 1.0], dtype=m.dtype))
        m = scale.to(m.device) @ m
    # kornia's warp uses pixel-centre coordinates (pixel i at i); ours are continuous
    # (pixel i spans [i, i + 1)): shift in, apply, shift out.
    shift = torch.eye(3, dtype=m.dtype, device=m.device)
    shift[0, 2] = shift[1, 2] = 0.5
    unshift = torch.eye(3, dtype=m.dtype, device=m.device)
    unshift[0, 2] = unshift[1, 2] = -0.5
    m = unshift @ m @ shift
    return kornia.geometry.transform.warp_affine(
        images, m[:, :2], (size, size), mode="bilinear", padding_mode="zeros"
    ).clamp(0, 1)

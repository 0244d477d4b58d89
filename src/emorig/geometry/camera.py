"""Cameras and the image-space conventions of emorig.

Screen space is DECA's: NDC ``x`` to the right and ``y`` downwards, both in ``[-1, 1]`` across
the image width and height; ``z`` grows away from the viewer. Continuous pixel coordinates put
pixel ``i`` on ``[i, i + 1)``, so its centre is ``i + 0.5`` and ``x_ndc = 2 x_px / W - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Side of DECA's face crop, pixels: the cameras of reconstructed codes live in it.
DECA_CROP = 224


def orthographic_project(points: Tensor, camera: Tensor) -> Tensor:
    """DECA's weak-perspective camera followed by its flip to screen space.

    ``x' = s (x + tx)``, ``y' = -s (y + ty)``, ``z' = -s z`` (DECA's ``batch_orth_proj`` and
    ``p[..., 1:] = -p[..., 1:]``).

    Args:
        points: (B, N, 3) world-space points (FLAME: y up, z towards the camera).
        camera: (B, 3) ``(s, tx, ty)``.

    Returns:
        (B, N, 3) screen points: NDC x, y of the crop and a depth where smaller is nearer.
    """
    s = camera[:, None, 0:1]
    t = camera[:, None, 1:3]
    xy = s * (points[..., :2] + t)
    z = s * points[..., 2:3]
    return torch.cat([xy[..., :1], -xy[..., 1:2], -z], dim=-1)


def perspective_project(
    points: Tensor,
    rotation: Tensor,
    translation: Tensor,
    focal: Tensor,
    principal: Tensor | None = None,
) -> Tensor:
    """Pinhole camera looking down its +z axis (x right, y down), in NDC.

    ``p_cam = R p + t``; ``x_ndc = f_x x_cam / z_cam + c_x`` (likewise y); depth = ``z_cam``.
    A camera at distance ``d`` in front of a FLAME face uses ``R = diag(1, -1, -1)`` and
    ``t = (0, 0, d)`` (see :func:`front_camera`).

    Args:
        points: (B, N, 3) world points.
        rotation: (B, 3, 3) world -> camera rotation.
        translation: (B, 3) world -> camera translation.
        focal: (B,) or (B, 2) focal length in NDC units (``2 f_px / W``).
        principal: (B, 2) principal point in NDC, default the image centre.

    Returns:
        (B, N, 3): NDC x, NDC y, camera depth (positive in front of the camera).
    """
    cam = points @ rotation.transpose(1, 2) + translation[:, None, :]
    z = cam[..., 2:3]
    f = focal.reshape(focal.shape[0], 1, -1)
    xy = f * cam[..., :2] / z
    if principal is not None:
        xy = xy + principal[:, None, :]
    return torch.cat([xy, z], dim=-1)


def front_camera(
    batch_size: int, distance: float, device=None, dtype=torch.float32
) -> tuple[Tensor, Tensor]:
    """Rotation and translation of a camera ``distance`` metres in front of the FLAME origin."""
    r = torch.diag(torch.tensor([1.0, -1.0, -1.0], device=device, dtype=dtype))
    t = torch.tensor([0.0, 0.0, distance], device=device, dtype=dtype)
    return r.expand(batch_size, 3, 3).clone(), t.expand(batch_size, 3).clone()


@dataclass(frozen=True)
class PerspectiveCamera:
    """A pinhole camera for :func:`perspective_project` (batched tensors).

    Attributes:
        rotation: (B, 3, 3) world -> camera.
        translation: (B, 3) world -> camera.
        focal: (B,) or (B, 2) focal length in NDC units.
        principal: (B, 2) principal point in NDC, or None for the image centre.
    """

    rotation: Tensor
    translation: Tensor
    focal: Tensor
    principal: Tensor | None = None

    def project(self, points: Tensor) -> Tensor:
        """(B, N, 3) world points -> (B, N, 3) NDC x, NDC y, camera depth."""
        return perspective_project(
            points,
            self.rotation.to(points),
            self.translation.to(points),
            self.focal.to(points),
            None if self.principal is None else self.principal.to(points),
        )

    @staticmethod
    def in_front(
        batch_size: int, distance: float, fov_degrees: float, device=None, dtype=torch.float32
    ) -> PerspectiveCamera:
        """A camera ``distance`` metres in front of the FLAME origin with the given vertical
        field of view."""
        import math

        r, t = front_camera(batch_size, distance, device, dtype)
        f = 1.0 / math.tan(math.radians(fov_degrees) / 2)
        return PerspectiveCamera(r, t, torch.full((batch_size,), f, device=device, dtype=dtype))


def pixels_to_ndc(points: Tensor, height: int, width: int) -> Tensor:
    """(..., 2) continuous pixel coordinates (x, y) -> NDC."""
    scale = points.new_tensor([2.0 / width, 2.0 / height])
    return points * scale - 1.0


def ndc_to_pixels(points: Tensor, height: int, width: int) -> Tensor:
    """(..., 2) NDC (x, y) -> continuous pixel coordinates."""
    scale = points.new_tensor([width / 2.0, height / 2.0])
    return (points[..., :2] + 1.0) * scale


@dataclass(frozen=True)
class CropTransform:
    """A similarity crop of an image: ``matrix`` maps original pixels to crop pixels.

    Attributes:
        matrix: (B, 3, 3) homogeneous map, original continuous pixel coordinates -> crop ones.
        crop_size: side of the square crop in pixels (DECA: 224).
        image_size: (height, width) of the original image.
    """

    matrix: Tensor
    crop_size: int
    image_size: tuple[int, int]

    def crop_ndc_to_image_ndc(self, points: Tensor) -> Tensor:
        """(B, N, 2+) points in crop NDC -> original-image NDC (extra channels kept).

        Depth is carried over unchanged, as DECA does: ordering is all the z-buffer needs.
        """
        h, w = self.image_size
        px = ndc_to_pixels(points[..., :2], self.crop_size, self.crop_size)
        homo = torch.cat([px, torch.ones_like(px[..., :1])], dim=-1)
        inv = torch.linalg.inv(self.matrix.to(points.dtype))
        orig = homo @ inv.transpose(1, 2)
        orig = orig[..., :2] / orig[..., 2:3]
        return torch.cat([pixels_to_ndc(orig, h, w), points[..., 2:]], dim=-1)

    def image_pixels_to_crop_pixels(self, points: Tensor) -> Tensor:
        """(B, N, 2) original pixel coordinates -> crop pixel coordinates."""
        homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
        out = homo @ self.matrix.to(points.dtype).transpose(1, 2)
        return out[..., :2] / out[..., 2:3]

    @staticmethod
    def from_skimage(matrix: Tensor, crop_size: int, image_size: tuple[int, int]) -> CropTransform:
        """Wrap a matrix estimated in skimage's convention (pixel centres on integers).

        DECA's ``tform`` is such a matrix; it is shifted by half a pixel on both sides.
        """
        shift = torch.eye(3, dtype=matrix.dtype, device=matrix.device)
        shift[:2, 2] = 0.5
        unshift = torch.eye(3, dtype=matrix.dtype, device=matrix.device)
        unshift[:2, 2] = -0.5
        return CropTransform(shift @ matrix @ unshift, crop_size, image_size)

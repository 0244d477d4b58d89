"""Lambertian shading of normal images: DECA's spherical harmonics and directional lights.

Both follow DECA's ``SRenderY`` (``add_SHlight``, ``add_directionlight``): normals are used as
given, not renormalised, so interpolated normals shade slightly darker inside faces exactly
as in DECA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SH_CONSTANTS", "directional_shading", "sh_basis", "sh_shading"]

_PI = math.pi

#: DECA's factors of the 9 second-order SH basis functions
#: ``[1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1]`` (Ramamoorthi & Hanrahan 2001, the
#: irradiance convolution folded in): c0 = 1/sqrt(4 pi), c1..3 = (2 pi / 3) sqrt(3 / (4 pi)),
#: c4..6 = (pi / 4) 3 sqrt(5 / (12 pi)), c7 = (pi / 4)(3 / 2) sqrt(5 / (12 pi)),
#: c8 = (pi / 4)(1 / 2) sqrt(5 / (4 pi)).
SH_CONSTANTS: tuple[float, ...] = (
    1 / math.sqrt(4 * _PI),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (2 * _PI / 3) * math.sqrt(3 / (4 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (3 / 2) * math.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (1 / 2) * math.sqrt(5 / (4 * _PI)),
)


# Basis values built at once by sh_shading (float32: 16 MB).
_BASIS_CHUNK = 1 << 22


def _check_normals(normals: Tensor) -> None:
    if normals.dim() != 4 or normals.shape[1] != 3:
        raise ValueError(f"normals must be (B, 3, H, W), got {tuple(normals.shape)}")
    if not normals.is_floating_point():
        raise ValueError(f"normals must be floating point, got {normals.dtype}")


def _unscaled_basis(normals: Tensor) -> Tensor:
    x, y, z = normals.unbind(1)
    return torch.stack(
        [torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], 1
    )


def sh_basis(normals: Tensor) -> Tensor:
    """DECA's scaled SH basis ``c_k Y_k(n)``.

    Args:
        normals: (B, 3, H, W) normals (FLAME world space for DECA lights), any float dtype.

    Returns:
        (B, 9, H, W): ``SH_CONSTANTS[k] * [1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1][k]``.
    """
    _check_normals(normals)
    scale = normals.new_tensor(SH_CONSTANTS).view(1, 9, 1, 1)
    return _unscaled_basis(normals) * scale


def sh_shading(normals: Tensor, sh: Tensor) -> Tensor:
    """Irradiance from second-order SH lighting, DECA's ``add_SHlight``.

    ``shading[b, c] = sum_k sh[b, k, c] * SH_CONSTANTS[k] * Y_k(n)``.

    Args:
        normals: (B, 3, H, W) normals (not renormalised; zero normals give the DC and
            ``-c8 sh[8]`` terms).
        sh: (B, 9, 3) coefficients, coefficient-major, RGB minor (DECA's light code); a batch
            of 1 is broadcast.

    Returns:
        (B, 3, H, W) RGB shading (nominal [0, 1] for DECA lights, unclamped).
    """
    _check_normals(normals)
    if sh.dim() != 3 or sh.shape[1:] != (9, 3) or sh.shape[0] not in (1, normals.shape[0]):
        raise ValueError(f"sh must be (B, 9, 3) with B = {normals.shape[0]}, got {tuple(sh.shape)}")
    b, _, h, w = normals.shape
    scale = sh.new_tensor(SH_CONSTANTS).view(1, 9, 1)
    coeff = (sh * scale).transpose(1, 2).to(normals.dtype).expand(b, 3, 9)  # (B, 3, 9)
    flat = normals.reshape(b, 3, h * w)
    # the (b, 9, H W) basis is built for a few images at a time: large temporaries are slow to
    # allocate (fresh pages) and leave the cache
    step = max(1, _BASIS_CHUNK // (9 * h * w))
    parts = [
        torch.bmm(coeff[i : i + step], _unscaled_basis(flat[i : i + step]))
        for i in range(0, b, step)
    ]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).view(b, 3, h, w)


def directional_shading(normals: Tensor, directions: Tensor, intensities: Tensor) -> Tensor:
    """Mean over lights of ``clamp(n . l, 0, 1) * intensity``, DECA's ``add_directionlight``.

    Args:
        normals: (B, 3, H, W) normals (not renormalised).
        directions: (B, L, 3) directions towards the lights (normalised here).
        intensities: (B, L, 3) RGB intensity of every light.

    Returns:
        (B, 3, H, W) shading.
    """
    _check_normals(normals)
    b = normals.shape[0]
    for name, t in (("directions", directions), ("intensities", intensities)):
        if t.dim() != 3 or t.shape[-1] != 3 or t.shape[0] not in (1, b):
            raise ValueError(f"{name} must be (B, L, 3) with B = {b}, got {tuple(t.shape)}")
    if directions.shape[1] != intensities.shape[1]:
        raise ValueError(
            f"{directions.shape[1]} light directions but {intensities.shape[1]} intensities"
        )
    unit = torch.nn.functional.normalize(directions.to(normals.dtype), dim=-1)
    cosine = torch.einsum("bchw,blc->blhw", normals, unit.expand(b, -1, -1)).clamp(0.0, 1.0)
    lit = torch.einsum("blhw,blc->bchw", cosine, intensities.to(normals.dtype).expand(b, -1, -1))
    return lit / directions.shape[1]

"""Membrane (harmonic) interpolation of sparse image-space fields, for the warp edit's flow.

A field known on some pixels (the face's mesh flow) and pinned to zero far away is filled in
between by the solution of Laplace's equation: smooth, no overshoot, exactly the known values
where known. It is solved by a coarse-to-fine multigrid: every level starts from the upsampled
solution of the level below and relaxes with a few Jacobi sweeps, so a 128 x 128 grid costs a
few milliseconds. Pure functions of tensors; any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["chessboard_distance", "downsample_known", "membrane_fill", "relax"]

#: Jacobi sweeps per multigrid level; the coarsest level gets ``_COARSEST_SWEEPS``.
_SWEEPS = 24
_COARSEST_SWEEPS = 200
_COARSEST_SIDE = 8


def relax(x: Tensor, values: Tensor, known: Tensor, sweeps: int) -> Tensor:
    """Jacobi sweeps of the 4-neighbour Laplacian, free (Neumann) image borders."""
    for _ in range(sweeps):
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        avg = 0.25 * (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:])
        x = torch.where(known, values, avg)
    return x


def downsample_known(values: Tensor, known: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Average the known values over ``factor`` x ``factor`` blocks (ceil mode).

    Args:
        values: (B, C, H, W); known: (B, 1, H, W) bool.

    Returns:
        ``(values, known)`` of the coarse grid: a cell is known when any of its pixels is,
        with the mean of its known pixels.
    """
    if factor == 1:
        return values, known
    w = known.to(values.dtype)
    pad_h, pad_w = (-values.shape[-2]) % factor, (-values.shape[-1]) % factor
    if pad_h or pad_w:
        values = F.pad(values, (0, pad_w, 0, pad_h))
        w = F.pad(w, (0, pad_w, 0, pad_h))
    weight = F.avg_pool2d(w, factor)
    mean = F.avg_pool2d(values * w, factor) / weight.clamp_min(1e-12)
    return mean, weight > 0


def membrane_fill(values: Tensor, known: Tensor) -> Tensor:
    """Harmonic interpolation of ``values`` from the ``known`` pixels to all others.

    Args:
        values: (B, C, H, W) float; only read where ``known``.
        known: (B, 1, H, W) bool; an image without any known pixel gives zeros.

    Returns:
        (B, C, H, W), equal to ``values`` where known.
    """
    values = torch.where(known, values, torch.zeros((), dtype=values.dtype, device=values.device))
    h, w = values.shape[-2:]
    if min(h, w) <= _COARSEST_SIDE:
        n = known.sum((-2, -1), keepdim=True).clamp_min(1)
        start = (values * known).sum((-2, -1), keepdim=True) / n
        return relax(start.expand_as(values), values, known, _COARSEST_SWEEPS)
    coarse_values, coarse_known = downsample_known(values, known, 2)
    coarse = membrane_fill(coarse_values, coarse_known)
    start = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    return relax(start[..., :h, :w], values, known, _SWEEPS)


def chessboard_distance(mask: Tensor, limit: int) -> Tensor:
    """Chessboard distance in pixels to the nearest ``mask`` pixel, capped at ``limit``.

    Args:
        mask: (B, 1, H, W) bool.
        limit: the largest distance measured (a few tens: one max-pool per step).

    Returns:
        (B, 1, H, W) float: 0 on the mask, ``k`` at ``k`` pixels, ``limit`` beyond.
    """
    dist = torch.full(mask.shape, float(limit), device=mask.device)
    grown = mask.float()
    for k in range(limit):
        dist = torch.where((grown > 0) & (dist > k), torch.full_like(dist, float(k)), dist)
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
    return dist

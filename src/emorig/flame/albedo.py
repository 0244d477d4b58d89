"""Linear albedo spaces in UV: code -> albedo texture (DECA's FLAMETex, RGB)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.flame.data import AlbedoSpaceData


class AlbedoModel(nn.Module):
    """``albedo = mean + basis @ code`` in UV space, resized to ``output_size``.

    Args:
        space: the albedo space (RGB, [0, 1]).
        n_components: leading components kept (default all).
        output_size: side of the returned texture; DECA resizes 512 -> 256 with nearest
            sampling, which is kept for compatibility with its checkpoints.
        dtype: buffer dtype.

    A code with fewer entries than kept components uses the leading ones; a longer code is
    an error (its extra coefficients would otherwise be dropped without a word).
    """

    def __init__(
        self,
        space: AlbedoSpaceData,
        n_components: int | None = None,
        output_size: int = 256,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        k = space.n_components if n_components is None else n_components
        if not 0 <= k <= space.n_components:
            raise ValueError(
                f"n_components={k}: the {space.kind} albedo space has {space.n_components}"
            )
        self.kind = space.kind
        self.n_components = k
        self.output_size = output_size
        mean = torch.as_tensor(np.ascontiguousarray(space.mean), dtype=dtype).permute(2, 0, 1)
        basis = torch.as_tensor(np.ascontiguousarray(space.basis[..., :k]), dtype=dtype)
        self.register_buffer("mean", mean[None])  # (1, 3, H, W)
        self.register_buffer("basis", basis.permute(3, 2, 0, 1).contiguous())  # (K, 3, H, W)

    def forward(self, code: Tensor) -> Tensor:
        """(B, T) code, T <= n_components -> (B, 3, S, S) albedo texture (not clamped)."""
        if code.dim() != 2 or code.shape[1] > self.n_components:
            raise ValueError(
                f"albedo code has shape {tuple(code.shape)}, expected (B, T) with "
                f"T <= {self.n_components}"
            )
        t = code.shape[1]
        tex = self.mean + torch.einsum("bk,kchw->bchw", code.to(self.mean.dtype), self.basis[:t])
        if tex.shape[-1] != self.output_size or tex.shape[-2] != self.output_size:
            tex = F.interpolate(tex, size=(self.output_size, self.output_size), mode="nearest")
        return tex

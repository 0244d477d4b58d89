"""Networks users bring as files: a face-recognition net for the identity loss, an emotion net,
an Inception for FID... Their code never has to be importable: a ``torch.export`` program
(``.pt2``, preferred) or a TorchScript archive (``.pt``, deprecated by PyTorch but accepted)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from emorig.errors import EmorigError, short_reason


def load_feature_network(path: str | os.PathLike[str], what: str) -> nn.Module:
    """Load a frozen network mapping (B, 3, H, W) images to (B, D) features.

    Args:
        path: a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``; export it
            with a dynamic batch dimension) or a TorchScript archive.
        what: what it is for, used in error messages ("face-recognition", "emotion", ...).

    Returns:
        An eval-mode module whose parameters need no gradient (inputs still get gradients).
    """
    path = Path(path)
    if not path.is_file():
        raise EmorigError(f"{path}: {what} network not found")
    try:
        if path.suffix == ".pt2":
            net = torch.export.load(str(path)).module()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                net = torch.jit.load(str(path), map_location="cpu")
            net.eval()
    except Exception as err:
        raise EmorigError(
            f"{path}: not a torch.export (.pt2) or TorchScript {what} network ({short_reason(err)})"
        ) from None
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def export_feature_network(
    module: nn.Module, path: str | os.PathLike[str], image_size: int = 224
) -> Path:
    """Save ``module`` (images -> features) as a ``.pt2`` program with a dynamic batch."""
    module = module.eval()
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    path = Path(path)
    torch.export.save(program, str(path))
    return path

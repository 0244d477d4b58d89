"""Any diffusion model a user names: an emorig model folder or DiffusionRig's ``model*.pt``."""

from __future__ import annotations

from pathlib import Path

import torch

from emorig.diffusion.model import RigModel
from emorig.diffusion.official import load_official
from emorig.diffusion.pretrained import load_pretrained

__all__ = ["load_rig"]


def load_rig(path: str, device: torch.device | str = "cpu") -> RigModel:
    """An emorig model folder or DiffusionRig's official ``model*.pt``."""
    p = Path(path)
    if p.is_dir():
        return load_pretrained(p, device=device)
    return load_official(p, device=device)

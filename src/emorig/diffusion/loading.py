"""Any diffusion model a user names: an emorig model folder or DiffusionRig's ``model*.pt``."""

from __future__ import annotations

from pathlib import Path

import torch

from emorig.diffusion.model import RigModel
from emorig.diffusion.official import OFFICIAL_OBTAIN, load_official
from emorig.diffusion.pretrained import load_pretrained
from emorig.errors import AssetError

__all__ = ["VALID_MODELS", "load_rig"]

#: What ``--model`` accepts, for error messages.
VALID_MODELS = (
    "give an emorig model folder (config.json + model.safetensors, written by "
    "'emorig train diffusion') or DiffusionRig's stage-1 checkpoint model*.pt"
)


def load_rig(path: str, device: torch.device | str = "cpu") -> RigModel:
    """An emorig model folder or DiffusionRig's official ``model*.pt``.

    Raises:
        AssetError: the path does not exist (the message says what a model is), or the
            folder / file is not a model.
    """
    p = Path(path).expanduser()
    if not p.exists():
        # DiffusionRig's download hint only for what looks like its checkpoint
        obtain = OFFICIAL_OBTAIN if p.suffix == ".pt" else None
        raise AssetError(str(path), f"the path does not exist; {VALID_MODELS}", obtain)
    if p.is_dir():
        return load_pretrained(p, device=device)
    return load_official(p, device=device)

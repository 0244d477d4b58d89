"""Any diffusion model a user names: an emorig model folder or DiffusionRig's ``model*.pt``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emorig.diffusion.model import RigModel
from emorig.diffusion.official import OFFICIAL_OBTAIN, load_official
from emorig.diffusion.pretrained import load_pretrained
from emorig.errors import AssetError

__all__ = ["VALID_MODELS", "load_rig", "training_data"]

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


def training_data(path: str | Path) -> dict | None:
    """What the model at ``path`` was trained on, from its folder's ``training.json``
    (``trained_on``: ``head``, ``synthetic_head`` and ``reconstructor``, which is
    ``"synthetic"`` for renders of the built-in head made by ``emorig synth``); None when the
    model does not say (DiffusionRig's checkpoints, folders written before the record)."""
    info = Path(path).expanduser() / "training.json"
    if not info.is_file():
        return None
    try:
        record = json.loads(info.read_text()).get("trained_on")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None

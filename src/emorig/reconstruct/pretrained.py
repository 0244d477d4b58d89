"""Our face-encoder folder: ``config.json`` + ``model.safetensors`` (format
``emorig-face-encoder``), written and read by :mod:`emorig.io.model_folder`.

``config.json`` holds the format name and version, the architecture (``"DecaModel"`` or
``"EmocaModel"``) and the config (sizes, variant); ``model.safetensors`` holds the state dict
under our key names. Both files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch

from emorig.io.model_folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    FolderFormat,
    load_model_folder,
    save_model_folder,
)
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.emoca import EmocaConfig, EmocaModel

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "from_pretrained",
    "save_pretrained",
]

FORMAT_NAME = "emorig-face-encoder"
FORMAT_VERSION = 1
_FORMAT = FolderFormat(FORMAT_NAME, FORMAT_VERSION)
_ARCHITECTURES = {"DecaModel": (DecaModel, DecaConfig), "EmocaModel": (EmocaModel, EmocaConfig)}


def save_pretrained(model: DecaModel, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors``.

    Both files are written atomically (temp file + rename); the folder is created if needed.
    ``config.json`` holds ``format`` (``"emorig-face-encoder"``), ``format_version``,
    ``architecture`` (``"DecaModel"`` or ``"EmocaModel"``) and ``config`` (sizes, variant).

    Returns:
        The folder.
    """
    if not isinstance(model, DecaModel):
        raise TypeError(f"expected a DecaModel or EmocaModel, got {type(model).__name__}")
    architecture = "EmocaModel" if isinstance(model, EmocaModel) else "DecaModel"
    return save_model_folder(model, folder, _FORMAT, architecture)


def from_pretrained(
    folder: str | os.PathLike[str], device: torch.device | str | None = None
) -> DecaModel:
    """Load a folder written by :func:`save_pretrained` (eval mode).

    Args:
        folder: the model folder.
        device: where to put the model (default: CPU).

    Raises:
        AssetError: missing files, another format, a newer format version, unknown settings,
            or weights that do not match the configuration.
    """
    return cast(DecaModel, load_model_folder(folder, _FORMAT, _ARCHITECTURES, device=device))

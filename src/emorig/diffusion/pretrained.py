"""Our model folder format: ``config.json`` + ``model.safetensors``, and strict loading.

A folder written by :func:`save_pretrained` loads with :func:`load_pretrained` and no other
information: ``config.json`` holds the format name and version and the :class:`RigConfig`;
``model.safetensors`` holds the state dict under DiffusionRig's own key names
(``denoisingUNet.*``, ``encoder.*``). Both files are written atomically. The format itself is
:mod:`emorig.io.model_folder`'s, shared by every model family; :func:`load_state_strict` is
re-exported from there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch

from emorig.diffusion.config import RigConfig
from emorig.diffusion.model import RigModel
from emorig.io.model_folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    FolderFormat,
    config_from_dict,
    load_model_folder,
    load_state_strict,
    read_folder_config,
    save_model_folder,
)

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "load_pretrained",
    "load_state_strict",
    "read_config",
    "save_pretrained",
]

FORMAT_NAME = "emorig-diffusionrig"
FORMAT_VERSION = 1
_FORMAT = FolderFormat(FORMAT_NAME, FORMAT_VERSION)
_ARCHITECTURES = {"RigModel": (RigModel, RigConfig)}


def save_pretrained(model: RigModel, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors``.

    The folder is created if needed; each file is replaced atomically.

    Args:
        model: the model (any device or dtype; weights are stored as they are, on the CPU).
        folder: destination folder.

    Returns:
        The folder.
    """
    if not isinstance(model, RigModel):
        raise TypeError(f"expected a RigModel, got {type(model).__name__}")
    return save_model_folder(model, folder, _FORMAT, "RigModel")


def read_config(folder: str | os.PathLike[str]) -> RigConfig:
    """The :class:`RigConfig` stored in ``folder/config.json``.

    Raises:
        AssetError: missing or invalid file, another format, or a newer format version.
    """
    info = read_folder_config(folder, _FORMAT)
    return config_from_dict(RigConfig, info.config, info.source)


def load_pretrained(
    folder: str | os.PathLike[str], *, device: torch.device | str | None = None
) -> RigModel:
    """Load a folder written by :func:`save_pretrained` (eval mode).

    Args:
        folder: the model folder.
        device: where to put the model (default: CPU).

    Returns:
        The model, in eval mode.

    Raises:
        AssetError: missing files, another format, a newer format version, invalid settings,
            or weights that do not match the configuration.
    """
    return cast(RigModel, load_model_folder(folder, _FORMAT, _ARCHITECTURES, device=device))

"""Our model folder format: ``config.json`` + ``model.safetensors``, and strict loading.

A folder written by :func:`save_pretrained` loads with :func:`load_pretrained` and no other
information: ``config.json`` holds the format name and version and the :class:`RigConfig`;
``model.safetensors`` holds the state dict under DiffusionRig's own key names
(``denoisingUNet.*``, ``encoder.*``). Both files are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from emorig.diffusion.config import RigConfig
from emorig.diffusion.model import RigModel
from emorig.errors import AssetError, reading, short_reason
from emorig.io.atomic import atomic_write

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
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_LIST_LIMIT = 5


def _summarise(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
    return f"{len(items)} {label} key{'s' if len(items) != 1 else ''}: {shown}{more}"


def load_state_strict(
    model: nn.Module, state: Mapping[str, Any], source: str, obtain: str | None = None
) -> None:
    """Load ``state`` into ``model`` or raise one :class:`AssetError` naming every mismatch.

    Every parameter and buffer of ``model`` must be in ``state`` with the same shape, and
    ``state`` must hold nothing else. The one tolerance: a missing BatchNorm
    ``num_batches_tracked`` counter (older PyTorch did not save it; eval outputs do not
    depend on it) is set to 0.

    Args:
        model: the target.
        state: key -> tensor, under the model's key names.
        source: the file, for messages.
        obtain: where users get the file, for messages.

    Raises:
        AssetError: listing the first missing, unexpected and mis-shaped keys with counts.
    """
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    wrong = []
    clean: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            continue
        if not isinstance(value, Tensor):
            wrong.append(f"{key} ({type(value).__name__}, expected a tensor)")
        elif value.shape != expected[key].shape:
            wrong.append(f"{key} {tuple(value.shape)} (expected {tuple(expected[key].shape)})")
        else:
            clean[key] = value
    missing = []
    for key, ref in expected.items():
        if key in state:
            continue
        if key.endswith(".num_batches_tracked"):
            clean[key] = torch.zeros_like(ref)
        else:
            missing.append(key)
    problems = []
    if missing:
        problems.append(_summarise("missing", missing))
    if unexpected:
        problems.append(_summarise("unexpected", unexpected))
    if wrong:
        problems.append(_summarise("mis-shaped", wrong))
    if problems:
        raise AssetError(
            source, "does not match the expected network (" + "; ".join(problems) + ")", obtain
        )
    model.load_state_dict(clean, strict=True)


def save_pretrained(model: RigModel, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors``.

    The folder is created if needed; each file is replaced atomically.

    Args:
        model: the model (any device or dtype; weights are stored as they are, on the CPU).
        folder: destination folder.

    Returns:
        The folder.
    """
    import safetensors.torch

    if not isinstance(model, RigModel):
        raise TypeError(f"expected a RigModel, got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(
        state, metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    )
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": "RigModel",
        "config": model.config.to_dict(),
    }
    with atomic_write(folder / WEIGHTS_NAME, "wb") as f:
        f.write(data)
    with atomic_write(folder / CONFIG_NAME, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return folder


def read_config(folder: str | os.PathLike[str]) -> RigConfig:
    """The :class:`RigConfig` stored in ``folder/config.json``.

    Raises:
        AssetError: missing or invalid file, another format, or a newer format version.
    """
    path = Path(folder) / CONFIG_NAME
    source = str(path)
    with reading(source), open(path, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise AssetError(source, f"not valid JSON ({short_reason(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise AssetError(source, f"is not an {FORMAT_NAME} model configuration")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise AssetError(source, f"has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise AssetError(
            source,
            f"has format version {version}; this emorig reads up to {FORMAT_VERSION} "
            "(upgrade emorig)",
        )
    values = meta.get("config")
    if not isinstance(values, dict):
        raise AssetError(source, "has no 'config' section")
    try:
        return RigConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise AssetError(source, f"invalid configuration ({short_reason(err)})") from None


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
    import safetensors.torch

    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    source = str(weights)
    try:
        with reading(source):
            state = safetensors.torch.load_file(weights)
    except AssetError:
        raise
    except Exception as err:  # any other failure on the bytes means a damaged file
        raise AssetError(source, f"not a readable safetensors file ({short_reason(err)})") from None
    model = RigModel(config)
    load_state_strict(model, state, source)
    if device is not None:
        model.to(device)
    return model.eval()

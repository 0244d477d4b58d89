"""One model-folder format for every model family: ``config.json`` + ``model.safetensors``.

In the spirit of diffusers' ``ConfigMixin`` + ``save_pretrained`` / ``from_pretrained``: a
model's settings are a dataclass (its ``config`` attribute), and a folder written by
:func:`save_model_folder` loads with :func:`load_model_folder` and no other information.

``config.json``
    ``format`` (the family's format name, e.g. ``"emorig-diffusionrig"``), ``format_version``
    (an integer; readers refuse newer versions), ``architecture`` (the model class),
    ``config`` (the dataclass as a dict: ``to_dict()`` if the class has one, else
    :func:`dataclasses.asdict`) and any extra keys a family adds (EmoDECA's ``classes``).
    Written with sorted keys, two-space indents and a final newline.
``model.safetensors``
    The model's ``state_dict`` (CPU, contiguous) under its own key names, with the metadata
    ``{"format": NAME, "format_version": "N"}``.

Both files are written atomically (:func:`emorig.io.atomic.atomic_write`), weights first.
Every problem with a folder is an :class:`~emorig.errors.AssetError` naming the file.
Loading is strict (:func:`load_state_strict`): every key must be present with its shape.

This module is a low layer: it knows no model family; families pass their classes in.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from emorig.errors import AssetError, EmorigError, reading, short_reason
from emorig.io.atomic import atomic_write

__all__ = [
    "CONFIG_NAME",
    "LIST_LIMIT",
    "WEIGHTS_NAME",
    "Architectures",
    "FolderConfig",
    "FolderFormat",
    "config_from_dict",
    "config_to_dict",
    "load_model_folder",
    "load_state_strict",
    "read_folder_config",
    "read_safetensors",
    "read_weights",
    "save_model_folder",
    "summarise_keys",
    "write_model_folder",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: How many keys of each kind a mismatch message names before "... (N more)".
LIST_LIMIT = 10

#: Architecture name -> (model class taking its config, config dataclass).
Architectures = Mapping[str, tuple[Callable[[Any], nn.Module], type]]


@dataclass(frozen=True)
class FolderFormat:
    """A family's format: its name in ``config.json`` and the newest version it writes.

    Attributes:
        name: e.g. ``"emorig-face-encoder"``.
        version: the version written; folders with versions 1..``version`` are read.
    """

    name: str
    version: int

    def weights_metadata(self) -> dict[str, str]:
        """The ``model.safetensors`` metadata (safetensors metadata values are strings)."""
        return {"format": self.name, "format_version": str(self.version)}


@dataclass(frozen=True)
class FolderConfig:
    """What a folder's ``config.json`` says.

    Attributes:
        source: the file, for messages.
        format: the format name.
        version: the format version.
        architecture: the model class name (None if absent).
        config: the ``config`` section (settings of the config dataclass).
        meta: the whole file, extra family keys included.
    """

    source: str
    format: str
    version: int
    architecture: str | None
    config: dict[str, Any]
    meta: dict[str, Any]


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - a core dependency
        raise EmorigError(
            "emorig model folders need the 'safetensors' package (pip install safetensors)"
        ) from None
    return safetensors.torch


# ---------------------------------------------------------------------------------------------
# Configs.


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready values: its ``to_dict()`` if any, else ``asdict``."""
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return dataclasses.asdict(config)


def config_from_dict(config_cls: type, values: Mapping[str, Any], source: str) -> Any:
    """Build ``config_cls`` from a ``config`` section.

    ``config_cls.from_dict(values)`` is used if the class has one (its own messages about
    unknown fields are kept); otherwise unknown settings are refused by name and the rest are
    passed to the constructor.

    Raises:
        AssetError: unknown settings, or values the class refuses (``invalid config (...)``).
    """
    from_dict = getattr(config_cls, "from_dict", None)
    if not callable(from_dict):
        fields = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise AssetError(source, f"has unknown config settings {unknown!r}")
    try:
        return from_dict(values) if callable(from_dict) else config_cls(**values)
    except (TypeError, ValueError) as err:
        raise AssetError(source, f"invalid config ({short_reason(err)})") from None


# ---------------------------------------------------------------------------------------------
# Writing.


def write_model_folder(
    folder: str | os.PathLike[str],
    meta: Mapping[str, Any],
    state: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``folder/model.safetensors`` (``state``, ``metadata``) and then
    ``folder/config.json`` (``meta``), each atomically; the folder is created if needed.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    data = _safetensors().save(tensors, metadata=dict(metadata) if metadata else None)
    with atomic_write(folder / WEIGHTS_NAME, "wb") as f:
        f.write(data)
    with atomic_write(folder / CONFIG_NAME, "w") as f:
        json.dump(dict(meta), f, indent=2, sort_keys=True)
        f.write("\n")
    return folder


def save_model_folder(
    model: nn.Module,
    folder: str | os.PathLike[str],
    fmt: FolderFormat,
    architecture: str,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (with a ``config`` dataclass attribute) as a model folder.

    Args:
        model: the model (any device or dtype; weights are stored as they are, on the CPU).
        folder: destination (created if needed).
        fmt: the family's format.
        architecture: the name :func:`load_model_folder` finds the model class by.
        extra: family keys added to ``config.json`` (e.g. ``{"classes": [...]}``).

    Returns:
        The folder.
    """
    meta: dict[str, Any] = dict(extra or {})
    meta.update(
        format=fmt.name,
        format_version=fmt.version,
        architecture=architecture,
        config=config_to_dict(model.config),
    )
    return write_model_folder(folder, meta, model.state_dict(), fmt.weights_metadata())


# ---------------------------------------------------------------------------------------------
# Reading.


def _read_json(path: Path) -> Any:
    source = str(path)
    with reading(source), open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AssetError(source, f"not valid JSON ({short_reason(err)})") from None


def _check_version(source: str, version: Any, newest: int | None) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise AssetError(source, f"has an invalid format version {version!r}")
    if newest is not None and version > newest:
        raise AssetError(
            source,
            f"has format version {version}; this emorig reads up to {newest} (upgrade emorig)",
        )
    return version


def read_folder_config(
    folder: str | os.PathLike[str], fmt: FolderFormat | None = None
) -> FolderConfig:
    """Read and check ``folder/config.json``.

    Args:
        folder: the model folder.
        fmt: the expected format; None accepts any emorig model folder (any name, version).

    Raises:
        AssetError: missing file, not JSON, another format, an invalid or newer format
            version, or no ``config`` section.
    """
    path = Path(folder) / CONFIG_NAME
    source = str(path)
    meta = _read_json(path)
    name = meta.get("format") if isinstance(meta, dict) else None
    if fmt is not None and name != fmt.name:
        raise AssetError(source, f"is not an {fmt.name} model configuration")
    if not isinstance(name, str):
        raise AssetError(source, "is not an emorig model configuration (no 'format')")
    version = _check_version(source, meta.get("format_version"), fmt.version if fmt else None)
    values = meta.get("config")
    if not isinstance(values, dict):
        raise AssetError(source, "has no 'config' section")
    architecture = meta.get("architecture")
    return FolderConfig(
        source=source,
        format=name,
        version=version,
        architecture=architecture if isinstance(architecture, str) else None,
        config=values,
        meta=meta,
    )


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (CPU) and the metadata of a ``.safetensors`` file.

    Raises:
        AssetError: missing file, or ``not a readable safetensors file (...)``.
    """
    source = str(path)
    with reading(source):
        data = Path(path).read_bytes()
    try:
        tensors = _safetensors().load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except Exception as err:  # any failure on these bytes means a damaged file
        raise AssetError(source, f"not a readable safetensors file ({short_reason(err)})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, dict(metadata) if isinstance(metadata, dict) else {}


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (see :func:`read_safetensors`)."""
    return read_safetensors(path)[0]


# ---------------------------------------------------------------------------------------------
# Strict loading.


def summarise_keys(label: str, items: list[str]) -> str:
    """``"2 missing keys: a, b"``; after :data:`LIST_LIMIT` names, ``", ... (N more)"``."""
    shown = ", ".join(items[:LIST_LIMIT])
    more = f", ... ({len(items) - LIST_LIMIT} more)" if len(items) > LIST_LIMIT else ""
    return f"{len(items)} {label} key{'s' if len(items) != 1 else ''}: {shown}{more}"


def load_state_strict(
    model: nn.Module,
    state: Mapping[str, Any],
    source: str,
    obtain: str | None = None,
    *,
    names: Callable[[str], str] | None = None,
    unmapped: Iterable[str] = (),
    against: str = "the expected network",
) -> None:
    """Load ``state`` into ``model`` or raise one :class:`AssetError` naming every mismatch.

    Every parameter and buffer of ``model`` must be in ``state`` with the same shape, and
    ``state`` must hold nothing else. The one tolerance: a missing BatchNorm
    ``num_batches_tracked`` counter (older PyTorch did not save it; eval outputs do not
    depend on it) is set to 0. Values are copied into the model's tensors (so float16 weights
    load into float32 parameters).

    Args:
        model: the target.
        state: key -> tensor, under the model's key names (rename a file's keys first).
        source: the file, for messages.
        obtain: where users get the file, for messages.
        names: how a key of ours is named in messages (default: as it is), e.g. the key the
            file used before renaming.
        unmapped: file keys that had no counterpart when renamed; reported as unexpected.
        against: what the weights were expected to match, for the message.

    Raises:
        AssetError: ``{source}: does not match {against} (...)`` listing the first missing,
            unexpected and mis-shaped keys with counts.
    """
    shown = names or (lambda key: key)
    expected = model.state_dict()
    unexpected = [shown(k) for k in state if k not in expected] + list(unmapped)
    wrong = []
    clean: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in expected:
            continue
        if not isinstance(value, Tensor):
            wrong.append(f"{shown(key)} ({type(value).__name__}, expected a tensor)")
        elif tuple(value.shape) != tuple(expected[key].shape):
            wrong.append(
                f"{shown(key)} {tuple(value.shape)} (expected {tuple(expected[key].shape)})"
            )
        else:
            clean[key] = value
    missing = []
    for key, ref in expected.items():
        if key in state:
            continue
        if key.endswith(".num_batches_tracked"):
            clean[key] = torch.zeros_like(ref)
        else:
            missing.append(shown(key))
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)):
        if items:
            problems.append(summarise_keys(label, items))
    if problems:
        raise AssetError(source, f"does not match {against} ({'; '.join(problems)})", obtain)
    model.load_state_dict(clean, strict=True)


def load_model_folder(
    folder: str | os.PathLike[str],
    fmt: FolderFormat,
    architectures: Architectures,
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Load a folder written by :func:`save_model_folder` (eval mode).

    Args:
        folder: the model folder.
        fmt: the family's format (name and newest version read).
        architectures: architecture name -> (model class, config class).
        device: where to put the model (default: CPU).

    Raises:
        AssetError: missing files, another format, an invalid or newer format version, an
            unknown architecture, invalid or unknown settings, a damaged weights file, or
            weights that do not match the configuration.
    """
    folder = Path(folder)
    info = read_folder_config(folder, fmt)
    if info.architecture not in architectures:
        raise AssetError(info.source, f"unknown architecture {info.meta.get('architecture')!r}")
    model_cls, config_cls = architectures[info.architecture]
    config = config_from_dict(config_cls, info.config, info.source)
    try:
        model = model_cls(config)
    except (TypeError, ValueError) as err:
        raise AssetError(info.source, f"invalid config ({short_reason(err)})") from None
    weights = folder / WEIGHTS_NAME
    load_state_strict(model, read_weights(weights), str(weights), against="its config")
    if device is not None:
        model = model.to(device)
    return model.eval()

"""A disk cache of trained EmoDECA MLPs (the code-space emotion predictor), so emotion edits
train it once per machine instead of on every call.

An entry is an emorig model folder (:func:`~emorig.emotion.emodeca.save_emodeca`:
``config.json`` + ``model.safetensors``) plus ``key.json`` (what the entry was trained from),
under ``<cache root>/<kind>/<digest>`` where the digest is the SHA-256 of the key: the head
(its name and a hash of its tensors), the training settings and seed, a hash of the code that
trains it and the torch version. An entry is written into a temporary sibling folder and
renamed into place, so a reader never sees half an entry; an entry that does not load (or
whose ``key.json`` does not match) is trained again and replaced.

The cache root is ``$EMORIG_CACHE`` if set, else ``$XDG_CACHE_HOME/emorig``, else
``~/.cache/emorig``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emorig.emotion.emodeca import EmoDecaMLP, load_emodeca, save_emodeca
from emorig.errors import short_reason
from emorig.io.cache import CACHE_ENV, cache_root

__all__ = [
    "CACHE_ENV",
    "KEY_NAME",
    "cache_root",
    "cached_emodeca",
    "entry_folder",
    "source_fingerprint",
    "tensor_fingerprint",
]

#: The environment variable naming the cache root.
#: The file in an entry that records its key.
KEY_NAME = "key.json"


def source_fingerprint(objects: Iterable[Any]) -> str:
    """SHA-256 of the source code of modules, classes or functions (for one that has no
    source file: its qualified name and byte code)."""
    h = hashlib.sha256()
    for obj in objects:
        try:
            text = inspect.getsource(obj)
        except (OSError, TypeError):
            code = getattr(obj, "__code__", None)
            text = f"{getattr(obj, '__qualname__', repr(obj))}:{code.co_code.hex() if code else ''}"
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()


def tensor_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def entry_folder(kind: str, key: Mapping[str, Any]) -> Path:
    """Where the entry for ``key`` lives."""
    return cache_root() / kind / _digest(key)[:24]


def cached_emodeca(
    kind: str,
    key: Mapping[str, Any],
    train: Callable[[], EmoDecaMLP],
    say: Callable[[str], None] | None = None,
    device: torch.device | str | None = None,
) -> EmoDecaMLP:
    """The MLP cached for ``key``, or ``train()``'s, which is then stored.

    Args:
        kind: the entry family (a folder name under the cache root).
        key: JSON-serialisable description of everything the result depends on.
        train: trains the MLP (called only on a miss or a damaged entry).
        say: told about training, damaged entries and a cache that cannot be written.
        device: where the returned MLP lives.

    Returns:
        The MLP, in eval mode.
    """
    key = json.loads(json.dumps(key, sort_keys=True))  # what key.json will read back
    folder = entry_folder(kind, key)
    if folder.exists():
        try:
            return _load(folder, key, device)
        except Exception as err:  # a damaged or foreign entry: train again
            if say is not None:
                say(f"the cached emotion predictor {folder} is unusable ({short_reason(err)}); "
                    "training it again")  # fmt: skip
    mlp = train().eval()
    try:
        _store(mlp, folder, key)
    except OSError as err:
        if say is not None:
            say(f"could not cache the emotion predictor in {folder} ({short_reason(err)})")
    return mlp if device is None else mlp.to(device)


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _load(folder: Path, key: Mapping[str, Any], device) -> EmoDecaMLP:
    stored = json.loads((folder / KEY_NAME).read_text())
    if stored != key:
        raise ValueError("key.json does not match the requested predictor")
    return load_emodeca(folder, device=device).eval()


def _store(mlp: EmoDecaMLP, folder: Path, key: Mapping[str, Any]) -> None:
    """Write the entry into a temporary sibling and rename it into place (replacing a
    damaged entry; a complete one written meanwhile by another process is kept)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp = folder.parent / f".{folder.name}.tmp-{token}"
    try:
        save_emodeca(mlp, temp)
        (temp / KEY_NAME).write_text(json.dumps(key, indent=1, sort_keys=True))
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{token}"
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(temp, folder)
    except OSError:
        if folder.is_dir() and (folder / KEY_NAME).is_file():
            return  # another process put a complete entry in place first
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)

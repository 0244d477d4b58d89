"""A disk cache of the built-in head: build it once per source version, then load it.

The head is deterministic, so a file built by the same code holds exactly the same arrays.

* **Key**: SHA-256 of the cache format, the NumPy version and machine, and the bytes of every
  source file its construction runs: all files of this package (``emorig/flame/builtin/``,
  this module included) and ``emorig/flame/data.py`` (the records it fills and their
  ``validate``). The generator imports nothing else (NumPy only), so a change to anything that
  can change the head changes the key.
* **Location**: ``$EMORIG_CACHE``, else ``$XDG_CACHE_HOME/emorig``, else ``~/.cache/emorig``;
  the file is ``builtin-head-KEY.npz`` (KEY: the key's first 20 hex digits).
* **Format**: an uncompressed, pickle-free ``.npz``: ``format``, ``key``, ``notes`` (JSON) and
  one entry per field of each record, named ``RECORD.FIELD`` (``flame.v_template``,
  ``albedo.kind``, ``head.uv_face_mask``, ...); strings and flags are 0-d arrays; absent
  optional parts are simply missing.

Written atomically (:func:`emorig.io.atomic.save_npz_atomic`). A file that cannot be read, is
truncated or holds another key or format is rebuilt and replaced silently; a cache folder that
cannot be written leaves the head built in memory only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emorig.flame import data as flame_data
from emorig.flame.data import (
    AlbedoSpaceData,
    FlameData,
    HeadAssets,
    LandmarkEmbedding,
    MediapipeEmbedding,
    UVLayout,
)
from emorig.io.cache import cache_root

__all__ = [
    "CACHE_FORMAT",
    "cache_folder",
    "cache_path",
    "head_key",
    "is_cached",
    "load_or_build",
    "read_head",
    "write_head",
]

CACHE_FORMAT = "emorig-builtin-head/1"
_PREFIX = "builtin-head-"
#: The records a head holds, by the attribute of :class:`HeadAssets` that holds them.
_RECORDS: dict[str, type] = {
    "flame": FlameData,
    "landmarks": LandmarkEmbedding,
    "mediapipe": MediapipeEmbedding,
    "uv": UVLayout,
    "albedo": AlbedoSpaceData,
}


def cache_folder() -> Path:
    """The user's cache folder (:func:`emorig.io.cache.cache_root`)."""
    return cache_root()


def _source_files() -> list[Path]:
    package = Path(__file__).resolve().parent
    files = [
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    ]
    return [*sorted(files), Path(flame_data.__file__).resolve()]


def head_key() -> str:
    """Hex SHA-256 of everything the built-in head's arrays depend on (see the module doc)."""
    digest = hashlib.sha256()
    for part in (CACHE_FORMAT, np.__version__, platform.machine()):
        digest.update(part.encode() + b"\0")
    for path in _source_files():
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def cache_path(key: str | None = None) -> Path:
    """Where the head built by the current source (or by ``key``) is cached."""
    key = head_key() if key is None else key
    return cache_folder() / f"{_PREFIX}{key[:20]}.npz"


def is_cached() -> bool:
    """Whether a cache file for the current source exists (it may still prove unreadable)."""
    try:
        return cache_path().is_file()
    except OSError:
        return False


def _head_arrays(head: HeadAssets, key: str) -> dict[str, np.ndarray]:
    arrays = {
        "format": np.array(CACHE_FORMAT),
        "key": np.array(key),
        "notes": np.array(json.dumps(head.notes, sort_keys=True)),
    }
    for part in dataclasses.fields(HeadAssets):
        value = getattr(head, part.name)
        if part.name in _RECORDS:
            if value is not None:
                for sub in dataclasses.fields(value):
                    arrays[f"{part.name}.{sub.name}"] = np.asarray(getattr(value, sub.name))
        elif part.name != "notes" and value is not None:
            arrays[f"head.{part.name}"] = np.asarray(value)
    return arrays


def write_head(head: HeadAssets, path: str | os.PathLike[str], key: str) -> None:
    """Save ``head`` to ``path`` (atomically) under ``key``."""
    from emorig.io.atomic import save_npz_atomic

    save_npz_atomic(path, **_head_arrays(head, key))


def _value(array: np.ndarray):
    """A stored entry back in its Python form (0-d str / bool -> str / bool)."""
    if array.ndim == 0 and array.dtype.kind == "U":
        return str(array)
    if array.ndim == 0 and array.dtype.kind == "b":
        return bool(array)
    return array


def _record(cls: type, name: str, stored: dict[str, np.ndarray]):
    fields = dataclasses.fields(cls)
    keys = [f"{name}.{f.name}" for f in fields]
    present = [k in stored for k in keys]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"record {name} is incomplete")
    return cls(**{f.name: _value(stored[k]) for f, k in zip(fields, keys, strict=True)})


def read_head(path: str | os.PathLike[str], key: str) -> HeadAssets:
    """Load a head written by :func:`write_head` under ``key``.

    Raises:
        OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile: the file is missing,
            damaged, of another format or written under another key.
    """
    with np.load(path, allow_pickle=False) as npz:
        stored = {name: npz[name] for name in npz.files}  # reads (and CRC-checks) every member
    if str(stored.get("format", "")) != CACHE_FORMAT or str(stored.get("key", "")) != key:
        raise ValueError(f"{path}: not a built-in head cache for key {key[:20]}")
    parts = {name: _record(cls, name, stored) for name, cls in _RECORDS.items()}
    if parts["flame"] is None:
        raise ValueError(f"{path}: no head geometry")
    extras = {
        f.name: stored.get(f"head.{f.name}")
        for f in dataclasses.fields(HeadAssets)
        if f.name not in _RECORDS and f.name != "notes"
    }
    known = {"format", "key", "notes"} | {f"head.{n}" for n in extras}
    known |= {f"{n}.{f.name}" for n, cls in _RECORDS.items() for f in dataclasses.fields(cls)}
    if set(stored) - known:
        raise ValueError(f"{path}: unexpected entries {sorted(set(stored) - known)}")
    notes = json.loads(str(stored["notes"]))
    return HeadAssets(**parts, notes={str(k): str(v) for k, v in notes.items()}, **extras)


def _remove_stale(keep: Path) -> None:
    """Delete cache files of other source versions (best effort)."""
    try:
        for old in keep.parent.glob(f"{_PREFIX}*.npz"):
            if old.name != keep.name:
                old.unlink(missing_ok=True)
    except OSError:
        pass


def load_or_build(build: Callable[[], HeadAssets]) -> HeadAssets:
    """The cached head for the current source, else ``build()`` (then cached when possible)."""
    try:
        key = head_key()
        path = cache_path(key)
    except OSError:  # the sources cannot be read (an unusual install): no cache
        return build()
    try:
        return read_head(path, key)
    except Exception:  # missing, damaged or foreign: build it again
        pass
    head = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_head(head, path, key)
    except Exception:  # read-only or full cache folder: keep the head in memory only
        return head
    _remove_stale(path)
    return head

"""Write files so that readers never see half of them: temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def _open_temp(target: Path, mode: str) -> tuple[Path, IO[Any]]:
    """Create a fresh temp file next to ``target`` (same file system, so ``os.replace`` works).

    Created with ``os.open(..., 0o666)`` so the process umask applies, giving the final file
    the same permissions an ordinary ``open(target, "w")`` would.
    """
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if "b" in mode:
            return tmp, os.fdopen(fd, mode)
        return tmp, os.fdopen(fd, mode, encoding="utf-8", newline="\n")
    raise FileExistsError(f"could not create a temporary file next to {target}")


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` only when the ``with`` block succeeds.

    The temporary file lives in the destination folder (``.NAME.XXXXXXXX.tmp``), is flushed and
    fsynced, then renamed over ``path`` with :func:`os.replace`. If the block raises, the temp
    file is deleted and ``path`` is left untouched.

    Args:
        path: destination file; its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (UTF-8 text, ``\\n`` line endings).

    Yields:
        The open file object.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports mode 'wb' or 'w', not {mode!r}")
    target = Path(path)
    tmp, handle = _open_temp(target, mode)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def save_npz_atomic(
    path: str | os.PathLike[str], *, compressed: bool = False, **arrays: Any
) -> None:
    """Write arrays to an ``.npz`` archive atomically (no ``.npz`` suffix is appended).

    Args:
        path: destination file.
        compressed: use ``np.savez_compressed`` (smaller, slower; members cannot be
            memory-mapped).
        **arrays: name -> array-like; object arrays are refused so the file never needs pickle.
    """
    clean = {}
    for name, value in arrays.items():
        arr = np.asanyarray(value)
        if arr.dtype == object:
            raise TypeError(f"array {name!r} has dtype object; npz files we write hold no pickles")
        clean[name] = arr
    with atomic_write(path, "wb") as f:
        if compressed:
            np.savez_compressed(f, **clean)
        else:
            np.savez(f, **clean)

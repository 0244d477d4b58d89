"""Write files so that readers never see half of them: temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from emorig.errors import EmorigError

__all__ = ["DiskFullError", "atomic_write", "is_disk_full", "save_npz_atomic"]

#: ``errno`` values meaning the disk (or the user's quota) has no room left.
DISK_FULL_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None
)


class DiskFullError(EmorigError):
    """A write ran out of space (``ENOSPC``) or quota (``EDQUOT``); nothing partial was kept.

    Attributes:
        path: the file that was being written.
        needed: bytes the write had produced when it failed (at least this much more space is
            needed), or None when unknown.
        free: bytes free on that file system after the temporary file was removed, or None.
    """

    def __init__(
        self, path: Path, needed: int | None = None, free: int | None = None, quota: bool = False
    ):
        self.path, self.needed, self.free = Path(path), needed, free
        what = "disk quota exceeded" if quota else "no space left on device"
        detail = []
        if needed:
            detail.append(f"needs at least {_size(needed)}")
        if free is not None:
            detail.append(f"{_size(free)} free in {self.path.parent}")
        extra = f" ({', '.join(detail)})" if detail else ""
        super().__init__(
            f"{self.path}: {what}{extra}; nothing partial was kept: free some space and run "
            "the same command again, it continues where it stopped"
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def is_disk_full(err: BaseException) -> bool:
    """True for an :class:`OSError` meaning no space or quota is left (or a DiskFullError)."""
    if isinstance(err, DiskFullError):
        return True
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


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
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, size: int | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` only when the ``with`` block succeeds.

    The temporary file lives in the destination folder (``.NAME.XXXXXXXX.tmp``), is flushed and
    fsynced, then renamed over ``path`` with :func:`os.replace`. If the block raises, the temp
    file is deleted and ``path`` is left untouched. Running out of space or quota
    (``ENOSPC``/``EDQUOT``, while writing, flushing or creating the file) becomes a one-line
    :class:`DiskFullError` naming ``path`` and the space needed, raised after the temporary
    file is removed.

    Args:
        path: destination file; its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (UTF-8 text, ``\\n`` line endings).
        size: the number of bytes about to be written, when known (named in a disk-full
            message; otherwise the bytes written before the failure are).

    Raises:
        DiskFullError: the file system (or quota) had no room; the temporary file is gone.

    Yields:
        The open file object.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports mode 'wb' or 'w', not {mode!r}")
    target = Path(path)
    try:
        tmp, handle = _open_temp(target, mode)
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            raise _disk_full(target, size, err) from None
        raise
    written: int | None = size
    try:
        with handle:
            try:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as err:
                if err.errno in DISK_FULL_ERRNOS and written is None:
                    written = _position(handle)
                raise
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            raise _disk_full(target, written, err) from None
        raise
    _fsync_dir(target.parent)


def _disk_full(target: Path, needed: int | None, err: OSError) -> DiskFullError:
    quota = err.errno == getattr(errno, "EDQUOT", None)
    return DiskFullError(target, needed, _free_bytes(target.parent), quota)


def _position(handle: IO[Any]) -> int | None:
    """How many bytes the handle had been given (buffered ones included), if it can tell."""
    try:
        return handle.tell()
    except (OSError, ValueError):
        return None


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

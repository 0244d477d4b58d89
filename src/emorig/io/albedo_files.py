"""Readers for linear albedo spaces in FLAME's UV layout, and our npz form.

Official files (see ``anchors.md`` §1.2):

* ``FLAME_texture.npz`` (FLAME texture space): ``mean`` (512, 512, 3) and ``tex_dir``
  (512, 512, 3, 200), values 0..255.
* ``FLAME_albedo_from_BFM.npz`` (BFM_to_FLAME): ``MU`` (any shape holding 512 * 512 * 3
  values) and ``PC`` (512 * 512 * 3 rows by 199 components, any leading shape), values in
  [0, 1]; optional ``specMU``/``specPC`` are ignored.

DECA flips the channels of both after decoding (``[:, [2, 1, 0]]``), i.e. the files store BGR;
we return RGB in [0, 1]. The FLAME texture file is ~600 MB as float32, so bases are streamed
from the archive in row chunks and only the first ``n_components`` are kept: memory stays at
the size of the result plus one chunk, whether the member is stored or compressed.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from emorig.assets.catalogue import obtain_text
from emorig.errors import AssetError, reading
from emorig.flame.data import AlbedoSpaceData
from emorig.io.atomic import save_npz_atomic
from emorig.io.pickles import read_npy_header

__all__ = ["ALBEDO_NPZ_FORMAT", "read_albedo_space", "write_albedo_npz"]

ALBEDO_NPZ_FORMAT = "emorig-albedo/1"
_CHUNK_BYTES = 16 << 20  # bytes of the stored array read at a time


class _Member:
    """One ``.npy`` member of an open ``.npz``: header parsed, data not read."""

    def __init__(self, zf: zipfile.ZipFile, key: str, source: str, obtain: str | None):
        self.zf, self.key, self.source, self.obtain = zf, key, source, obtain
        with zf.open(f"{key}.npy") as f:
            try:
                self.shape, self.fortran, self.dtype = read_npy_header(f)
            except Exception as err:
                raise AssetError(
                    source, f"member '{key}' is not a numpy array ({err})", obtain
                ) from None
        if self.dtype.hasobject or self.dtype.kind not in "biuf":
            raise AssetError(source, f"'{key}' holds {self.dtype} values, expected numbers", obtain)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _read(self, f: IO[bytes], count: int) -> np.ndarray:
        nbytes = count * self.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise AssetError(self.source, f"'{self.key}' is truncated", self.obtain)
        return np.frombuffer(raw, dtype=self.dtype, count=count)

    def read_columns(self, n_columns: int, keep: int | None, out_dtype: Any) -> np.ndarray:
        """The array viewed as (rows, n_columns) in C order, first ``keep`` columns only.

        Returns:
            (rows, keep) array of ``out_dtype``.
        """
        total = self.size
        if n_columns <= 0 or total % n_columns:
            raise AssetError(
                self.source,
                f"'{self.key}' of shape {self.shape} cannot be viewed "
                f"as rows of {n_columns} values",
                self.obtain,
            )
        rows = total // n_columns
        keep = n_columns if keep is None else keep
        out = np.empty((rows, keep), dtype=out_dtype)
        with self.zf.open(f"{self.key}.npy") as f:
            read_npy_header(f)
            if self.fortran:
                return np.ascontiguousarray(
                    self._read_fortran(f, rows, n_columns, keep), dtype=out_dtype
                )
            step = max(1, _CHUNK_BYTES // max(1, n_columns * self.dtype.itemsize))
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                block = self._read(f, (stop - start) * n_columns).reshape(-1, n_columns)
                out[start:stop] = block[:, :keep]
        return out

    def _read_fortran(self, f: IO[bytes], rows: int, n_columns: int, keep: int) -> np.ndarray:
        """Fortran-ordered member: the last axis varies slowest, so a prefix of the data is
        the first ``keep`` entries of that axis."""
        shape = tuple(self.shape)
        if keep == n_columns:
            arr = self._read(f, self.size).reshape(shape, order="F")
            return arr.reshape(rows, n_columns)
        if not shape or shape[-1] != n_columns:
            raise AssetError(
                self.source,
                f"'{self.key}' of shape {shape} is stored in Fortran "
                f"order with components not on its last axis",
                self.obtain,
            )
        arr = self._read(f, rows * keep).reshape((*shape[:-1], keep), order="F")
        return arr.reshape(rows, keep)


def _bgr_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Swap channels 0 and 2 of an (H, W, 3, ...) array in place (a third of it as scratch,
    instead of the full copy ``arr[:, :, ::-1]`` would need)."""
    blue = arr[:, :, 0].copy()
    arr[:, :, 0] = arr[:, :, 2]
    arr[:, :, 2] = blue
    return arr


def _open(path: Path, source: str, obtain: str | None) -> zipfile.ZipFile:
    with reading(source, obtain):
        try:
            return zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError) as err:
            raise AssetError(source, f"not a readable .npz file ({err})", obtain) from None


def _keys(zf: zipfile.ZipFile) -> set[str]:
    return {n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")}


def _n_keep(available: int, n_components: int | None, source: str, obtain: str | None) -> int:
    if n_components is None:
        return available
    if not 0 <= n_components <= available:
        raise AssetError(
            source, f"asked for {n_components} albedo components, the file has {available}", obtain
        )
    return n_components


def _read_flame_texture(
    zf: zipfile.ZipFile, n_components: int | None, source: str, obtain: str | None
) -> AlbedoSpaceData:
    mean_m = _Member(zf, "mean", source, obtain)
    basis_m = _Member(zf, "tex_dir", source, obtain)
    if len(mean_m.shape) != 3 or mean_m.shape[2] != 3:
        raise AssetError(source, f"'mean' has shape {mean_m.shape}, expected (H, W, 3)", obtain)
    h, w = mean_m.shape[:2]
    if len(basis_m.shape) != 4 or basis_m.shape[:3] != (h, w, 3):
        raise AssetError(
            source, f"'tex_dir' has shape {basis_m.shape}, expected ({h}, {w}, 3, K)", obtain
        )
    k = _n_keep(basis_m.shape[3], n_components, source, obtain)
    mean = mean_m.read_columns(3, None, np.float32).reshape(h, w, 3)
    basis = basis_m.read_columns(basis_m.shape[3], k, np.float32).reshape(h, w, 3, k)
    mean /= np.float32(255)
    basis /= np.float32(255)
    return AlbedoSpaceData(mean=_bgr_to_rgb(mean), basis=_bgr_to_rgb(basis), kind="FLAME")


def _square_side(n_pixels: int, source: str, obtain: str | None) -> int:
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise AssetError(source, f"{n_pixels} albedo pixels do not form a square UV image", obtain)
    return side


def _read_bfm(
    zf: zipfile.ZipFile, n_components: int | None, source: str, obtain: str | None
) -> AlbedoSpaceData:
    mean_m = _Member(zf, "MU", source, obtain)
    basis_m = _Member(zf, "PC", source, obtain)
    n_values = mean_m.size
    if n_values % 3 or not basis_m.shape or basis_m.size % n_values:
        raise AssetError(
            source,
            f"'MU' {mean_m.shape} and 'PC' {basis_m.shape} do not describe the same (H*W*3) albedo",
            obtain,
        )
    n_available = basis_m.size // n_values
    if basis_m.shape[-1] != n_available:
        raise AssetError(
            source, f"'PC' has shape {basis_m.shape}, expected ({n_values}, K)", obtain
        )
    side = _square_side(n_values // 3, source, obtain)
    k = _n_keep(n_available, n_components, source, obtain)
    mean = mean_m.read_columns(3, None, np.float32).reshape(side, side, 3)
    basis = basis_m.read_columns(n_available, k, np.float32).reshape(side, side, 3, k)
    return AlbedoSpaceData(mean=_bgr_to_rgb(mean), basis=_bgr_to_rgb(basis), kind="BFM")


def _read_ours(
    zf: zipfile.ZipFile, n_components: int | None, source: str, obtain: str | None
) -> AlbedoSpaceData:
    from numpy.lib import format as npy_format

    with zf.open("format.npy") as f:
        fmt = npy_format.read_array(f, allow_pickle=False)
    if str(fmt[()]) != ALBEDO_NPZ_FORMAT:
        raise AssetError(
            source,
            f"unknown albedo format {str(fmt[()])!r}, expected {ALBEDO_NPZ_FORMAT!r}",
            obtain,
        )
    missing = [k for k in ("mean", "basis", "kind") if k not in _keys(zf)]
    if missing:
        raise AssetError(source, f"missing keys {missing}", obtain)
    mean_m = _Member(zf, "mean", source, obtain)
    basis_m = _Member(zf, "basis", source, obtain)
    if len(mean_m.shape) != 3 or len(basis_m.shape) != 4:
        raise AssetError(
            source,
            f"'mean' {mean_m.shape} and 'basis' {basis_m.shape} are not (H, W, 3) and (H, W, 3, K)",
            obtain,
        )
    k = _n_keep(basis_m.shape[3], n_components, source, obtain)
    with zf.open("kind.npy") as f:
        kind = str(npy_format.read_array(f, allow_pickle=False)[()])
    mean = mean_m.read_columns(3, None, np.float32).reshape(mean_m.shape)
    basis = basis_m.read_columns(basis_m.shape[3], k, np.float32).reshape(*basis_m.shape[:3], k)
    return AlbedoSpaceData(mean=mean, basis=basis, kind=kind)


def read_albedo_space(
    path: str | os.PathLike[str], n_components: int | None = None
) -> AlbedoSpaceData:
    """Read an albedo space: ``FLAME_texture.npz``, ``FLAME_albedo_from_BFM.npz`` or ours.

    The layout is recognised by the keys (``mean``/``tex_dir``, ``MU``/``PC``, or our
    ``format`` entry), not by the file name.

    Args:
        path: the ``.npz`` file.
        n_components: keep only the first K principal directions (None keeps all); the others
            are never held in memory.

    Returns:
        Validated :class:`AlbedoSpaceData`: ``mean`` (H, W, 3) and ``basis`` (H, W, 3, K)
        float32, RGB, [0, 1] scale; ``kind`` ``"FLAME"``, ``"BFM"`` or the stored kind.

    Raises:
        AssetError: missing file, not an npz, unknown layout, wrong shapes, truncated data, or
            more components asked for than stored.
    """
    path = Path(path)
    source = str(path)
    obtain = obtain_text(path, default_key="flame_texture")
    with _open(path, source, obtain) as zf:
        keys = _keys(zf)
        try:
            if "format" in keys:
                albedo = _read_ours(zf, n_components, source, obtain)
            elif {"mean", "tex_dir"} <= keys:
                albedo = _read_flame_texture(zf, n_components, source, obtain)
            elif {"MU", "PC"} <= keys:
                albedo = _read_bfm(zf, n_components, source, obtain)
            else:
                raise AssetError(
                    source,
                    f"is not an albedo space: expected keys 'mean' and "
                    f"'tex_dir' (FLAME) or 'MU' and 'PC' (BFM), found "
                    f"{sorted(keys)}",
                    obtain,
                )
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            raise AssetError(source, f"corrupt .npz member ({err})", obtain) from None
    return albedo.validate(source, obtain)


def write_albedo_npz(albedo: AlbedoSpaceData, path: str | os.PathLike[str]) -> None:
    """Save an :class:`AlbedoSpaceData` as a pickle-free ``.npz`` (atomically, uncompressed).

    Keys: ``format`` (``"emorig-albedo/1"``), ``kind``, ``mean`` (H, W, 3) and ``basis``
    (H, W, 3, K), RGB in [0, 1] as stored in the record.
    """
    save_npz_atomic(
        path,
        format=np.array(ALBEDO_NPZ_FORMAT),
        kind=np.array(albedo.kind),
        mean=albedo.mean,
        basis=albedo.basis,
    )

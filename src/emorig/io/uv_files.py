"""DECA's UV-space data files: face masks and the fixed displacement map."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from emorig.assets.catalogue import obtain_text
from emorig.errors import AssetError, reading, short_reason
from emorig.io.pickles import read_npy_header

UV_SIZE = 256


def read_uv_mask(path: str | os.PathLike[str], size: int = UV_SIZE) -> np.ndarray:
    """A UV mask PNG (``uv_face_eye_mask.png``, ``uv_face_mask.png``) as (size, size) float32
    in [0, 1]: channel 0 / 255, resized to ``size`` as DECA does."""
    path = Path(path)
    source, obtain = str(path), obtain_text(path)
    with reading(source, obtain):
        try:
            with Image.open(path) as img:
                img.load()
                first = img.getchannel(0) if len(img.getbands()) > 1 else img
                arr = np.asarray(first.convert("F"), dtype=np.float32)
        except (OSError, SyntaxError, ValueError) as err:
            if isinstance(err, FileNotFoundError | IsADirectoryError):
                raise
            raise AssetError(source, f"not a readable PNG ({short_reason(err)})", obtain) from None
    if arr.shape[0] != arr.shape[1]:
        raise AssetError(source, f"mask is {arr.shape[1]}x{arr.shape[0]}, expected square", obtain)
    if arr.shape[0] != size:
        arr = np.asarray(
            Image.fromarray(arr).resize((size, size), Image.BILINEAR), dtype=np.float32
        )
    return np.clip(arr / 255.0, 0.0, 1.0)


def read_fixed_displacement(path: str | os.PathLike[str]) -> np.ndarray:
    """DECA's ``fixed_displacement_256.npy``: (256, 256) float, checked without pickle."""
    path = Path(path)
    source, obtain = str(path), obtain_text(path)
    with reading(source, obtain), open(path, "rb") as f:
        try:
            shape, fortran, dtype = read_npy_header(f)
        except (ValueError, OSError) as err:
            raise AssetError(source, f"not an .npy file ({short_reason(err)})", obtain) from None
        if dtype.hasobject or len(shape) != 2 or shape[0] != shape[1]:
            raise AssetError(source, f"holds {dtype} {shape}, expected a square float map", obtain)
        data = np.frombuffer(f.read(), dtype=dtype, count=shape[0] * shape[1])
    arr = data.reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr, dtype=np.float32)

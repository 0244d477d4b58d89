"""Image files and contact sheets. Tensors are (3, H, W) or (H, W, 3) float in [0, 1]."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from emorig.errors import EmorigError, short_reason
from emorig.io.atomic import atomic_write


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) / (1, H, W) tensor or (H, W, C) array in [0, 1] -> (H, W, 3) uint8.

    uint8 arrays are taken as already quantised and only given three channels.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: torch.Tensor | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an image atomically (a half-written PNG never appears under ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        Image.fromarray(to_uint8(image)).save(f, format="PNG")
    return path


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    gap: int = 4,
) -> np.ndarray:
    """Tile (H, W, 3) uint8 images into one labelled sheet (rows x columns); columns are
    widened where a label is wider than the images, so no label is cut."""
    h = max(im.shape[0] for row in rows for im in row)
    w = max(im.shape[1] for row in rows for im in row)
    n_cols = max(len(row) for row in rows)
    font = ImageFont.load_default()
    if column_labels:
        w = max(w, *(_text_width(font, t) + 4 for t in column_labels))
    left = 0 if not row_labels else 8 + max(_text_width(font, t) for t in row_labels)
    top = 0 if not column_labels else 18
    sheet = Image.new(
        "RGB",
        (left + n_cols * (w + gap) + gap, top + len(rows) * (h + gap) + gap),
        (24, 24, 24),
    )
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels or []):
        draw.text((left + gap + c * (w + gap) + 2, 3), label, fill=(230, 230, 230), font=font)
    for r, row in enumerate(rows):
        y = top + gap + r * (h + gap)
        if row_labels:
            draw.text((4, y + h // 2 - 6), row_labels[r], fill=(230, 230, 230), font=font)
        for c, im in enumerate(row):
            sheet.paste(Image.fromarray(im), (left + gap + c * (w + gap), y))
    return np.asarray(sheet)


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


# ---------------------------------------------------------------------------------------------
# Reading photos users bring: any mode, EXIF orientation, corrupt files reported in one line.

MAX_PIXELS = 400_000_000  # refuse beyond this (a 20000 x 20000 photo); PIL's own bomb check


class ImageReadError(EmorigError):
    """A file that is not a readable image; ``reason`` is one line for a summary."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class LoadedImage:
    """A photo as RGB uint8, upright.

    Attributes:
        pixels: (H, W, 3) uint8 RGB with the EXIF orientation applied.
        path: where it came from.
        mode: the file's PIL mode before conversion (``"RGB"``, ``"CMYK"``, ``"I;16"``, ...).
        exif_rotated: True when an EXIF orientation tag changed the pixel layout.
    """

    pixels: np.ndarray
    path: str
    mode: str
    exif_rotated: bool

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[0], self.pixels.shape[1]


def read_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Read any photo PIL understands as upright RGB uint8.

    Handles EXIF orientation; grayscale, palette, CMYK, YCbCr and LAB; transparency (composited
    on white); 16- and 32-bit integer and float images (scaled to 8 bits). Raises
    :class:`ImageReadError` with a one-line reason for missing, corrupt, truncated or
    non-image files and for images over :data:`MAX_PIXELS`.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                n = img.size[0] * img.size[1]
                if n > MAX_PIXELS:
                    raise ImageReadError(path, f"too large ({n / 1e6:.0f} megapixels)")
                img.load()
                mode = img.mode
                orientation = img.getexif().get(0x0112, 1)
                upright = ImageOps.exif_transpose(img)
                pixels = _to_rgb8(upright if upright is not None else img)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image PIL can read") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(path, f"too large ({short_reason(err)})") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageReadError(path, f"corrupt or truncated ({short_reason(err)})") from None
    return LoadedImage(pixels, str(path), mode, orientation not in (1, None))


def _white_level(mode: str, arr: np.ndarray) -> float:
    """The value that is white: 65535 for 16-bit images (so a dark 16-bit photo stays dark,
    never stretched or clipped); for 32-bit integers the 8- or 16-bit range the values fit
    (PIL reads some 16-bit files as ``"I"``), else their maximum; for floats 1, else the
    maximum."""
    top = float(arr.max()) if arr.size else 1.0
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "I":
        if float(arr.min(initial=0)) >= 0 and top <= 255:
            return 255.0
        return 65535.0 if top <= 65535 else top
    return top if top > 1.0 else 1.0


def _to_rgb8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        grey = np.clip(arr / _white_level(mode, arr), 0.0, 1.0)
        return np.repeat((grey * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))

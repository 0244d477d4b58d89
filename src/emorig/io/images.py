"""Image files and contact sheets. Tensors are (3, H, W) or (H, W, 3) float in [0, 1]."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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
    """Tile (H, W, 3) uint8 images into one labelled sheet (rows x columns)."""
    h = max(im.shape[0] for row in rows for im in row)
    w = max(im.shape[1] for row in rows for im in row)
    n_cols = max(len(row) for row in rows)
    font = ImageFont.load_default()
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

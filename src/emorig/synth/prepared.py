"""Synthetic faces straight into a prepared folder (what ``emorig prepare`` makes from photos):
the aligned image, the exact code and its condition buffers, no reconstruction involved.

The codes' cameras frame the whole image (FFHQ-like), so each item's crop transform is the
plain rescaling from the image to the 224 crop (:func:`emorig.data.dataset.scale_transform`,
the writer's default).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from emorig.data.dataset import (
    DatasetWriter,
    Manifest,
    PreparedSettings,
    read_manifest,
    shard_paths,
)
from emorig.io.atomic import atomic_write
from emorig.synth.datasets import SynthDatasetConfig, iter_synth_faces

__all__ = ["write_prepared"]

RECIPE_NAME = "synth.json"


def _recipe(config: SynthDatasetConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def write_prepared(
    config: SynthDatasetConfig,
    out: str | os.PathLike[str],
    renderer=None,
    *,
    batch_size: int = 16,
    shard_size: int = 64,
    device=None,
    progress=None,
) -> Manifest:
    """Render ``config``'s synthetic faces into the prepared folder ``out``.

    A folder already holding this exact recipe (``synth.json``) with a manifest is reused; a
    folder with another recipe or an unfinished one is rewritten.

    Args:
        config: the synthetic dataset.
        out: the prepared folder.
        renderer: a built-in-head renderer (default: built on ``device``).
        batch_size, shard_size: rendering batch and items per shard.
        progress: called with ``(done, total)`` after each batch.

    Returns:
        The folder's manifest.
    """
    out = Path(out)
    recipe = _recipe(config)
    marker = out / RECIPE_NAME
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        try:
            return read_manifest(out)
        except Exception:  # unfinished: rewrite below
            pass
    for p in shard_paths(out):
        p.unlink()
    marker.unlink(missing_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    (out / "mean_shape.safetensors").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    settings = PreparedSettings(
        size=config.size, head="builtin", reconstructor="synthetic", synthetic_head=True
    )
    total = config.count
    done = 0
    with DatasetWriter(out, settings, shard_size=shard_size) as writer:
        for faces in iter_synth_faces(config, renderer, batch_size=batch_size, device=device):
            b = faces.buffers
            assert b is not None
            m = b.mask
            s = config.size
            pixels = (faces.landmarks + 1) * (s / 2)  # NDC (x right, y down) -> pixels
            writer.add(
                faces.images,
                faces.code,
                {
                    "rendered": b.rendered * m,
                    "normal": b.normal * m,
                    "albedo": b.albedo * m,
                    "mask": m,
                },
                sources=[f"synthetic/{int(i):06d}" for i in faces.index],
                landmarks=pixels,
                info=[
                    {
                        "emotion": int(faces.labels[k]),
                        "group": int(faces.groups[k]),
                        "view": int(faces.views[k]),
                        "synthetic": True,
                    }
                    for k in range(len(faces))
                ],
            )
            done += len(faces)
            if progress is not None:
                progress(done, total)
    with atomic_write(marker, "w") as f:
        json.dump(recipe, f, indent=1)
    return read_manifest(out)

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
    MANIFEST_NAME,
    MEAN_SHAPE_NAME,
    DatasetWriter,
    Manifest,
    PreparedSettings,
    damaged_shards,
    read_headers,
    read_manifest,
    shard_paths,
)
from emorig.errors import EmorigError
from emorig.io.atomic import atomic_write
from emorig.synth.datasets import (
    SynthDatasetConfig,
    SynthFaces,
    _default_renderer,
    plan_dataset,
    render_plan,
)

__all__ = ["write_prepared"]

RECIPE_NAME = "synth.json"


def _recipe(config: SynthDatasetConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _source(index: int) -> str:
    return f"synthetic/{index:06d}"


def _whole(out: Path) -> Manifest | None:
    """The manifest of a finished folder whose shards are all there and whole, else None."""
    try:
        manifest = read_manifest(out)
    except Exception:  # unfinished or damaged: resumed by the caller
        return None
    names = {p.name for p in shard_paths(out)}
    if any(name not in names for name, _ in manifest.shards) or damaged_shards(out):
        return None
    return manifest


def _start_over(out: Path, recipe: dict) -> None:
    """Empty ``out`` of another recipe's data and record this recipe (before any shard)."""
    for p in shard_paths(out):
        p.unlink()
    (out / MEAN_SHAPE_NAME).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / RECIPE_NAME, "w") as f:
        json.dump(recipe, f, indent=1)


def _batches(todo: list[int], batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of consecutive indices of ``todo``, at most ``batch_size`` long."""
    runs: list[tuple[int, int]] = []
    for i in todo:
        if runs and runs[-1][1] == i and i - runs[-1][0] < batch_size:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _add(writer: DatasetWriter, faces: SynthFaces, size: int) -> None:
    b = faces.buffers
    assert b is not None
    m = b.mask
    pixels = (faces.landmarks + 1) * (size / 2)  # NDC (x right, y down) -> pixels
    writer.add(
        faces.images,
        faces.code,
        {"rendered": b.rendered * m, "normal": b.normal * m, "albedo": b.albedo * m, "mask": m},
        sources=[_source(int(i)) for i in faces.index],
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


def write_prepared(
    config: SynthDatasetConfig,
    out: str | os.PathLike[str],
    renderer=None,
    *,
    batch_size: int = 16,
    shard_size: int = 64,
    device=None,
    progress=None,
    say=None,
) -> Manifest:
    """Render ``config``'s synthetic faces into the prepared folder ``out``.

    A folder already holding this exact recipe (``synth.json``) with a manifest and whole
    shards is reused. A folder with this recipe but unfinished (stopped by a full disk or
    killed) or with damaged shards is resumed: damaged shards are removed and only the faces
    missing from the shards are rendered (the dataset is drawn from its seed, so they come out
    the same). A folder with another recipe is rewritten.

    Args:
        config: the synthetic dataset.
        out: the prepared folder.
        renderer: a built-in-head renderer (default: built on ``device``).
        batch_size, shard_size: rendering batch and items per shard.
        progress: called with ``(done, total)`` after each batch.
        say: told one line per damaged shard removed.

    Returns:
        The folder's manifest.

    Raises:
        DiskFullError: the disk filled up; what was written stays, a rerun continues.
    """
    if batch_size < 1:
        raise EmorigError(f"batch size {batch_size}: must be at least 1")
    out = Path(out)
    recipe = _recipe(config)
    marker = out / RECIPE_NAME
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        manifest = _whole(out)
        if manifest is not None:
            return manifest
        for path, reason in damaged_shards(out):
            path.unlink(missing_ok=True)
            if say is not None:
                say(f"{path}: damaged shard ({reason}); removed, its faces are rendered again")
    else:
        _start_over(out, recipe)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # unfinished until every face is in
    settings = PreparedSettings(
        size=config.size, head="builtin", reconstructor="synthetic", synthetic_head=True
    )
    done = {s for h in read_headers(out) for s in h.sources}
    todo = [i for i in range(config.count) if _source(i) not in done]
    total, count = config.count, config.count - len(todo)
    if todo:
        renderer = renderer if renderer is not None else _default_renderer(device)
        plan = plan_dataset(renderer, config)
    with DatasetWriter(out, settings, shard_size=shard_size) as writer:
        for start, stop in _batches(todo, batch_size):
            faces = render_plan(renderer, plan, config, start, stop)
            _add(writer, faces, config.size)
            count += len(faces)
            if progress is not None:
                progress(count, total)
    return read_manifest(out)

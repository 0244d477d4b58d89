"""A tiny diffusion model trained on a tiny synthetic album, as the edit, emotion-cache and
evaluation tests need one."""

from __future__ import annotations

from pathlib import Path

from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from emorig.train.diffusion import RigTrainConfig, train_rig


def album(folder: Path, count: int) -> Path:
    """A prepared album of ``count`` 32 px faces of one identity."""
    config = SynthDatasetConfig(mode="album", count=count, size=32, album_size=count, supersample=1)
    write_prepared(config, folder)
    return folder


def tiny_model(data: Path, out: Path, steps: int, batch_size: int, **config) -> Path:
    """The model folder of a ``tiny`` stage-1 run of ``steps`` steps on ``data``."""
    cfg = RigTrainConfig(
        stage="stage1", data=str(data), out=str(out), model="tiny", steps=steps,
        batch_size=batch_size, save_every=steps, sample_every=1000, cpu=True, **config,
    )  # fmt: skip
    return train_rig(cfg).model_folder

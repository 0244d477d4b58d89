"""A training checkpoint's raw (not EMA) diffusion model as a model folder:
``python -m emorig.train.export CHECKPOINT DST_FOLDER``."""

from __future__ import annotations

import sys
from pathlib import Path

from emorig.data.dataset import CONDITION_NAMES, read_manifest
from emorig.diffusion.pretrained import save_pretrained
from emorig.train.checkpoint import load_checkpoint
from emorig.train.diffusion import RigTrainConfig, build_rig

__all__ = ["model_from_checkpoint"]


def model_from_checkpoint(checkpoint: str | Path, dst: str | Path) -> Path:
    """The raw (not EMA) diffusion model of a ``train_rig`` checkpoint as a model folder."""
    state = load_checkpoint(checkpoint)
    cfg = RigTrainConfig.from_dict(state["config"])
    model = build_rig(cfg, tuple(CONDITION_NAMES), read_manifest(cfg.data).settings.size)
    model.load_state_dict(state["model"])
    return save_pretrained(model, dst)


def main(argv: list[str]) -> None:  # pragma: no cover - a maintenance tool
    if len(argv) != 2:
        sys.exit("usage: python -m emorig.train.export CHECKPOINT DST_FOLDER")
    print(model_from_checkpoint(argv[0], argv[1]))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

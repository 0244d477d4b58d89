"""Small weights this project trained itself on synthetic renders of the built-in head, shipped
so that ``emorig demo`` runs with nothing downloaded (``scripts/train_demo_weights.sh``
reproduces them)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from emorig.errors import EmorigError

__all__ = ["ENCODER_NAME", "STAGE1_NAME", "packaged_weights"]

#: Folder names of the shipped weights under ``emorig/weights/demo``.
STAGE1_NAME = "stage1-small64"
ENCODER_NAME = "encoder64"


def packaged_weights(name: str) -> Path:
    """Folder of weights shipped with emorig (``emorig/weights/demo/NAME``)."""
    folder = Path(str(resources.files("emorig") / "weights" / "demo" / name))
    if not (folder / "config.json").is_file():
        raise EmorigError(
            f"{folder}: the demo weights are missing from this installation; reinstall emorig "
            "or reproduce them with scripts/train_demo_weights.sh"
        )
    return folder

"""Copy a model folder (``config.json`` + ``model.safetensors``) with float16 weights, to ship
it small: ``python -m emorig.weights.pack RUN/model src/emorig/weights/demo/NAME``.

Loading converts the weights back to the model's float32 parameters; float16 keeps about
three significant digits, far below what the demo's metrics resolve. Integer buffers (e.g.
batch-norm counters) are kept as they are. Any family's folder is accepted; it is read and
written by :mod:`emorig.io.model_folder` (its format name, version and weights metadata are
kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

from emorig.io.atomic import atomic_write
from emorig.io.model_folder import (
    WEIGHTS_NAME,
    read_folder_config,
    read_safetensors,
    write_model_folder,
)

#: Files besides the model folder's own that are copied when present.
EXTRA_FILES = ("training.json",)


def pack(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst`` = ``src`` with floating-point tensors stored as float16.

    Raises:
        AssetError: ``src`` is not a readable model folder.
    """
    src, dst = Path(src), Path(dst)
    info = read_folder_config(src)
    state, metadata = read_safetensors(src / WEIGHTS_NAME)
    small = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    write_model_folder(dst, info.meta, small, metadata)
    for extra in EXTRA_FILES:
        if (src / extra).is_file():
            with atomic_write(dst / extra, "wb") as f:
                f.write((src / extra).read_bytes())
    return dst


def main(argv: list[str]) -> None:  # pragma: no cover - a maintenance tool
    if len(argv) == 2:
        print(pack(argv[0], argv[1]))
    else:
        sys.exit("usage: python -m emorig.weights.pack SRC_MODEL_FOLDER DST_FOLDER")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

"""Copy a model folder (``config.json`` + ``model.safetensors``) with float16 weights, to ship
it small: ``python -m emorig.weights.pack RUN/model src/emorig/weights/demo/NAME``. A
diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, our
autoencoders) is packed the same way, its files keeping diffusers' names.

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

#: The weights file of a diffusers folder.
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def pack(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst`` = ``src`` with floating-point tensors stored as float16.

    Raises:
        AssetError: ``src`` is not a readable model folder.
    """
    src, dst = Path(src), Path(dst)
    if (src / DIFFUSERS_WEIGHTS).is_file():
        return _pack_diffusers(src, dst)
    info = read_folder_config(src)
    state, metadata = read_safetensors(src / WEIGHTS_NAME)
    write_model_folder(dst, info.meta, _half(state), metadata)
    _copy(src, dst, EXTRA_FILES)
    return dst


def _half(state: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _copy(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (src / name).is_file():
            with atomic_write(dst / name, "wb") as f:
                f.write((src / name).read_bytes())


def _pack_diffusers(src: Path, dst: Path) -> Path:
    """A diffusers folder with float16 weights (loading casts them back to float32)."""
    from safetensors.torch import load_file, save

    state = load_file(str(src / DIFFUSERS_WEIGHTS))
    dst.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst / DIFFUSERS_WEIGHTS, "wb") as f:
        f.write(save(_half(state), metadata={"format": "pt"}))
    _copy(src, dst, ("config.json", *EXTRA_FILES))
    return dst


def main(argv: list[str]) -> None:  # pragma: no cover - a maintenance tool
    if len(argv) == 2:
        print(pack(argv[0], argv[1]))
    else:
        sys.exit("usage: python -m emorig.weights.pack SRC_MODEL_FOLDER DST_FOLDER")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

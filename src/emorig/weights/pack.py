"""Copy a model folder (``config.json`` + ``model.safetensors``) with float16 weights, to ship
it small: ``python -m emorig.weights.pack RUN/model src/emorig/weights/demo/NAME``.

Loading converts the weights back to the model's float32 parameters; float16 keeps about
three significant digits, far below what the demo's metrics resolve. Integer buffers (e.g.
batch-norm counters) are kept as they are.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from emorig.errors import EmorigError
from emorig.io.atomic import atomic_write


def pack(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst`` = ``src`` with floating-point tensors stored as float16."""
    import safetensors.torch

    src, dst = Path(src), Path(dst)
    weights = src / "model.safetensors"
    if not (src / "config.json").is_file() or not weights.is_file():
        raise EmorigError(f"{src}: expected config.json and model.safetensors")
    state = safetensors.torch.load_file(str(weights))
    with safetensors.safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    small = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    dst.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst / "model.safetensors", "wb") as f:
        f.write(safetensors.torch.save(small, metadata=metadata))
    for extra in ("config.json", "training.json"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, dst / extra)
    return dst


def main(argv: list[str]) -> None:  # pragma: no cover - a maintenance tool
    if len(argv) == 2:
        print(pack(argv[0], argv[1]))
    else:
        sys.exit("usage: python -m emorig.weights.pack SRC_MODEL_FOLDER DST_FOLDER")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

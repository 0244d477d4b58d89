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
    if len(argv) == 3 and argv[0] == "--from-checkpoint":
        print(model_from_checkpoint(argv[1], argv[2]))
    elif len(argv) == 2:
        print(pack(argv[0], argv[1]))
    else:
        sys.exit(
            "usage: python -m emorig.weights.pack SRC_MODEL_FOLDER DST_FOLDER\n"
            "       python -m emorig.weights.pack --from-checkpoint CHECKPOINT DST_FOLDER"
        )


def model_from_checkpoint(checkpoint: str | Path, dst: str | Path) -> Path:
    """The raw (not EMA) diffusion model of a ``train_rig`` checkpoint as a model folder."""
    from emorig.diffusion.pretrained import save_pretrained
    from emorig.train.checkpoint import load_checkpoint
    from emorig.train.dataset import CONDITION_NAMES, read_manifest
    from emorig.train.diffusion import RigTrainConfig, build_rig

    state = load_checkpoint(checkpoint)
    cfg = RigTrainConfig.from_dict(state["config"])
    model = build_rig(cfg, tuple(CONDITION_NAMES), read_manifest(cfg.data).settings.size)
    model.load_state_dict(state["model"])
    return save_pretrained(model, dst)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

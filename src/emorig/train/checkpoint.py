"""Training checkpoints: atomic, self-describing, resumable.

A checkpoint is ``checkpoint-{step:08d}.pt`` holding plain data only (tensors, numbers,
strings, lists, dicts), so it loads with ``torch.load(weights_only=True)``: the model and
optimizer state dicts, the step, the run's config as JSON text and the RNG states. A crash
while writing leaves the previous checkpoint intact (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from emorig.errors import EmorigError
from emorig.io.atomic import atomic_write

FORMAT = "emorig-checkpoint/1"
_NAME = re.compile(r"^checkpoint-(\d{8})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    """torch's global generators (dropout and the like draw from them; emorig's own sampling
    uses explicit generators seeded by step, which need no saving)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: str | os.PathLike[str],
    step: int,
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``state`` (model/optimizer state dicts, counters, generators) with the run's
    ``config`` and the global RNG states; keep the ``keep`` newest checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "step": step,
        "config": json.dumps(config, sort_keys=True),
        "rng": rng_state(),
        **state,
    }
    path = checkpoint_path(folder, step)
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``config`` parsed back to a dict).

    Only plain data is unpickled (``weights_only=True``)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise EmorigError(f"{path}: checkpoint not found") from None
    except Exception as err:  # a truncated or foreign file
        raise EmorigError(f"{path}: not a readable emorig checkpoint ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EmorigError(f"{path}: not an emorig checkpoint (format {FORMAT} expected)")
    payload["config"] = json.loads(payload["config"])
    return payload


def resume_run(out: str | os.PathLike[str], cfg: Any, model, optimizer) -> dict[str, Any] | None:
    """Restore ``model`` and ``optimizer`` from the newest checkpoint in ``out``.

    ``cfg`` is the run's frozen config dataclass (with ``steps`` and ``from_dict``); the
    checkpoint's must equal it except for ``steps`` (a run may be extended).

    Returns:
        The checkpoint's payload (``step`` and whatever else was saved), or None when ``out``
        holds no checkpoint.
    """
    import dataclasses

    path = latest_checkpoint(out)
    if path is None:
        return None
    state = load_checkpoint(path)
    saved = type(cfg).from_dict(state["config"])
    if dataclasses.replace(saved, steps=cfg.steps) != cfg:
        raise EmorigError(
            f"{path}: belongs to a run with another configuration; use a new --out folder or "
            "the same settings"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state

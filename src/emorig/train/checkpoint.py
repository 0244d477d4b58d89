"""Training checkpoints: atomic, self-describing, resumable.

A checkpoint is ``checkpoint-{step:08d}.pt`` holding plain data only (tensors, numbers,
strings, lists, dicts), so it loads with ``torch.load(weights_only=True)``: the model and
optimizer state dicts, the step, the run's config and its identity as JSON text and the
global RNG states. A crash while writing leaves the previous checkpoint intact (temporary
file, fsync, rename).

Resuming (:func:`resume_run`) is exact and forgiving:

* it takes the newest *intact* checkpoint: a truncated or foreign newest file is reported
  (:class:`CheckpointFallbackWarning`), renamed ``*.damaged`` and the previous one is used;
* it restores the global RNG states (dropout draws from them), so a resumed run equals an
  uninterrupted one bit for bit; a new run seeds them from the config's ``seed``;
* it recognises a run by content (:func:`run_identity`): settings by value, paths resolved,
  a prepared data folder by its manifest's fingerprint, the run folder itself not at all, so
  ``./album/prepared`` and ``album/prepared`` are one run and a copied or renamed run folder
  resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emorig.data.dataset import MANIFEST_NAME, MEAN_SHAPE_NAME
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


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint of a run could not be read; an older one was used."""


# ---------------------------------------------------------------------------------------------
# Global RNG state


def rng_state() -> dict[str, Any]:
    """torch's global generators (dropout and the like draw from them; emorig's own sampling
    uses explicit generators seeded by step, which need no saving)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA devices beyond those saved, or saved
    beyond those present, are left alone)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def _global_seed(seed: int, step: int, rank: int) -> int:
    # distinct from the model's initialisation seed and from the per-step generators
    return ((seed * 1_000_003 + step) * 131 + rank) * 7 + 104_729


def seed_rng(seed: int, step: int = 0, rank: int = 0) -> None:
    """Seed the global generators (CPU and every CUDA device) for a run's ``step`` on
    process ``rank``: a new run (step 0) is then reproducible from its config alone."""
    torch.manual_seed(_global_seed(seed, step, rank))


# ---------------------------------------------------------------------------------------------
# Run identity

#: Config fields that never identify a run: the run folder (a copied or renamed run folder
#: is the same run) and the step count (a run may be extended).
NOT_IDENTITY = ("out", "steps")

_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def data_fingerprint(folder: str | os.PathLike[str]) -> str | None:
    """``"manifest:<sha256>"`` of a prepared folder (None when ``folder`` is not one).

    The manifest lists every item (source, shard, slot, per-item info) and the preparation
    settings (size, reconstructor, head, buffer dtype, mean shape), so it names the data a run
    trains on independently of where the folder lies or how its path is spelt; a copy of the
    folder has the same fingerprint. Hashing the shards themselves (gigabytes) would cost
    minutes at every start, and file times change with every copy. The manifest is hashed as
    canonical JSON (indentation does not matter) together with the album mean shape's file,
    which the manifest only names. Cached by the manifest's path, size and mtime.
    """
    root = Path(folder).expanduser()
    manifest = root / MANIFEST_NAME
    try:
        stat = manifest.stat()
    except OSError:
        return None
    key = (str(manifest.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        try:
            content = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8"))
        mean_shape = root / MEAN_SHAPE_NAME
        if mean_shape.is_file():
            digest.update(mean_shape.read_bytes())
        _FINGERPRINTS[key] = f"manifest:{digest.hexdigest()}"
    return _FINGERPRINTS[key]


def _path_identity(value: Any) -> Any:
    """A path-valued setting as content: a prepared folder's fingerprint, an existing path
    resolved, ``NAME:PATH`` specs with their path resolved; names (``fer``, ``builtin``) and
    missing paths as given."""
    if not isinstance(value, str) or not value:
        return value
    fingerprint = data_fingerprint(value)
    if fingerprint is not None:
        return fingerprint
    path = Path(value).expanduser()
    if path.exists():
        return str(path.resolve())
    prefix, sep, rest = value.partition(":")
    if sep and rest and Path(rest).expanduser().exists():
        return f"{prefix}:{Path(rest).expanduser().resolve()}"
    return value


def run_identity(cfg: Any) -> dict[str, Any]:
    """What makes two configs the same run: every setting by value except
    :data:`NOT_IDENTITY`; the fields the config class lists in ``PATHS`` compared as content
    (:func:`_path_identity`), so spelling (``./x`` vs ``x``) and the run folder's name or
    place do not matter. Plain JSON data (tuples become lists)."""
    values = json.loads(json.dumps(cfg.to_dict(), sort_keys=True))
    for name in NOT_IDENTITY:
        values.pop(name, None)
    for name in getattr(type(cfg), "PATHS", ()):
        if name in values:
            values[name] = _path_identity(values[name])
    return values


def _saved_identity(state: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The identity of the run that wrote ``state``: as stored at save time (paths resolved
    in that run's working directory), completed from its config read with today's defaults
    (fields added since; checkpoints written before identities were stored)."""
    identity = run_identity(type(cfg).from_dict(state["config"]))
    if "identity" in state:
        identity.update(json.loads(state["identity"]))
    return identity


# ---------------------------------------------------------------------------------------------
# Writing and reading


def save_checkpoint(
    folder: str | os.PathLike[str],
    step: int,
    state: dict[str, Any],
    config: Any,
    keep: int = 2,
    scaler=None,
) -> Path:
    """Write ``state`` (model/optimizer state dicts, counters, generators) with the run's
    ``config``, the global RNG states and a mixed-precision ``scaler``'s state (fp16's loss
    scale, which :func:`resume_run` restores); keep the ``keep`` newest checkpoints.

    ``config`` is the run's config dataclass (with ``to_dict``; its :func:`run_identity` is
    stored too, so the run is recognised wherever its files move) or a plain dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        extra["identity"] = json.dumps(run_identity(config), sort_keys=True)
        config = config.to_dict()
    if scaler is not None:
        extra["scaler"] = scaler.state_dict()
    payload = {
        "format": FORMAT,
        "step": step,
        "config": json.dumps(config, sort_keys=True),
        "rng": rng_state(),
        **extra,
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
    try:
        payload["config"] = json.loads(payload["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise EmorigError(f"{path}: not a readable emorig checkpoint (config: {err})") from None
    return payload


# ---------------------------------------------------------------------------------------------
# Resuming


def _newest_intact(
    found: list[tuple[int, Path]],
) -> tuple[dict[str, Any], Path, list[tuple[Path, str]]]:
    """The newest checkpoint that reads, its path and the ``(path, why)`` of the newer ones
    that did not; EmorigError when none reads."""
    damaged: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        try:
            return load_checkpoint(path), path, damaged
        except EmorigError as err:
            damaged.append((path, str(err)))
    folder = found[0][1].parent
    raise EmorigError(
        f"{folder}: no intact checkpoint to resume from ({len(damaged)} damaged; newest: "
        f"{damaged[0][1]}); move them away to start over, or use a new --out folder"
    )


def _set_aside(damaged: list[tuple[Path, str]], used: Path, say: Callable[[str], None]) -> None:
    """Report the fallback in one line and rename the damaged files ``*.damaged`` (kept for
    inspection, and out of the way of the checkpoints the resumed run writes and prunes)."""
    for path, _ in damaged:
        with contextlib.suppress(OSError):  # another process of the run moved it first
            os.replace(path, path.with_name(path.name + ".damaged"))
    names = ", ".join(p.name for p, _ in damaged)
    why = damaged[0][1].splitlines()[0].removeprefix(f"{damaged[0][0]}: ")
    if len(why) > 160:
        why = why[:157] + "..."
    say(
        f"{used.parent}: {names} cannot be read ({why}); resuming from {used.name} instead "
        "(the damaged file is kept with the suffix .damaged)"
    )


def _warn(message: str) -> None:
    warnings.warn(message, CheckpointFallbackWarning, stacklevel=4)


def resume_run(
    out: str | os.PathLike[str],
    cfg: Any,
    model,
    optimizer,
    *,
    rank: int = 0,
    scaler=None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Restore ``model``, ``optimizer`` (and a mixed-precision ``scaler``) and the global RNG
    states from the newest intact checkpoint in ``out``; seed the RNGs for a new run.

    ``cfg`` is the run's frozen config dataclass (with ``to_dict``, ``from_dict``, ``seed``
    and optionally ``PATHS``); the checkpoint's run identity (:func:`run_identity`) must equal
    its. A newest checkpoint that cannot be read is reported through ``say`` (default: a
    :class:`CheckpointFallbackWarning`) and the previous one used. Process ``rank`` > 0 gets
    RNG states seeded by ``(seed, step, rank)``: checkpoints hold the main process's only.

    Returns:
        The checkpoint's payload (``step`` and whatever else was saved), or None when ``out``
        holds no checkpoint.
    """
    seed = int(getattr(cfg, "seed", 0))
    found = list_checkpoints(out)
    if not found:
        seed_rng(seed, 0, rank)
        return None
    state, path, damaged = _newest_intact(found)
    saved, current = _saved_identity(state, cfg), run_identity(cfg)
    if saved != current:
        differ = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        raise EmorigError(
            f"{path}: belongs to a run with another configuration; use a new --out folder or "
            f"the same settings (differing: {', '.join(differ)})"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if rank == 0 and "rng" in state:
        set_rng_state(state["rng"])
    else:
        seed_rng(seed, int(state["step"]), rank)
    if damaged:
        _set_aside(damaged, path, say or _warn)
    if rank == 0:
        trim_logs(out, int(state["step"]))
    return state


#: The training loops' logs: one JSON record with a ``step`` per line.
LOG_NAMES = ("losses.jsonl", "log.jsonl")


def append_log(out: str | os.PathLike[str], record: dict[str, Any], name: str = LOG_NAMES[0]):
    """Append ``record`` (with its ``step``) as one JSON line to the run's log ``name``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / name, "a") as f:
        f.write(json.dumps(record) + "\n")


class RunConfig:
    """What every training config dataclass shares: ``to_dict`` for checkpoints and
    ``from_dict`` that ignores fields an older or newer version wrote."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


def adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam with PyTorch's fused kernel (one pass over all parameters instead of a Python loop
    over them: 6x faster updates of a 125M-parameter model on a CPU), when every parameter
    lives on a device the kernel supports (CPU, CUDA); otherwise the default implementation."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def optimise(accelerator, optimizer, loss: Tensor, step: int, params=None, grad_clip: float = 0):
    """One optimiser update from ``loss``: refused when the loss is not finite, gradients
    clipped to ``grad_clip`` (0: off) over ``params``."""
    if not torch.isfinite(loss):
        raise EmorigError(f"step {step}: the loss is {float(loss)}; lower --lr or check data")
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if grad_clip:
        accelerator.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def trim_logs(out: str | os.PathLike[str], step: int) -> None:
    """Drop log records after ``step`` (written after the checkpoint a run resumes from, and
    written again as the steps re-run), so each step is logged once."""
    for name in LOG_NAMES:
        path = Path(out) / name
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if _logged_step(line) <= step]
        if len(kept) != len(lines):
            with atomic_write(path, "w") as f:
                f.write("".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a line torn by the interruption goes too

"""Flags more than one ``emorig`` command takes, declared once, and the step from parsed flags
to the library's config dataclasses.

Every ``add_*`` function adds one flag (or a fixed group of them) to an argparse parser or
argument group and returns nothing. Choices come from the library's registries, so a new
reconstructor, head, edit mode, preset or stage appears here by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from emorig.errors import EmorigError

__all__ = [
    "EMOTION_PREDICTORS",
    "MIXED_PRECISION",
    "add_all_faces",
    "add_assets",
    "add_backbone",
    "add_ddim_steps",
    "add_device",
    "add_emotion_predictor",
    "add_head",
    "add_mixed_precision",
    "add_photometric",
    "add_reconstructor",
    "add_seed",
    "add_training_run",
    "add_weights",
    "camera",
    "config_from_args",
    "ddim_steps",
    "device",
    "emotion_names",
    "finite_float",
    "float_in",
    "image_size",
    "int_in",
    "non_negative_float",
    "non_negative_int",
    "out_dir",
    "out_file",
    "parse_assignments",
    "positive_float",
    "positive_int",
    "seed",
]

T = TypeVar("T")
#: What the ``add_*`` functions add to: a parser or an argument group.
Parser = argparse.ArgumentParser | argparse._ArgumentGroup

#: Accelerate's mixed-precision modes.
MIXED_PRECISION = ("no", "fp16", "bf16")
#: How emotion edits find and judge expressions (:func:`emorig.edit.emotion.emotion_predictor`).
EMOTION_PREDICTORS = ("auto", "codes", "rendered")


# --- flag values: argparse ``type=`` converters ------------------------------------------
#
# Each one turns a flag's text into its value or raises ``argparse.ArgumentTypeError`` with
# one line saying what is allowed; argparse prints it as ``argument --FLAG: ...`` with the
# usage line and exits with status 2. Every command's numeric, size, device and output flags
# use these, so a bad value never reaches the library.

#: The largest image side a flag may ask for (sizes, crops, renders).
MAX_IMAGE_SIZE = 4096
#: The smallest: aligned crops need at least 16 pixels.
MIN_IMAGE_SIZE = 16
#: A ceiling for counts (steps, batch sizes, items): far above any real run, below overflow.
MAX_COUNT = 10**9


def _fail(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise _fail(f"{text!r}: expected {what}") from None
    if kind is float and not math.isfinite(value):
        raise _fail(f"{text!r}: expected a finite number")
    return value


def int_in(lo: int, hi: int, what: str = "an integer") -> Callable[[str], int]:
    """A converter to an integer in ``[lo, hi]``."""

    def convert(text: str) -> int:
        value = _number(text, int, what)
        if not lo <= value <= hi:
            raise _fail(f"{value}: choose {what} from {lo} to {hi}")
        return value

    convert.__name__ = "int_in"
    return convert


def float_in(
    lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """A converter to a finite float in ``[lo, hi]`` (``(lo`` / ``hi)`` when open)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def convert(text: str) -> float:
        value = _number(text, float, "a number")
        low_ok = value > lo if lo_open else value >= lo
        high_ok = value < hi if hi_open else value <= hi
        if not (low_ok and high_ok):
            raise _fail(f"{value:g}: choose a value in {interval}")
        return value

    convert.__name__ = "float_in"
    return convert


#: An integer of at least 1 (steps, batch sizes, counts).
positive_int = int_in(1, MAX_COUNT, "a whole number")
positive_int.__name__ = "positive_int"
#: An integer of at least 0 (0 usually means off).
non_negative_int = int_in(0, MAX_COUNT, "a whole number")
non_negative_int.__name__ = "non_negative_int"
#: A random seed numpy and torch both take.
seed = int_in(0, 2**32 - 1, "a seed")
seed.__name__ = "seed"
#: An image side in pixels.
image_size = int_in(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, "an image size in pixels")
image_size.__name__ = "image_size"


def finite_float(text: str) -> float:
    """Any finite number."""
    return _number(text, float, "a number")


def positive_float(text: str) -> float:
    """A finite number above 0 (learning rates, scales)."""
    value = finite_float(text)
    if value <= 0:
        raise _fail(f"{value:g}: choose a value above 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (weights, exponents; 0 usually means off)."""
    value = finite_float(text)
    if value < 0:
        raise _fail(f"{value:g}: choose a value of at least 0")
    return value


def camera(text: str) -> tuple[float, float, float]:
    """``s,tx,ty``: DECA's orthographic camera (scale above 0)."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise _fail(f"{text!r}: give three numbers s,tx,ty")
    if values[0] <= 0:
        raise _fail(f"{text!r}: the scale s must be above 0")
    return values  # type: ignore[return-value]


def ddim_steps(text: str) -> str:
    """A DDIM respacing: ``ddimN`` or section counts ``N,N,...`` (each 1 to 1000)."""
    body = text[len("ddim") :] if text.startswith("ddim") else text
    try:
        counts = [int(c) for c in body.split(",")]
    except ValueError:
        counts = []
    if not counts or not all(1 <= c <= 1000 for c in counts):
        raise _fail(f"{text!r}: expected ddimN or section counts N,N,... (each 1 to 1000)")
    if text.startswith("ddim") and len(counts) != 1:
        raise _fail(f"{text!r}: expected ddimN with N from 1 to 1000")
    from emorig.diffusion.schedule import space_timesteps

    try:  # the schedule's own rule (e.g. ddimN needs a whole-number stride over 1000 steps)
        space_timesteps(1000, text)
    except ValueError as err:
        raise _fail(f"{text!r}: {err}") from None
    return text


def device(text: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise _fail(f"{text!r}: unknown device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "built for CPU" if torch.version.cuda is None else "no GPU visible"
            raise _fail(
                f"{text}: CUDA is not available on this machine (torch {torch.__version__} {built})"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise _fail(f"{text}: this machine has {count} CUDA device(s) (cuda:0..{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise _fail(f"{text}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise _fail(f"{text}: not a device emorig runs on (cpu, cuda, cuda:N, mps)")
    return text


def _file_on_the_way(path: Path) -> Path | None:
    """The first existing non-folder among ``path``'s parents (None if there is none)."""
    for parent in reversed(path.parents):
        if os.path.lexists(parent) and not parent.is_dir():
            return parent
    return None


def out_dir(text: str) -> str:
    """An output folder: absent (it is created) or a folder; never an existing file."""
    path = Path(text)
    if not text:
        raise _fail("expected a folder name")
    if os.path.lexists(path) and not path.is_dir():
        raise _fail(f"{text}: is a file, not a folder (name a new or existing folder)")
    blocker = _file_on_the_way(path)
    if blocker is not None:
        raise _fail(f"{text}: {blocker} is a file, not a folder")
    return text


def out_file(text: str) -> str:
    """An output file: absent or a file (it is replaced); never a folder."""
    path = Path(text)
    if not text or path.is_dir():
        raise _fail(f"{text!r}: is a folder; name a file")
    blocker = _file_on_the_way(path)
    if blocker is not None:
        raise _fail(f"{text}: {blocker} is a file, not a folder")
    return text


# --- where and with what ----------------------------------------------------------------------


def add_device(p: Parser, *, default: str | None = "cpu", help: str | None = None) -> None:
    """``--device``: the torch device (``cpu`` unless ``default`` says otherwise)."""
    p.add_argument(
        "--device", default=default, type=device, help=help or "torch device (cpu, cuda, ...)"
    )


def add_assets(p: Parser) -> None:
    """``--assets DIR``: the folder of licensed files."""
    p.add_argument("--assets", metavar="DIR", help="asset folder (default: $EMORIG_HOME)")


def add_head(p: Parser, *, follow_weights: bool = False) -> None:
    """``--head``: one of :data:`emorig.flame.heads.HEADS`; ``builtin`` by default, or with
    ``follow_weights`` None: the head of the reconstructor's weights (see
    :func:`emorig.cli.shared.resolve_head`)."""
    from emorig.flame.heads import HEADS

    default = None if follow_weights else "builtin"
    help = (
        "head of the codes (default: the weights' head, else builtin)"
        if follow_weights
        else "the built-in synthetic head (default) or a FLAME release from --assets"
    )
    p.add_argument("--head", default=default, choices=HEADS, help=help)


def add_reconstructor(
    p: Parser,
    flag: str = "--model",
    *,
    default: str | None = None,
    required: bool = False,
    help: str | None = None,
) -> None:
    """A reconstructor flag: one of :func:`emorig.reconstruct.encoders.encoder_names`
    (without ``help``, the help lists each one's summary)."""
    from emorig.reconstruct.encoders import encoder_names, encoder_spec

    if help is None:
        help = "; ".join(f"{name}: {encoder_spec(name).summary}" for name in encoder_names())
    p.add_argument(flag, default=default, required=required, choices=encoder_names(), help=help)


def add_weights(
    p: Parser,
    flag: str = "--weights",
    help: str = "model folder/file instead of the official asset",
) -> None:
    """A reconstructor's weights (None: the official asset or the shipped weights)."""
    p.add_argument(flag, help=help)


def add_photometric(p: Parser) -> None:
    """``--no-photometric`` (dest ``photometric``, True unless given)."""
    p.add_argument(
        "--no-photometric",
        dest="photometric",
        action="store_false",
        help="fit: landmarks only (no albedo/light fit)",
    )


def add_all_faces(p: Parser) -> None:
    """``--all-faces``: every face of a photo, not only the largest."""
    p.add_argument(
        "--all-faces", action="store_true", help="keep every face (default: the largest)"
    )


# --- diffusion sampling and emotions ---------------------------------------------------------


def add_ddim_steps(p: Parser) -> None:
    """``--steps``: the DDIM respacing of sampling (``ddim20``)."""
    p.add_argument("--steps", default="ddim20", type=ddim_steps, help="DDIM respacing (ddim20)")


def add_emotion_predictor(p: Parser, help: str) -> None:
    """``--emotion-predictor``: one of :data:`EMOTION_PREDICTORS` (``auto``)."""
    p.add_argument("--emotion-predictor", default="auto", choices=EMOTION_PREDICTORS, help=help)


def emotion_names() -> str:
    """The emotion classes, comma-separated, for help texts."""
    from emorig.types import EMOTION_CLASSES

    return ", ".join(EMOTION_CLASSES)


# --- training ---------------------------------------------------------------------------------


def add_backbone(p: Parser, *, width_dest: str = "width") -> None:
    """``--backbone`` (:data:`emorig.reconstruct.backbones.BACKBONES`) and ``--width`` (its stem
    width, stored as ``width_dest``)."""
    from emorig.reconstruct.backbones import BACKBONES

    p.add_argument("--backbone", default=BACKBONES[0], choices=BACKBONES)
    p.add_argument(
        "--width",
        dest=width_dest,
        metavar="WIDTH",
        type=int_in(1, 1024, "a width"),
        default=64,
        help="backbone stem width (64 = standard)",
    )


def add_mixed_precision(p: Parser) -> None:
    """``--mixed-precision``: one of :data:`MIXED_PRECISION` (``no``)."""
    p.add_argument(
        "--mixed-precision",
        default="no",
        choices=MIXED_PRECISION,
        help="Accelerate's mixed precision (no)",
    )


def add_seed(p: Parser, help: str = "random seed", *, default: int = 0) -> None:
    """``--seed`` (``help`` says what it seeds; the default is appended)."""
    p.add_argument("--seed", type=seed, default=default, help=f"{help} ({default})")


def add_training_run(p: Parser, *, save_every: int = 500, sample_every: int | None) -> None:
    """The flags every training command ends with: ``--save-every``, ``--sample-every``
    (unless None), ``--mixed-precision``, ``--seed`` and ``--cpu``."""
    p.add_argument(
        "--save-every",
        type=positive_int,
        default=save_every,
        help=f"steps between checkpoints ({save_every})",
    )
    if sample_every is not None:
        p.add_argument(
            "--sample-every",
            type=positive_int,
            default=sample_every,
            help=f"steps between samples ({sample_every})",
        )
    add_mixed_precision(p)
    add_seed(p)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")


# --- flags -> configs -------------------------------------------------------------------------


def config_from_args(cls: Callable[..., T], args: argparse.Namespace | Any, **overrides: Any) -> T:
    """``cls(...)`` (a dataclass) from every field of ``cls`` that ``args`` holds (a flag's dest
    is the field's name), then ``overrides`` (for values that need converting first); fields
    that are in neither keep their defaults. An override naming no field is a ``TypeError``."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    given = vars(args)
    values = {name: given[name] for name in names if name in given}
    values.update(overrides)
    return cls(**values)


def parse_assignments(
    items: Iterable[str] | None, flag: str, convert: Callable[[str], Any], expected: str
) -> dict[str, Any]:
    """``["a=1", "b=2"]`` -> ``{"a": convert("1"), "b": convert("2")}``; a value ``convert``
    refuses (``ValueError``) is an :class:`EmorigError` saying ``flag ITEM: expected ...``."""
    values: dict[str, Any] = {}
    for item in items or []:
        name, _, value = item.partition("=")
        try:
            values[name] = convert(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise EmorigError(f"{flag} {item}: expected {expected}") from None
    return values

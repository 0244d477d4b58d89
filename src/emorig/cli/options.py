"""Flags more than one ``emorig`` command takes, declared once, and the step from parsed flags
to the library's config dataclasses.

Every ``add_*`` function adds one flag (or a fixed group of them) to an argparse parser or
argument group and returns nothing. Choices come from the library's registries, so a new
reconstructor, head, edit mode, preset or stage appears here by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
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
    "config_from_args",
    "emotion_names",
    "parse_assignments",
]

T = TypeVar("T")
#: What the ``add_*`` functions add to: a parser or an argument group.
Parser = argparse.ArgumentParser | argparse._ArgumentGroup

#: Accelerate's mixed-precision modes.
MIXED_PRECISION = ("no", "fp16", "bf16")
#: How emotion edits find and judge expressions (:func:`emorig.edit.emotion.emotion_predictor`).
EMOTION_PREDICTORS = ("auto", "codes", "rendered")


# --- where and with what ----------------------------------------------------------------------


def add_device(p: Parser, *, default: str | None = "cpu", help: str | None = None) -> None:
    """``--device``: the torch device (``cpu`` unless ``default`` says otherwise)."""
    p.add_argument("--device", default=default, help=help or "torch device (cpu, cuda, ...)")


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
    p.add_argument("--steps", default="ddim20", help="DDIM respacing (ddim20)")


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
        type=int,
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
    p.add_argument("--seed", type=int, default=default, help=f"{help} ({default})")


def add_training_run(p: Parser, *, save_every: int = 500, sample_every: int | None) -> None:
    """The flags every training command ends with: ``--save-every``, ``--sample-every``
    (unless None), ``--mixed-precision``, ``--seed`` and ``--cpu``."""
    p.add_argument(
        "--save-every",
        type=int,
        default=save_every,
        help=f"steps between checkpoints ({save_every})",
    )
    if sample_every is not None:
        p.add_argument(
            "--sample-every",
            type=int,
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
        except ValueError:
            raise EmorigError(f"{flag} {item}: expected {expected}") from None
    return values

"""The reconstructors by name: DECA, EMOCA, weight-free fitting and the built-in head's
encoder, each an :class:`~emorig.reconstruct.encoders.base.EncoderSpec` building a
:class:`~emorig.reconstruct.encoders.base.FaceEncoder`.

A new reconstructor is one module defining an ``EncoderSpec`` and one line in
:data:`ENCODERS` (or a :func:`register_encoder` call from a user's code); the CLI's
``--model`` choices, ``prepare``, ``edit`` and ``evaluate`` read this table.
"""

from __future__ import annotations

from emorig.errors import EmorigError
from emorig.reconstruct.encoders.base import EncoderSpec, FaceEncoder, LoadedWeights
from emorig.reconstruct.encoders.fitting import FIT
from emorig.reconstruct.encoders.network import BUILTIN, DECA, EMOCA

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "FaceEncoder",
    "LoadedWeights",
    "encoder_names",
    "encoder_spec",
    "register_encoder",
]

#: Every reconstructor by name.
ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in (DECA, EMOCA, FIT, BUILTIN)}


def register_encoder(spec: EncoderSpec) -> None:
    """Add ``spec`` to :data:`ENCODERS` (a name already taken is refused)."""
    if spec.name in ENCODERS:
        raise EmorigError(f"reconstructor '{spec.name}' exists already")
    ENCODERS[spec.name] = spec


def encoder_names() -> tuple[str, ...]:
    """Every reconstructor's name (the ``--model`` choices)."""
    return tuple(ENCODERS)


def encoder_spec(name: str) -> EncoderSpec:
    """The reconstructor called ``name``; an :class:`EmorigError` naming the choices otherwise."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise EmorigError(
            f"unknown reconstructor '{name}'; choose {', '.join(encoder_names())}"
        ) from None

"""What a face encoder is: the protocol every reconstructor follows and its registry entry."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from emorig.types import FaceCode

__all__ = ["EncoderSpec", "FaceEncoder", "LoadedWeights"]

#: ``(network or None, the head it was trained for or None)``.
LoadedWeights = tuple[object | None, str | None]


class FaceEncoder(Protocol):
    """Turns DECA crops into FLAME codes.

    ``encode(images, landmarks)``: ``images`` (B, 3, 224, 224) RGB in [0, 1] and
    ``landmarks`` (B, 68, 2) detected points in NDC of the crops (iBUG order) give the codes
    (B, ...) and the detail displacement maps (B, 1, 256, 256), or None when the method has no
    detail model. Runs on the device of ``images``.
    """

    def encode(self, images: Tensor, landmarks: Tensor) -> tuple[FaceCode, Tensor | None]: ...


@dataclass(frozen=True)
class EncoderSpec:
    """One registered reconstructor.

    Attributes:
        name: its name on the command line (``--model NAME``).
        summary: one line for ``--help``.
        load: ``load(weights, assets)``: the network from a user's file or folder (None: the
            official file in the asset folder, or shipped weights) and the head it was
            trained for; ``(None, None)`` for weight-free methods.
        build: ``build(head, renderer, network, photometric)``: the :class:`FaceEncoder` for
            the head's :class:`~emorig.flame.data.HeadAssets`, on its renderer's device.
    """

    name: str
    summary: str
    load: Callable[[str | os.PathLike[str] | None, str | os.PathLike[str] | None], LoadedWeights]
    build: Callable[..., FaceEncoder]

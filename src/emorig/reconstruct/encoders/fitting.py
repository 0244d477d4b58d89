"""The weight-free encoder: landmark fitting, then albedo and light fitted to the pixels."""

from __future__ import annotations

from torch import Tensor

from emorig.reconstruct.encoders.base import EncoderSpec, LoadedWeights
from emorig.types import FaceCode

__all__ = ["FIT", "FittingEncoder"]


class FittingEncoder:
    """Fits the renderer's head to the detected landmarks (and, with ``photometric``, the
    albedo and light to the pixels) with :func:`emorig.reconstruct.fitting.fit`."""

    def __init__(self, renderer, photometric: bool = True):
        self.renderer, self.photometric = renderer, photometric

    def encode(self, images: Tensor, landmarks: Tensor) -> tuple[FaceCode, Tensor | None]:
        from emorig.reconstruct.fitting import fit, fit_landmarks

        if self.photometric:
            return fit(self.renderer, images, landmarks, photometric=True).code, None
        return fit_landmarks(self.renderer.flame, landmarks).code, None


def _no_weights(weights, assets) -> LoadedWeights:
    return None, None


def _build(head, renderer, network, photometric: bool = True) -> FittingEncoder:
    return FittingEncoder(renderer, photometric)


FIT = EncoderSpec(
    "fit",
    "no weights: fit the head to the landmarks, then albedo and light to the pixels",
    _no_weights,
    _build,
)

"""The interface every emotion recogniser follows."""

from __future__ import annotations

from torch import Tensor, nn

from emorig.types import EMOTION_CLASSES, EmotionOutput


class EmotionRecognizer(nn.Module):
    """Images -> :class:`EmotionOutput`.

    Subclasses set ``name``, ``feature_dim``, ``input_size`` (side of the square input they
    resize to) and ``predicts_va``, and implement :meth:`forward`, which takes (B, 3, H, W) RGB
    in [0, 1] face crops (DECA-style 224 crops by convention) and handles its own resizing and
    normalisation.
    """

    name: str = "emotion recogniser"
    classes: tuple[str, ...] = EMOTION_CLASSES
    feature_dim: int
    input_size: int
    predicts_va: bool

    def forward(self, images: Tensor) -> EmotionOutput:  # pragma: no cover - interface
        raise NotImplementedError

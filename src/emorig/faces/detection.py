"""The types every face backend shares: a detected box, the detector, landmark and identity
protocols, and :class:`FaceBackend`, what one backend provides.

Images are (H, W, 3) uint8 RGB arrays; coordinates are continuous pixels of that image
(pixel i spans [i, i + 1), see docs/conventions.md). The backends themselves
(:mod:`emorig.faces.dlib_backend`, :mod:`emorig.faces.mediapipe_backend`) import these, and
:mod:`emorig.faces.backends` builds one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Detection", "FaceBackend", "FaceDetector", "IdentityEmbedder", "LandmarkDetector"]


@dataclass(frozen=True)
class Detection:
    """A face box: ``(x0, y0, x1, y1)`` continuous pixels, and the detector's confidence."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    def scaled(self, factor: float) -> Detection:
        return Detection(tuple(v * factor for v in self.box), self.score)  # type: ignore[arg-type]


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in ``image``, most confident first."""
        ...


class LandmarkDetector(Protocol):
    name: str
    n_points: int

    def landmarks(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """(n_points, 2) landmarks of the face in ``detection``, pixel coordinates."""
        ...


class IdentityEmbedder(Protocol):
    name: str
    dim: int

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        """(dim,) identity descriptor of the face with these iBUG-68 landmarks."""
        ...


@dataclass(frozen=True)
class FaceBackend:
    """What one backend provides; parts it lacks are None."""

    name: str
    detector: FaceDetector | None
    landmarks68: LandmarkDetector | None
    embedder: IdentityEmbedder | None
    dense: LandmarkDetector | None = None

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

__all__ = [
    "Detection",
    "FaceBackend",
    "FaceDetector",
    "IdentityEmbedder",
    "LandmarkDetector",
    "overlap",
    "suppress_overlaps",
]


@dataclass(frozen=True)
class Detection:
    """A face box: ``(x0, y0, x1, y1)`` continuous pixels, the detector's confidence (on that
    detector's own scale: dlib's HOG margin, about 0.3 to 3; MediaPipe's probability, 0 to 1)
    and which detector found it (``"dlib"``, ``"mediapipe"``; empty when unknown)."""

    box: tuple[float, float, float, float]
    score: float
    detector: str = ""

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)

    def scaled(self, factor: float) -> Detection:
        box = tuple(v * factor for v in self.box)
        return Detection(box, self.score, self.detector)  # type: ignore[arg-type]

    @property
    def side(self) -> float:
        """The box's mean side, in pixels."""
        x0, y0, x1, y1 = self.box
        return ((x1 - x0) + (y1 - y0)) / 2


def overlap(a: Detection, b: Detection) -> float:
    """Area shared by two boxes over the smaller box's area (1 when one holds the other)."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    w = min(ax1, bx1) - max(ax0, bx0)
    h = min(ay1, by1) - max(ay0, by0)
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / max(min(a.area, b.area), 1e-9)


#: Two boxes sharing more than this part of the smaller one are the same face: boxes of one
#: face from two detectors or two tiles share 0.7 to 1; neighbours in a group photo under 0.2.
SAME_FACE = 0.4


def suppress_overlaps(
    detections: list[Detection], keep: list[Detection] | None = None
) -> list[Detection]:
    """``keep`` (unchanged, first) then ``detections`` most confident first, each dropped when
    it overlaps (:func:`overlap` > :data:`SAME_FACE`) a box already taken."""
    taken = list(keep or [])
    for d in sorted(detections, key=lambda d: -d.score):
        if all(overlap(d, t) <= SAME_FACE for t in taken):
            taken.append(d)
    return taken


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

"""Pluggable face backends: a detector, a landmark detector and an identity embedder.

Every backend is chosen by name, explicitly (``load_backend("dlib")``); nothing falls back to
another backend on its own. Images are (H, W, 3) uint8 RGB arrays; coordinates are continuous
pixels of that image (pixel i spans [i, i + 1), see docs/conventions.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from emorig.errors import EmorigError


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


_FACTORIES: dict[str, Callable[..., FaceBackend]] = {}


def register_backend(name: str, factory: Callable[..., FaceBackend]) -> None:
    """Make a backend loadable by name (for third-party detectors)."""
    _FACTORIES[name] = factory


def backend_names() -> tuple[str, ...]:
    _register_builtin()
    return tuple(sorted(_FACTORIES))


def load_backend(name: str, **options: float) -> FaceBackend:
    """Load the backend called ``name`` (``"dlib"``, ``"mediapipe"``, or a registered one);
    ``options`` go to its factory (dlib: ``min_score``)."""
    _register_builtin()
    if name not in _FACTORIES:
        raise EmorigError(f"unknown face backend '{name}'; available: {', '.join(backend_names())}")
    return _FACTORIES[name](**options)


def _register_builtin() -> None:
    if "dlib" not in _FACTORIES:
        from emorig.faces.dlib_backend import dlib_backend
        from emorig.faces.mediapipe_backend import mediapipe_backend

        _FACTORIES.setdefault("dlib", dlib_backend)
        _FACTORIES.setdefault("mediapipe", mediapipe_backend)

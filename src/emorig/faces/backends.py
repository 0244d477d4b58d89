"""Pluggable face backends: a detector, a landmark detector and an identity embedder.

Every backend is chosen by name, explicitly (``load_backend("dlib")``); nothing falls back to
another backend on its own. Images are (H, W, 3) uint8 RGB arrays; coordinates are continuous
pixels of that image (pixel i spans [i, i + 1), see docs/conventions.md).
"""

from __future__ import annotations

from collections.abc import Callable

from emorig.errors import EmorigError
from emorig.faces.detection import (
    Detection,
    FaceBackend,
    FaceDetector,
    IdentityEmbedder,
    LandmarkDetector,
)

__all__ = [
    "Detection",
    "FaceBackend",
    "FaceDetector",
    "IdentityEmbedder",
    "LandmarkDetector",
    "backend_names",
    "load_backend",
    "register_backend",
]


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

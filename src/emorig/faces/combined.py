"""dlib and MediaPipe together (``--detector both``, the default when MediaPipe is installed).

Detection: dlib's HOG boxes, then every MediaPipe full-range box that does not overlap one of
them (dlib's box is kept where both find a face, so frontal faces align exactly as with dlib
alone). Landmarks: dlib's 68-point predictor for dlib's faces. For faces only MediaPipe found
(turned, tilted, covered) dlib's predictor runs on MediaPipe's box brought to dlib's geometry
and is checked against the face mesh's 68 points (:data:`IBUG68_FROM_MESH`): where the two
disagree on the inner 51 points the predictor has lost the face (strong yaw, a tilted head)
and the mesh's points are used. Measured on renders of the built-in head with known landmarks
(normalised mean error of the inner 51 points, by the face's size): dlib's predictor on
MediaPipe's box 0.023 to 0.031 up to 45 degrees of yaw, mesh 0.028 to 0.033; at 55 and 60
degrees the predictor 0.09 to 0.14, the mesh 0.036 to 0.048. The mesh's jaw line does not
follow the silhouette of a turned face (0.18 to 0.34), the predictor's does better, so the
predictor is the first choice.
"""

from __future__ import annotations

import numpy as np

from emorig.errors import EmorigError
from emorig.faces.detection import Detection, FaceBackend, suppress_overlaps
from emorig.faces.dlib_backend import MIN_SCORE, DlibDetector, DlibIdentity, DlibLandmarks
from emorig.faces.mediapipe_backend import (
    MIN_SCORE as MEDIAPIPE_MIN_SCORE,
)
from emorig.faces.mediapipe_backend import (
    MediapipeDetector,
    MediapipeMesh,
    mesh_to_ibug68,
)

# dlib's box from MediaPipe's: the same centre, 0.94 of the side (medians over 26 faces both
# found, on real photos and LFW crops: width 0.941, height 0.946, centre offsets under 2%)
DLIB_BOX_SCALE = 0.94
# mean distance of the inner 51 points, dlib's predictor vs the mesh, over the box side: where
# both sit on the face it is 0.013 to 0.028 (renders up to 45 degrees of yaw, a group photo,
# a tilted portrait); where the predictor lost a strongly turned or tilted
# face, 0.07 to 0.37 (see the module docstring)
DISAGREE = 0.05


class CombinedDetector:
    """dlib's faces, then MediaPipe's faces that none of dlib's boxes overlaps."""

    name = "dlib+mediapipe"

    def __init__(self, dlib: DlibDetector, mediapipe: MediapipeDetector):
        self.dlib, self.mediapipe = dlib, mediapipe

    def detect(self, image: np.ndarray) -> list[Detection]:
        first = self.dlib.detect(image)
        return suppress_overlaps(self.mediapipe.detect(image), keep=first)


def dlib_box(detection: Detection) -> Detection:
    """MediaPipe's square box brought to dlib's geometry (what its predictor was trained on)."""
    x0, y0, x1, y1 = detection.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * DLIB_BOX_SCALE / 2, (y1 - y0) * DLIB_BOX_SCALE / 2
    return Detection((cx - hw, cy - hh, cx + hw, cy + hh), detection.score, detection.detector)


class CheckedLandmarks68:
    """68 iBUG points for any detector's face: dlib's predictor, checked by the face mesh on
    faces dlib did not find (see the module docstring). ``landmarks_and_source`` also says
    which one gave the points (``"dlib-68"`` or ``"mediapipe-mesh-68"``)."""

    name = "dlib-68+mediapipe-mesh"
    n_points = 68

    def __init__(self, dlib: DlibLandmarks, mesh: MediapipeMesh):
        self.dlib, self.mesh = dlib, mesh

    def landmarks(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        return self.landmarks_and_source(image, detection)[0]

    def landmarks_and_source(
        self, image: np.ndarray, detection: Detection
    ) -> tuple[np.ndarray, str]:
        if detection.detector == "dlib":
            return self.dlib.landmarks(image, detection), self.dlib.name
        predicted = self.dlib.landmarks(image, dlib_box(detection))
        try:
            mesh = mesh_to_ibug68(self.mesh.landmarks(image, detection))
        except EmorigError:  # the mesh found no face in the box: the predictor's points
            return predicted, self.dlib.name
        gap = np.linalg.norm(predicted[17:] - mesh[17:], axis=1).mean() / detection.side
        if gap > DISAGREE:
            return mesh, "mediapipe-mesh-68"
        return predicted, self.dlib.name


def mediapipe_detector_backend(min_score: float = MEDIAPIPE_MIN_SCORE) -> FaceBackend:
    """MediaPipe's detector alone (``min_score``: its probability, 0 to 1), with the same
    checked landmarks as :func:`combined_backend`."""
    mesh = MediapipeMesh()
    return FaceBackend(
        "mediapipe",
        MediapipeDetector(min_score),
        CheckedLandmarks68(DlibLandmarks(), mesh),
        DlibIdentity(),
        dense=mesh,
    )


def combined_backend(
    min_score: float = MIN_SCORE, mediapipe_min_score: float = MEDIAPIPE_MIN_SCORE
) -> FaceBackend:
    """dlib and MediaPipe: ``min_score`` is dlib's, ``mediapipe_min_score`` MediaPipe's."""
    mesh = MediapipeMesh()
    return FaceBackend(
        "both",
        CombinedDetector(DlibDetector(min_score), MediapipeDetector(mediapipe_min_score)),
        CheckedLandmarks68(DlibLandmarks(), mesh),
        DlibIdentity(),
        dense=mesh,
    )

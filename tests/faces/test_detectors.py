"""The detector choice: dlib, MediaPipe's full-range detector, both; which detector found each
face; landmarks of faces dlib misses; the note when MediaPipe is missing; small faces."""

import warnings

import numpy as np
import pytest
from PIL import Image

from emorig.faces import backends
from emorig.faces.backends import DetectorNote, load_backend
from emorig.faces.detection import Detection, overlap, suppress_overlaps
from emorig.faces.pipeline import DONE, SEVERAL, FaceAligner, SmallFaceNote

mediapipe = pytest.importorskip("mediapipe", reason="the mediapipe extra is not installed")


@pytest.fixture(scope="module")
def both():
    return load_backend("both")


@pytest.fixture(scope="module")
def dlib_only():
    return load_backend("dlib")


def rotated(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned ``degrees`` counter-clockwise on a grey canvas (PIL's expand), and
    the 3x3 map of its pixels into the turned image."""
    pic = Image.fromarray(image).rotate(degrees, Image.BILINEAR, expand=True, fillcolor=(128,) * 3)
    h, w = image.shape[:2]
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    to_centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    turn = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])  # counter-clockwise on screen (y down)
    back = np.array([[1, 0, pic.width / 2], [0, 1, pic.height / 2], [0, 0, 1]])
    return np.asarray(pic), back @ turn @ to_centre


def test_overlap_and_suppression():
    a = Detection((0, 0, 100, 100), 2.0, "dlib")
    inner = Detection((10, 10, 90, 90), 0.9, "mediapipe")
    beside = Detection((120, 0, 220, 100), 0.8, "mediapipe")
    assert overlap(a, inner) == 1.0
    assert overlap(a, beside) == 0.0
    kept = suppress_overlaps([inner, beside], keep=[a])
    assert kept == [a, beside]  # dlib's box is kept where both found the face


def test_dlib_faces_keep_dlibs_box_and_landmarks(astronaut, both, dlib_only):
    (d,) = dlib_only.detector.detect(astronaut)
    (c,) = both.detector.detect(astronaut)
    assert c == d
    assert c.detector == "dlib"
    face = FaceAligner(backend=both).align(astronaut)[0][0]
    plain = FaceAligner(backend=dlib_only).align(astronaut)[0][0]
    assert face.landmarker == "dlib-68"
    assert np.array_equal(face.source_landmarks, plain.source_landmarks)


@pytest.mark.parametrize("degrees", [50, 60])
def test_a_tilted_face_dlib_misses_is_found_and_landmarked(astronaut, both, dlib_only, degrees):
    upright = FaceAligner(backend=dlib_only).align(astronaut)[0][0].source_landmarks
    image, m = rotated(astronaut, degrees)
    assert dlib_only.detector.detect(image) == []
    faces, n = FaceAligner(backend=both).align(image)
    assert n == 1
    face = faces[0]
    assert face.detection.detector == "mediapipe"
    assert face.landmarker in ("dlib-68", "mediapipe-mesh-68")
    truth = (np.c_[upright, np.ones(68)] @ m.T)[:, :2]
    eyes = np.linalg.norm(truth[36:42].mean(0) - truth[42:48].mean(0))
    err = np.linalg.norm(face.source_landmarks - truth, axis=1)
    # eyes, nose, mouth and brows on the face: a fifth of the eye distance on average
    assert err[17:].mean() < 0.2 * eyes, (face.landmarker, err[17:].mean() / eyes)
    assert err.mean() < 0.35 * eyes


def test_mesh_68_agrees_with_dlib_on_a_frontal_face(astronaut, both):
    from emorig.faces.mediapipe_backend import mesh_to_ibug68

    (d,) = both.detector.detect(astronaut)
    predicted = both.landmarks68.dlib.landmarks(astronaut, d)
    mesh = mesh_to_ibug68(both.dense.landmarks(astronaut, d))
    assert mesh.shape == (68, 2)
    gap = np.linalg.norm(predicted - mesh, axis=1) / d.side
    assert gap[17:].mean() < 0.04  # same order: brows, nose, eyes, lips
    assert gap.max() < 0.15


def test_tiles_find_small_faces_once_each(astronaut, both):
    """Four 90-pixel faces on a 1280-pixel canvas: too small for the full-range model on the
    whole photo, found in its tiles, each once (tiles overlap)."""
    small = astronaut[30:210, 130:310]  # the face, about 90 pixels, and its surroundings
    canvas = np.full((760, 1280, 3), 150, np.uint8)
    spots = [(40, 60), (40, 700), (450, 330), (450, 1020)]
    for y, x in spots:
        canvas[y : y + 180, x : x + 180] = small
    found = both.detector.mediapipe.detect(canvas)
    assert len(found) == 4
    for y, x in spots:  # one box per face
        centres = [((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in found]
        assert sum(x <= cx <= x + 180 and y <= cy <= y + 180 for cx, cy in centres) == 1
    assert all(d.detector == "mediapipe" for d in found)


def test_nothing_on_walls_and_noise(both):
    rng = np.random.default_rng(0)
    for image in (np.full((400, 600, 3), 90, np.uint8), rng.integers(0, 256, (400, 600, 3))):
        assert both.detector.detect(image.astype(np.uint8)) == []


def test_auto_is_both_with_mediapipe(monkeypatch):
    assert backends.default_backend_name() == "both"
    assert FaceAligner(size=64).backend.name == "both"


def test_auto_without_mediapipe_is_dlib_with_one_note(monkeypatch):
    import emorig.faces.mediapipe_backend as mp

    monkeypatch.setattr(mp, "mediapipe_available", lambda: False)
    monkeypatch.setattr(backends, "_noted", set())
    with pytest.warns(DetectorNote, match=r"dlib alone.*pip install 'emorig\[mediapipe\]'"):
        assert load_backend().name == "dlib"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FaceAligner(size=64).backend.name == "dlib"  # said once


def test_the_detector_is_recorded_and_written(astronaut, both, tmp_path):
    image, _ = rotated(astronaut, 60)
    canvas = np.full((image.shape[0], image.shape[1] + 512, 3), 128, np.uint8)
    canvas[:, : image.shape[1]] = image
    canvas[: astronaut.shape[0], image.shape[1] :] = astronaut
    Image.fromarray(canvas).save(tmp_path / "two.png")
    result = FaceAligner(backend=both, all_faces=True).align_file(tmp_path / "two.png")
    assert result.status == SEVERAL
    found = sorted(f.detection.detector for f in result.faces)
    assert found == ["dlib", "mediapipe"]
    meta = result.faces[0].to_json("two.png", False)
    assert meta["detector"] in ("dlib", "mediapipe")
    assert meta["landmarker"] in ("dlib-68", "mediapipe-mesh-68")


def test_a_small_face_is_aligned_with_a_note(astronaut, tmp_path):
    Image.fromarray(astronaut).resize((160, 160), Image.BILINEAR).save(tmp_path / "small.png")
    result = FaceAligner(size=256).align_file(tmp_path / "small.png")
    assert result.status == DONE
    (note,) = result.notes
    assert "small face" in note
    assert "eyes 1" in note  # about 12 pixels apart
    assert "enlarged" in note
    assert "results will be blurry" in note
    assert result.faces[0].upscale > 2
    with pytest.warns(SmallFaceNote):
        FaceAligner(size=256).align(np.asarray(Image.open(tmp_path / "small.png")))
    assert FaceAligner(size=256).align_file(tmp_path / "small.png").notes == [note]
    # the same face at full size: no note
    Image.fromarray(astronaut).save(tmp_path / "big.png")
    assert FaceAligner(size=256).align_file(tmp_path / "big.png").notes == []


@pytest.mark.parametrize(
    ("cover", "colour"),
    [("sunglasses", (10, 10, 10)), ("mask", (120, 170, 220))],
)
def test_a_covered_face_dlib_misses_is_found(astronaut, both, dlib_only, cover, colour):
    """A dark bar over the eyes, a pale blue one from cheek to cheek below the nose bridge."""
    truth = FaceAligner(backend=dlib_only).align(astronaut)[0][0].source_landmarks
    region = truth[36:48] if cover == "sunglasses" else np.r_[truth[2:15], truth[29:30]]
    (x0, y0), (x1, y1) = region.min(0).astype(int) - 6, region.max(0).astype(int) + 6
    image = astronaut.copy()
    image[y0:y1, x0:x1] = colour
    assert dlib_only.detector.detect(image) == []
    faces, n = FaceAligner(backend=both).align(image)
    assert n == 1
    assert faces[0].detection.detector == "mediapipe"
    eyes = np.linalg.norm(truth[36:42].mean(0) - truth[42:48].mean(0))
    err = np.linalg.norm(faces[0].source_landmarks[17:] - truth[17:], axis=1).mean()
    assert err < 0.2 * eyes  # measured: 2 and 4 pixels, eyes 40 pixels apart

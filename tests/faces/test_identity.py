import numpy as np

from emorig.faces.backends import Detection, load_backend


def test_same_face_mirrored_is_close_and_other_people_are_far(astronaut, lfw_faces):
    backend = load_backend("dlib")

    def embed(image, box=None):
        det = [Detection(box, 1.0)] if box else backend.detector.detect(image)
        assert det, "no face"
        return backend.embedder.embed(image, backend.landmarks68.landmarks(image, det[0]))

    a = embed(astronaut)
    mirrored = embed(np.ascontiguousarray(astronaut[:, ::-1]))
    assert a.shape == (128,)
    assert np.linalg.norm(a - mirrored) < 0.3
    # the LFW crops are tight around the face: give the landmark predictor that box
    others = np.array([embed(f, (14.0, 14.0, 186.0, 186.0)) for f in lfw_faces[:40]])
    d = np.linalg.norm(others - a, axis=1)
    print(
        f"\nastronaut vs mirror {np.linalg.norm(a - mirrored):.3f}; vs 40 other people: "
        f"min {d.min():.3f} median {np.median(d):.3f}"
    )
    assert d.min() > 0.55  # dlib's same-person threshold is 0.6
    assert np.median(d) > 0.7

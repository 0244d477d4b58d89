"""The warp edit (``emorig edit --method warp``) on a real photo: scikit-image's astronaut,
fitted once per module with the weight-free ``fit`` reconstructor on the built-in head."""

import math

import numpy as np
import pytest
import torch

from emorig.edit.warp import FALLOFF, warp_edit
from emorig.errors import EmorigError
from emorig.flame.builtin import builtin_head, expression_index
from emorig.geometry.camera import ndc_to_pixels
from emorig.render.face import FaceRenderer

skimage_data = pytest.importorskip("skimage.data")

#: 0-based iBUG indices of the outer (56-58) and inner (65-67) lower lip.
LOWER_LIP = [56, 57, 58, 65, 66, 67]


@pytest.fixture(scope="module")
def fitted():
    from emorig.reconstruct.pipeline import Reconstructor

    head = builtin_head()
    photo = skimage_data.astronaut()
    rec = Reconstructor("fit", head).reconstruct(photo)[0]
    return photo, rec, FaceRenderer(head)


def _jaw(code, degrees):
    jaw = code.jaw_pose.clone()
    jaw[0, 0] += math.radians(degrees)
    return code.replace(jaw_pose=jaw)


def _landmarks_px(renderer, code, face):
    """(68, 2) the code's landmarks projected onto the photo, continuous pixels."""
    h, w = face.image_size
    with torch.no_grad():
        render = renderer(code, crop=face.crop_transform())
    return ndc_to_pixels(render.landmarks, h, w)[0].numpy()


def _far_from_head(photo, renderer, rec, *codes):
    """(H, W) bool: pixels further than the fall-off from both meshes' bounding box."""
    h, w = photo.shape[:2]
    pts = np.concatenate([_vertices_px(renderer, c, rec.face) for c in codes])
    lo, hi = pts.min(0), pts.max(0)
    margin = FALLOFF * (hi - lo).max() + 3
    ys, xs = np.mgrid[:h, :w] + 0.5
    inside = (xs > lo[0] - margin) & (xs < hi[0] + margin)
    inside &= (ys > lo[1] - margin) & (ys < hi[1] + margin)
    return ~inside


def _vertices_px(renderer, code, face):
    h, w = face.image_size
    with torch.no_grad():
        v = renderer.project(renderer.geometry(code).vertices, code)
        v = face.crop_transform().crop_ndc_to_image_ndc(v)
    return ndc_to_pixels(v[..., :2], h, w)[0].numpy()


def test_unchanged_codes_return_the_photo_exactly(fitted):
    photo, rec, renderer = fitted
    out = warp_edit(photo, rec.face, renderer, rec.code, rec.code)
    assert out.image.shape == photo.shape
    assert out.image.dtype == np.uint8
    assert np.array_equal(out.image, photo)
    assert not out.flow.any()
    assert not out.mask.any()


def test_jaw_open_moves_the_lower_lip_by_the_projected_amount(fitted):
    """The backward flow at the target's lower-lip points reaches the source's lip points
    (within 2 px) for a wide opening; for a moderate one (6 degrees, about 7 px) dlib
    re-detects the lip moved by the projected amount within 2 px. (dlib's shape model
    under-reads wide openings: 11 px for 14 px at 12 degrees, on the warped photo whose
    flow is right there, so re-detection only checks the moderate edit.)"""
    from emorig.faces.backends import load_backend

    photo, rec, renderer = fitted
    target = _jaw(rec.code, 12)
    out = warp_edit(photo, rec.face, renderer, rec.code, target)
    src = _landmarks_px(renderer, rec.code, rec.face)[LOWER_LIP]
    tgt = _landmarks_px(renderer, target, rec.face)[LOWER_LIP]
    expected = tgt - src
    assert expected[:, 1].min() > 8  # the lip really goes down
    at = np.floor(tgt).astype(int)
    measured = -out.flow[at[:, 1], at[:, 0]]
    assert np.abs(measured - expected).max() < 2.0

    target = _jaw(rec.code, 6)
    out = warp_edit(photo, rec.face, renderer, rec.code, target)
    expected = _landmarks_px(renderer, target, rec.face)[LOWER_LIP] - src
    backend = load_backend("dlib")
    detection = backend.detector.detect(photo)[0]
    before = backend.landmarks68.landmarks(photo, detection)[LOWER_LIP]
    after = backend.landmarks68.landmarks(out.image, detection)[LOWER_LIP]
    assert np.abs((after - before) - expected).max() < 2.0


def test_relighting_with_the_same_light_is_the_identity(fitted):
    photo, rec, renderer = fitted
    target = _jaw(rec.code, 10)
    lit = warp_edit(photo, rec.face, renderer, rec.code, target, relight=True)
    unlit = warp_edit(photo, rec.face, renderer, rec.code, target, relight=False)
    assert np.array_equal(lit.image, unlit.image)
    light_only = warp_edit(photo, rec.face, renderer, rec.code, rec.code.replace())
    assert np.array_equal(light_only.image, photo)


def test_a_brighter_turned_light_changes_only_the_face(fitted):
    photo, rec, renderer = fitted
    light = rec.code.light.clone()
    light[0, 0] *= 1.2
    light[0, 1] += 0.1 * light[0, 0]  # from the side
    out = warp_edit(photo, rec.face, renderer, rec.code, rec.code.replace(light=light))
    assert not out.flow.any()
    changed = np.any(out.image != photo, axis=-1)
    assert changed.sum() > 2000
    far = _far_from_head(photo, renderer, rec, rec.code)
    assert not changed[far].any()
    lm = rec.face.source_landmarks  # the face itself got brighter
    box = (slice(int(lm[:, 1].min()), int(lm[:, 1].max())), slice(*map(int, lm[[0, 16], 0])))
    assert out.image[box].astype(float).mean() > photo[box].astype(float).mean() + 5


def test_the_flow_vanishes_far_from_the_face(fitted):
    photo, rec, renderer = fitted
    target = rec.code.replace(expression=rec.code.expression.clone())
    target.expression[0, expression_index("smile")] += 1.0
    target = _jaw(target, 8)
    out = warp_edit(photo, rec.face, renderer, rec.code, target)
    far = _far_from_head(photo, renderer, rec, rec.code, target)
    assert far.mean() > 0.3
    assert not out.flow[far].any()
    assert not out.mask[far].any()
    assert np.array_equal(out.image[far], photo[far])
    near = out.mask > 0
    assert near.sum() > 5000  # the face did change


def test_bad_inputs_are_one_line_errors(fitted):
    photo, rec, renderer = fitted
    code = rec.code
    with pytest.raises(EmorigError, match="uint8"):
        warp_edit(photo.astype(np.float32), rec.face, renderer, code, code)
    with pytest.raises(EmorigError, match=r"\(H, W, 3\)"):
        warp_edit(photo[..., 0], rec.face, renderer, code, code)
    pair = code.map(lambda t: torch.cat([t, t]))
    with pytest.raises(EmorigError, match="batch of 2"):
        warp_edit(photo, rec.face, renderer, code, pair)
    with pytest.raises(EmorigError, match="aligned on a 512x512"):
        warp_edit(photo[:256], rec.face, renderer, code, code)

"""Alignment transforms and the warp, checked against their definitions."""

import numpy as np
import pytest

from emorig.faces.align import (
    deca_box,
    deca_transform,
    ffhq_quad,
    ffhq_transform,
    transform_points,
    warp,
)


def face_landmarks(center=(120.0, 140.0), scale=1.0, angle=0.0):
    """A plausible iBUG-68 layout (unit face: eyes 60 px apart) rotated and scaled."""
    rng = np.random.default_rng(0)
    lm = rng.normal(size=(68, 2)) * 3
    lm[36:42] += [-30, -20]
    lm[42:48] += [30, -20]
    lm[48] += [-22, 45]
    lm[54] += [22, 45]
    lm[0:17] = np.stack([np.linspace(-70, 70, 17), 40 * np.sin(np.linspace(0, np.pi, 17))], 1)
    c, s = np.cos(angle), np.sin(angle)
    return lm @ np.array([[c, s], [-s, c]]) * scale + np.asarray(center)


def symmetric_landmarks(center, scale, angle):
    """Eyes and mouth corners of a mirror-symmetric face (eye-to-mouth perpendicular to the
    eye line), so FFHQ's crop is upright on it."""
    lm = face_landmarks(center=(0.0, 0.0))
    lm[36:42] = [-30, -20]
    lm[42:48] = [30, -20]
    lm[48], lm[54] = [-22, 45], [22, 45]
    c, s = np.cos(angle), np.sin(angle)
    return lm @ np.array([[c, s], [-s, c]]) * scale + np.asarray(center)


@pytest.mark.parametrize("angle", [0.0, 0.3, -0.5])
@pytest.mark.parametrize("size", [256, 512])
def test_ffhq_puts_the_eyes_where_ffhq_does(angle, size):
    lm = symmetric_landmarks((120.0, 140.0), 1.7, angle)
    out = transform_points(ffhq_transform(lm, size), lm)
    eye_l, eye_r = out[36:42].mean(0), out[42:48].mean(0)
    assert abs(eye_l[1] - eye_r[1]) < 1e-6  # level
    assert abs((eye_l[0] + eye_r[0]) / 2 - size / 2) < 1e-6  # centred
    # e2e = 60 * 1.7, e2m = 65 * 1.7: half-side max(2 e2e, 1.8 e2m) = 2 e2e
    assert np.isclose(eye_r[0] - eye_l[0], size / 4)
    assert np.isclose(eye_l[1], size / 2 - 0.1 * 65 / 240 * size)


@pytest.mark.parametrize("angle", [0.0, 0.4])
def test_ffhq_transform_follows_its_definition_on_any_face(angle):
    lm = face_landmarks(angle=angle, scale=1.3)
    m = ffhq_transform(lm, 256)
    c, x, y = ffhq_quad(lm)
    e_l, e_r = lm[36:42].mean(0), lm[42:48].mean(0)
    e2e, e2m = e_r - e_l, (lm[48] + lm[54]) / 2 - (e_l + e_r) / 2
    direction = e2e - np.flipud(e2m) * [-1, 1]
    assert np.isclose(np.linalg.norm(x), max(2 * np.linalg.norm(e2e), 1.8 * np.linalg.norm(e2m)))
    assert np.allclose(x / np.linalg.norm(x), direction / np.linalg.norm(direction))
    assert np.allclose(y, [-x[1], x[0]])
    corners = transform_points(m, np.stack([c - x - y, c + x - y, c + x + y, c - x + y]))
    assert np.allclose(corners, [[0, 0], [256, 0], [256, 256], [0, 256]])


def test_deca_crop_matches_decas_box_and_pixel_convention():
    lm = face_landmarks(scale=1.3)
    center, side = deca_box(lm)
    sk = lm - 0.5
    w, h = np.ptp(sk[:, 0]), np.ptp(sk[:, 1])
    assert side == int((w + h) / 2 * 1.1 * 1.25)
    m = deca_transform(lm, 224)
    # DECA maps its box corners to pixel centres 0 and 223 (skimage), i.e. 0.5 and 223.5 here
    corner = center - side / 2 + 0.5
    assert np.allclose(transform_points(m, corner[None]), [[0.5, 0.5]])
    assert np.allclose(transform_points(m, (corner + side)[None]), [[223.5, 223.5]])


def test_warp_moves_a_bright_pixel_where_the_matrix_says():
    img = np.zeros((100, 120, 3), np.uint8)
    img[30, 70] = 255  # centre at (70.5, 30.5)
    a = 0.4
    m = np.array(
        [
            [1.5 * np.cos(a), -1.5 * np.sin(a), 10.0],
            [1.5 * np.sin(a), 1.5 * np.cos(a), -20.0],
            [0, 0, 1.0],
        ]
    )
    out = warp(img, m, 160).numpy()
    peak = np.unravel_index(out[0].argmax(), out[0].shape)
    expected = transform_points(m, np.array([[70.5, 30.5]]))[0]
    assert abs(peak[1] + 0.5 - expected[0]) <= 1.0
    assert abs(peak[0] + 0.5 - expected[1]) <= 1.0


def test_strong_reductions_are_antialiased():
    # a one-pixel checkerboard reduced eightfold must come out flat grey, not aliased
    yy, xx = np.mgrid[:800, :800]
    img = (((xx + yy) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    m = np.diag([1 / 8, 1 / 8, 1.0])
    out = warp(img, m, 100).numpy()
    assert abs(out.mean() - 0.5) < 0.02
    assert out.std() < 0.02


def test_ffhq_padding_fills_beyond_the_photo_without_black():
    rng = np.random.default_rng(0)
    img = (rng.random((80, 80, 3)) * 80 + 100).astype(np.uint8)
    # a crop twice as large as the photo, centred on it
    m = np.array([[0.5, 0.0, 20.0], [0.0, 0.5, 20.0], [0.0, 0.0, 1.0]])
    zeros = warp(img, m, 80, "zeros").numpy()
    ffhq = warp(img, m, 80, "ffhq").numpy()
    assert zeros[:, :5, :5].max() == 0.0
    assert ffhq.min() > 0.3  # no black corners
    # FFHQ blurs up to a third of its margin (0.3 x 160 source px) inside the photo; deeper
    # inside the pixels are untouched
    inside = slice(30, 50)
    assert np.allclose(ffhq[:, inside, inside], zeros[:, inside, inside], atol=1e-6)
    assert not np.allclose(ffhq[:, 22:26, 22:26], zeros[:, 22:26, 22:26], atol=1e-3)
    with pytest.raises(ValueError, match="padding"):
        warp(img, m, 10, "wrap")

"""Face alignment: FFHQ's oriented crop (what DiffusionRig's ``align.py`` produces) and DECA's
landmark-box crop, as 3 x 3 transforms plus one warp.

All matrices map *original* continuous pixel coordinates to *aligned* ones (pixel centres at
``i + 0.5``, docs/conventions.md); :class:`emorig.geometry.CropTransform` wraps them so renders
can be pasted back onto the original photo.
"""

from __future__ import annotations

import math

import kornia
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from emorig.geometry.camera import DECA_CROP

# iBUG-68 index ranges
LEFT_EYE = slice(36, 42)  # image left, i.e. the subject's right eye
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54

DECA_BOX_GROW = 1.1
DECA_SCALE = 1.25
DECA_SIZE = DECA_CROP


def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FFHQ's oriented square from iBUG-68 landmarks (Karras et al. 2019, FFHQ dataset tool).

    Returns its centre ``c`` and half-axes ``x`` (towards the image right of the face) and
    ``y`` (downwards), all in pixels: the square's corners are ``c -+ x -+ y``.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[LEFT_EYE].mean(0), lm[RIGHT_EYE].mean(0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y


def ffhq_transform(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(3, 3) map from original pixels to the ``size`` x ``size`` FFHQ-aligned image."""
    c, x, y = ffhq_quad(landmarks)
    # aligned p -> original: corner c - x - y at (0, 0); 2x along aligned x, 2y along aligned y
    to_original = np.array(
        [
            [2 * x[0] / size, 2 * y[0] / size, (c - x - y)[0]],
            [2 * x[1] / size, 2 * y[1] / size, (c - x - y)[1]],
            [0.0, 0.0, 1.0],
        ]
    )
    return np.linalg.inv(to_original)


def deca_box(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """DECA's crop centre and side (skimage pixel convention, as DECA computes them):
    the landmark box grown by 1.1, then by the scale 1.25, side truncated to an integer."""
    lm = np.asarray(landmarks, dtype=np.float64) - 0.5  # our pixel centres -> skimage's
    left, top = lm.min(0)
    right, bottom = lm.max(0)
    old_size = (right - left + bottom - top) / 2 * DECA_BOX_GROW
    center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    return center, float(int(old_size * DECA_SCALE))


def deca_transform(landmarks: np.ndarray, size: int = DECA_SIZE) -> np.ndarray:
    """(3, 3) map from original pixels to DECA's ``size`` crop.

    DECA maps three corners of its box to ``(0, 0), (0, size - 1), (size - 1, 0)`` in skimage's
    convention (pixel centres on integers); the same map is expressed in ours here, so crops
    match DECA's pixel for pixel.
    """
    center, side = deca_box(landmarks)
    s = (size - 1) / side
    corner = center - side / 2
    skimage = np.array([[s, 0.0, -s * corner[0]], [0.0, s, -s * corner[1]], [0.0, 0.0, 1.0]])
    shift = np.eye(3)
    shift[:2, 2] = 0.5
    return shift @ skimage @ np.linalg.inv(shift)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (3, 3) map to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    homo = np.concatenate([pts, np.ones((pts.shape[0], 1))], 1) @ np.asarray(matrix).T
    return homo[:, :2] / homo[:, 2:3]


def warp(
    image: np.ndarray,
    matrix: np.ndarray,
    size: int,
    padding: str = "zeros",
    device: torch.device | str = "cpu",
) -> Tensor:
    """Resample ``image`` through ``matrix`` (original -> output pixels) into (3, size, size).

    Args:
        image: (H, W, 3) uint8 RGB.
        matrix: (3, 3) similarity or affine map, our pixel convention.
        size: output side.
        padding: ``"zeros"`` (DECA), ``"reflection"``, or ``"ffhq"``: reflection blurred and
            blended towards the median colour away from the photo's border, as FFHQ does.
        device: where to compute.

    Returns:
        (3, size, size) float32 in [0, 1]. Large reductions are pre-shrunk with an
        anti-aliasing box filter (integer factor, as FFHQ's tool does) before the bilinear warp.
    """
    if padding not in ("zeros", "reflection", "ffhq"):
        raise ValueError(f"padding={padding!r}; choose zeros, reflection or ffhq")
    m = np.asarray(matrix, dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))
    shrink = math.floor(1.0 / (2.0 * scale)) if scale > 0 else 1
    src = image
    if shrink >= 2:
        src = np.asarray(Image.fromarray(image).reduce(shrink))
        m = m @ np.diag([shrink, shrink, 1.0])  # reduced pixel p covers original shrink * p
    # kornia puts pixel centres on integers: conjugate by the half-pixel shift
    half = np.eye(3)
    half[:2, 2] = 0.5
    m_k = np.linalg.inv(half) @ m @ half
    t = torch.from_numpy(np.array(src, dtype=np.uint8)).to(device).permute(2, 0, 1)[None].float()
    t = t / 255.0
    mk = torch.as_tensor(m_k[:2], dtype=torch.float32, device=device)[None]
    mode = "zeros" if padding == "zeros" else "reflection"
    out = kornia.geometry.transform.warp_affine(
        t, mk, (size, size), mode="bilinear", padding_mode=mode, align_corners=True
    )
    if padding == "ffhq":
        out = _ffhq_border(out, m, src.shape[:2], size)
    return out[0].clamp(0.0, 1.0)


def _ffhq_border(out: Tensor, m: np.ndarray, hw: tuple[int, int], size: int) -> Tensor:
    """FFHQ's treatment of the area beyond the photo: blur it, then fade to the median colour
    over a margin of 30% of the crop (in source pixels)."""
    h, w = hw
    inv = torch.as_tensor(np.linalg.inv(m), dtype=out.dtype, device=out.device)
    c = torch.arange(size, dtype=out.dtype, device=out.device) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1) @ inv.T  # source coordinates
    u, v = pts[..., 0], pts[..., 1]
    qsize = size / math.sqrt(abs(np.linalg.det(m[:2, :2])))
    pad = max(round(qsize * 0.3), 3)
    # distance beyond the photo's border in units of the margin: 0 on the border, 1 one margin
    # out, negative inside (FFHQ's mask, expressed in source coordinates)
    mask = (torch.stack([-u, u - w, -v, v - h]).amax(0) / pad)[None, None]
    if float(mask.max()) <= 0.0:
        return out  # the crop lies inside the photo
    sigma = max(0.02 * size, 0.5)
    k = 2 * math.ceil(3 * sigma) + 1
    blurred = kornia.filters.gaussian_blur2d(out, (k, k), (sigma, sigma), border_type="reflect")
    out = out + (blurred - out) * (mask * 3.0 + 1.0).clamp(0.0, 1.0)
    median = out.flatten(2).median(dim=2).values[..., None, None]
    return out + (median - out) * mask.clamp(0.0, 1.0)

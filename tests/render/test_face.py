import math

import pytest
import torch

from emorig.flame.builtin import builtin_head
from emorig.geometry.camera import CropTransform, PerspectiveCamera
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


def iou(a, b):
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


def test_far_perspective_camera_matches_the_orthographic_one(renderer):
    s, d = 8.0, 200.0
    code = FaceCode.neutral(1, camera=(s, 0.0, 0.0))
    ortho = renderer(code, 96)
    cam = PerspectiveCamera.in_front(1, d, 2 * math.degrees(math.atan(1 / (s * d))))
    persp = renderer(code, 96, perspective=cam)
    assert iou(ortho.buffers.mask, persp.buffers.mask) > 0.97
    assert (ortho.landmarks - persp.landmarks).abs().max() < 0.01
    near = renderer(code, 96, perspective=PerspectiveCamera.in_front(1, 0.4, 25.0))
    assert iou(ortho.buffers.mask, near.buffers.mask) < 0.97  # a close camera distorts


def test_crop_renders_onto_the_original_photo(renderer):
    # a 224 crop of the 448 x 448 region at (40, 60) of a 700 x 600 photo
    m = torch.tensor([[[0.5, 0.0, -20.0], [0.0, 0.5, -30.0], [0.0, 0.0, 1.0]]])
    crop = CropTransform(m, 224, (600, 700))
    code = FaceCode.neutral(1, camera=(5.0, 0.0, 0.0))  # the whole head inside the crop
    full = renderer(code, crop=crop)
    small = renderer(code, 224)
    assert full.buffers.rendered.shape == (1, 3, 600, 700)
    # the crop shows the head at half the size of the photo: compare pixel areas
    area_crop = float(small.buffers.mask.sum())
    area_full = float(full.buffers.mask.sum())
    assert abs(area_full / area_crop - 4.0) < 0.05
    # landmarks come back in the photo's NDC
    lm_px = (full.landmarks[0] + 1) * torch.tensor([350.0, 300.0])
    lm_crop_px = (small.landmarks[0] + 1) * 112.0
    assert torch.allclose(lm_px, lm_crop_px * 2 + torch.tensor([40.0, 60.0]), atol=0.05)


def test_codes_move_devices_and_dtypes_together():
    code = FaceCode.neutral(2, dtype=torch.float64)
    assert code.batch_size == 2
    half = code[1:]
    assert half.batch_size == 1
    f32 = code.to(torch.float32)
    assert f32.light.dtype == torch.float32
    assert f32.detail is None
    assert torch.allclose(
        code.light[:, 0] * 0.28209479177387814, torch.full((2, 3), 0.8, dtype=torch.float64)
    )

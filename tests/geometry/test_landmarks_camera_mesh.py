import math

import torch

from emorig.geometry.camera import (
    CropTransform,
    front_camera,
    ndc_to_pixels,
    orthographic_project,
    perspective_project,
    pixels_to_ndc,
)
from emorig.geometry.landmarks import contour_lut_row, vertices_to_landmarks, yaw_of_rotation
from emorig.geometry.mesh import face_normals, vertex_normals
from emorig.geometry.rotations import axis_angle_to_matrix

F64 = torch.float64


def test_vertices_to_landmarks_barycentric():
    verts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]]], dtype=F64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    idx = torch.tensor([0, 1])
    bary = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=F64)
    out = vertices_to_landmarks(verts, faces, idx, bary)
    assert torch.allclose(out[0, 0], torch.tensor([0.3, 0.5, 0.0], dtype=F64))
    assert torch.allclose(out[0, 1], torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    g = verts.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: vertices_to_landmarks(v, faces, idx, bary), (g,))


def test_contour_lut_rows_follow_deca_folding():
    deg = torch.tensor([0.0, 0.4, 12.6, 39.0, 55.0, -0.6, -1.0, -20.0, -39.0, -40.0, -80.0])
    rows = contour_lut_row(deg * math.pi / 180)
    assert rows.tolist() == [0, 0, 13, 39, 39, 40, 40, 59, 78, 78, 78]


def test_yaw_of_rotation_recovers_rotation_about_y():
    for a in (-0.5, 0.0, 0.3, 1.0):
        r = axis_angle_to_matrix(torch.tensor([0.0, a, 0.0], dtype=F64))
        assert abs(float(yaw_of_rotation(r)) - a) < 1e-12


def test_orthographic_matches_deca_formula():
    p = torch.tensor([[[0.1, 0.2, 0.3]]])
    cam = torch.tensor([[8.0, 0.01, -0.02]])
    out = orthographic_project(p, cam)
    assert torch.allclose(out, torch.tensor([[[8 * 0.11, -8 * 0.18, -8 * 0.3]]]))


def test_perspective_front_camera():
    r, t = front_camera(1, 1.0)
    p = torch.tensor([[[0.1, 0.2, 0.0], [0.0, 0.0, 0.5]]])
    out = perspective_project(p, r, t, torch.tensor([2.0]))
    # x right stays right, y up becomes y down, depth 1 and 0.5
    assert torch.allclose(out[0, 0], torch.tensor([0.2, -0.4, 1.0]))
    assert torch.allclose(out[0, 1], torch.tensor([0.0, 0.0, 0.5]))


def test_pixel_ndc_round_trip_and_centre_convention():
    px = torch.tensor([[0.5, 0.5], [63.5, 31.5]])
    ndc = pixels_to_ndc(px, 32, 64)
    assert torch.allclose(ndc[0], torch.tensor([2 * 0.5 / 64 - 1, 2 * 0.5 / 32 - 1]))
    assert torch.allclose(ndc_to_pixels(ndc, 32, 64), px)


def test_crop_transform_maps_crop_ndc_back_to_image():
    # crop = the image region [100, 324) x [50, 274) of a 480 x 640 image, scaled to 224
    s = 224 / 224.0
    m = torch.tensor([[[s, 0, -100.0], [0, s, -50.0], [0, 0, 1]]])
    crop = CropTransform(m, 224, (480, 640))
    pts = torch.tensor([[[-1.0, -1.0, 5.0], [1.0, 1.0, 6.0]]])
    out = crop.crop_ndc_to_image_ndc(pts)
    expected_px = torch.tensor([[100.0, 50.0], [324.0, 274.0]])
    assert torch.allclose(ndc_to_pixels(out[0, :, :2], 480, 640), expected_px, atol=1e-4)
    assert torch.equal(out[..., 2], pts[..., 2])
    back = crop.image_pixels_to_crop_pixels(expected_px[None])
    assert torch.allclose(back, torch.tensor([[[0.0, 0.0], [224.0, 224.0]]]), atol=1e-4)


def test_crop_from_skimage_shifts_half_pixel():
    m = torch.eye(3)[None] * torch.tensor([2.0, 2.0, 1.0])[:, None]
    crop = CropTransform.from_skimage(m, 224, (112, 112))
    # skimage: pixel centre 0 -> 0; ours: centre 0.5 -> 0.5 (2 * 0 + 0.5)
    out = crop.image_pixels_to_crop_pixels(torch.tensor([[[0.5, 0.5]]]))
    assert torch.allclose(out, torch.tensor([[[0.5, 0.5]]]))


def test_normals_of_a_ccw_square_point_up_z():
    v = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert torch.allclose(face_normals(v, f), torch.tensor([[[0.0, 0, 1], [0, 0, 1]]]))
    assert torch.allclose(vertex_normals(v, f), torch.tensor([0.0, 0, 1]).expand(1, 4, 3))


def test_vertex_normals_are_area_weighted():
    # a big triangle facing +z and a small one facing +x share vertex 0
    v = torch.tensor([[[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 1, 0], [0, 0, 1]]])
    f = torch.tensor([[0, 1, 2], [0, 3, 4]])
    n = vertex_normals(v, f)[0, 0]
    assert n[2] > 0.99
    assert n[0] > 0

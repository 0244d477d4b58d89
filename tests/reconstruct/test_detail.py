from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emorig.flame.builtin import builtin_head
from emorig.flame.model import FlameModel
from emorig.reconstruct.detail import (
    DetailRenderer,
    dense_grid_faces,
    detail_mesh,
    displacement_to_normals,
    sample_uv,
)
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

UPSTREAM = Path(__file__).resolve().parents[3] / "shared" / "upstream-data" / "deca"


@pytest.fixture(scope="module")
def head():
    return builtin_head()


@pytest.fixture(scope="module")
def detail(head):
    return DetailRenderer(
        torch.as_tensor(head.flame.faces),
        torch.as_tensor(head.uv.uv),
        torch.as_tensor(head.uv.uv_faces),
        torch.as_tensor(head.uv_face_eye_mask),
    )


def test_dense_grid_faces_like_decas():
    # (w - 1 - 2 mx) x (h - 1 - 2 my) quads, two triangles each
    f = dense_grid_faces(16, 2, 5)
    assert f.shape == ((16 - 1 - 4) * (16 - 1 - 10) * 2, 3)
    assert f.min() >= 0
    assert f.max() < 16 * 16
    # first triangle of the first quad, after DECA's [0, 2, 1] reorder
    x, y = 2, 5
    i = y * 16 + x
    assert f[0].tolist() == [i, i + 16, i + 1]


def test_zero_displacement_keeps_the_coarse_normals(head, detail):
    v = FlameModel(head).template_output().vertices
    _, uv_n = detail.uv_maps(v)
    normals = detail.detail_normals(v, torch.zeros(1, 1, 256, 256))
    m = detail.face_eye_mask.bool()[None]
    cos = (F.normalize(uv_n, dim=1) * normals).sum(1)[m]
    assert cos.mean() > 0.99
    assert (cos > 0.9).float().mean() > 0.99


def test_a_bump_tilts_normals_away_from_its_centre(head, detail):
    v = FlameModel(head).template_output().vertices
    uv_v, uv_n = detail.uv_maps(v)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    cy, cx = 110.0, 128.0  # inside the face region
    assert detail.face_eye_mask[int(cy), int(cx)] == 1
    bump = 0.002 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 6.0**2))
    flat = displacement_to_normals(
        torch.zeros(1, 1, 256, 256), uv_v, uv_n, detail.face_eye_mask, detail.dense_faces
    )
    bumped = displacement_to_normals(
        bump[None, None], uv_v, uv_n, detail.face_eye_mask, detail.dense_faces
    )
    # on either side of the bump the normals turn in opposite directions along u
    left, right = bumped[0, :, int(cy), int(cx) - 6], bumped[0, :, int(cy), int(cx) + 6]
    flat_l, flat_r = flat[0, :, int(cy), int(cx) - 6], flat[0, :, int(cy), int(cx) + 6]
    du = uv_v[0, :, int(cy), int(cx) + 1] - uv_v[0, :, int(cy), int(cx) - 1]
    assert float((left - flat_l) @ du) < 0 < float((right - flat_r) @ du)
    # outside the mask nothing changes
    outside = detail.face_eye_mask == 0
    assert torch.allclose(bumped[0][:, outside], flat[0][:, outside])


def test_uv_maps_agree_with_rendered_buffers(head, detail):
    r = FaceRenderer(head)
    out = r(FaceCode.neutral(1), 128)
    _, uv_n = detail.uv_maps(out.flame.vertices)
    sampled = sample_uv(uv_n, out.buffers.uv, out.buffers.mask)
    face = (
        sample_uv(detail.face_eye_mask[None, None], out.buffers.uv, out.buffers.mask)[0, 0] > 0.99
    )
    cos = (F.normalize(sampled, dim=1) * F.normalize(out.buffers.normal, dim=1)).sum(1)[0]
    assert face.sum() > 500
    assert cos[face].mean() > 0.98


def test_detail_mesh_of_the_face_region(head, detail):
    v = FlameModel(head).template_output().vertices
    uv_v, uv_n = detail.uv_maps(v)
    region = (detail.face_eye_mask > 0) & (detail.uv_mapper.mask[0, 0] > 0)
    verts, faces, uv = detail_mesh(uv_v[0], uv_n[0], torch.zeros(1, 256, 256), region)
    assert verts.shape == (int(region.sum()), 3)
    assert faces.min() >= 0
    assert faces.max() < verts.shape[0]
    assert uv.min() > 0
    assert uv.max() < 1
    assert faces.shape[0] > verts.shape[0]  # a connected surface, about two faces per vertex
    # the dense mesh lies on the coarse surface: every dense vertex is near some coarse vertex
    d = torch.cdist(torch.as_tensor(verts[::97]).float(), v[0]).min(1).values
    assert d.max() < 0.006


@pytest.mark.needs_upstream_data
def test_real_flame_layout_and_mask_give_outward_detail_normals():
    if not (UPSTREAM / "uv_face_eye_mask.png").exists():
        pytest.skip("upstream DECA data not present")
    from emorig.io.obj import read_obj
    from emorig.io.uv_files import read_fixed_displacement, read_uv_mask

    verts, faces, uv = read_obj(UPSTREAM / "head_template.obj")
    mask = torch.as_tensor(read_uv_mask(UPSTREAM / "uv_face_eye_mask.png"))
    fixed = torch.as_tensor(read_fixed_displacement(UPSTREAM / "fixed_displacement_256.npy"))
    dr = DetailRenderer(
        torch.as_tensor(faces), torch.as_tensor(uv.uv), torch.as_tensor(uv.uv_faces), mask, fixed
    )
    v = torch.as_tensor(verts - verts.mean(0))[None].float()
    _, uv_n = dr.uv_maps(v)
    normals = dr.detail_normals(v, torch.zeros(1, 1, 256, 256))
    m = (mask > 0.5) & (dr.uv_mapper.mask[0, 0] > 0)
    cos = (F.normalize(uv_n, dim=1) * normals).sum(1)[0][m]
    # FLAME's layout has the same handedness as DECA's texel triangles: normals point out
    assert cos.mean() > 0.95
    assert np.isclose(float(fixed.abs().max()), 0.0016, atol=2e-4)

"""NoW-style error: similarity alignment, exact point-to-triangle distances, scan-to-mesh."""

import math

import pytest
import torch

from emorig.errors import EmorigError
from emorig.evaluate import (
    closest_points_on_triangles,
    now_scan_to_mesh_error,
    point_to_mesh_distance,
    umeyama,
)
from emorig.geometry.rotations import axis_angle_to_matrix

TRIANGLE = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
R2 = 1 / math.sqrt(2)


@pytest.mark.parametrize(
    ("point", "closest"),
    [
        ((0.2, 0.2, 0.5), (0.2, 0.2, 0.0)),  # face
        ((0.5, -0.3, 0.4), (0.5, 0.0, 0.0)),  # edge a-b
        ((-0.3, 0.5, -0.4), (0.0, 0.5, 0.0)),  # edge a-c
        ((0.5 + 0.3 * R2, 0.5 + 0.3 * R2, 0.4), (0.5, 0.5, 0.0)),  # edge b-c
        ((-0.3, -0.4, 0.0), (0.0, 0.0, 0.0)),  # vertex a
        ((1.3, -0.4, 0.0), (1.0, 0.0, 0.0)),  # vertex b
        ((-0.4, 1.3, 0.0), (0.0, 1.0, 0.0)),  # vertex c
        ((-0.3, -0.4, 1.2), (0.0, 0.0, 0.0)),  # vertex a, off the plane
    ],
)
def test_closest_point_in_every_region(point, closest):
    p = torch.tensor([point], dtype=torch.float64)
    got = closest_points_on_triangles(p, TRIANGLE[None])
    assert got[0].tolist() == pytest.approx(list(closest), abs=1e-12)
    expected = math.dist(point, closest)
    assert float((got - p).norm()) == pytest.approx(expected)
    assert expected in (pytest.approx(0.5), pytest.approx(1.3))


def test_closest_point_is_never_beaten_by_a_dense_sampling():
    gen = torch.Generator().manual_seed(0)
    tri = torch.randn(200, 3, 3, generator=gen, dtype=torch.float64)
    pts = torch.randn(200, 3, generator=gen, dtype=torch.float64) * 2
    near = closest_points_on_triangles(pts, tri)
    d = (near - pts).norm(dim=-1)
    n = 60
    i, j = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    keep = i + j <= n
    u, v = (i[keep] / n).double(), (j[keep] / n).double()
    bary = torch.stack([1 - u - v, u, v], -1)  # (S, 3)
    samples = torch.einsum("sk,tkc->tsc", bary, tri)  # (T, S, 3)
    sampled = (samples - pts[:, None]).norm(dim=-1).amin(1)
    assert (d <= sampled + 1e-12).all()
    edge = (tri - tri.roll(1, 1)).norm(dim=-1).amax(1)
    assert ((sampled - d) <= edge / n + 1e-12).all()


def _surface(n: int = 9, dtype=torch.float64):
    c = torch.linspace(-1, 1, n, dtype=dtype)
    y, x = torch.meshgrid(c, c, indexing="ij")
    z = 0.3 * torch.sin(2 * x) * torch.cos(1.5 * y) + 0.2 * x**2
    vertices = torch.stack([x, y, z], -1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c_, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat(
        [torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c_], -1).reshape(-1, 3)]
    )
    return vertices, faces


def _samples(vertices, faces, per_face: int, gen):
    w = torch.rand(faces.shape[0], per_face, 3, generator=gen, dtype=vertices.dtype)
    w = w / w.sum(-1, keepdim=True)
    return torch.einsum("fsk,fkc->fsc", w, vertices[faces]).reshape(-1, 3)


def test_mesh_distance_is_exact_whatever_the_candidate_count():
    gen = torch.Generator().manual_seed(1)
    vertices, faces = _surface()
    pts = torch.randn(150, 3, generator=gen, dtype=torch.float64) * 0.8
    full = closest_points_on_triangles(pts[:, None], vertices[faces][None])
    brute = (full - pts[:, None]).norm(dim=-1).amin(1)
    for k, chunk in ((1, 1 << 22), (8, 500), (32, 1 << 22), (1000, 1 << 22)):
        got = point_to_mesh_distance(pts, vertices, faces, candidates=k, chunk_elements=chunk)
        assert torch.allclose(got.distances, brute, atol=1e-12)
        assert torch.allclose((got.closest - pts).norm(dim=-1), brute, atol=1e-12)
        on = closest_points_on_triangles(got.closest, vertices[faces[got.face_index]])
        assert torch.allclose(on, got.closest, atol=1e-12)


def test_mesh_distance_checks_inputs():
    vertices, faces = _surface(3)
    with pytest.raises(EmorigError, match="faces"):
        point_to_mesh_distance(torch.zeros(1, 3), vertices, faces + 100)
    with pytest.raises(EmorigError, match="points"):
        point_to_mesh_distance(torch.zeros(1, 2), vertices, faces)


def _similarity(gen, dtype=torch.float64):
    rot = axis_angle_to_matrix(torch.randn(3, generator=gen, dtype=dtype))
    return 1.7, rot, torch.tensor([0.3, -2.0, 5.0], dtype=dtype)


def test_umeyama_recovers_a_similarity_and_never_reflects():
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    s, rot, t = _similarity(gen)
    tgt = s * src @ rot.T + t
    fit = umeyama(src, tgt)
    assert fit.scale == pytest.approx(s)
    assert torch.allclose(fit.rotation, rot, atol=1e-10)
    assert torch.allclose(fit.translation, t, atol=1e-10)
    assert torch.allclose(fit.apply(src), tgt, atol=1e-10)
    mirrored = umeyama(src, src * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    assert float(torch.det(mirrored.rotation)) == pytest.approx(1.0)
    rigid = umeyama(src, tgt, with_scale=False)
    assert rigid.scale == 1.0
    assert torch.allclose(rigid.rotation, rot, atol=1e-10)


def test_scan_of_the_same_mesh_moved_and_scaled_has_zero_error():
    gen = torch.Generator().manual_seed(3)
    vertices, faces = _surface()
    s, rot, t = _similarity(gen)
    move = lambda p: s * p @ rot.T + t  # noqa: E731
    scan = move(torch.cat([vertices, _samples(vertices, faces, 4, gen)]))
    landmarks = torch.tensor([10, 16, 30, 40, 50, 64, 70])
    err = now_scan_to_mesh_error(
        scan, move(vertices[landmarks]), vertices, faces, vertices[landmarks]
    )
    assert err.mean < 1e-9
    assert err.median < 1e-9
    assert err.std < 1e-9
    assert err.distances.shape == (scan.shape[0],)
    assert err.alignment.scale == pytest.approx(s)


def test_scan_offset_from_a_plane_by_a_known_distance():
    gen = torch.Generator().manual_seed(4)
    c = torch.linspace(-1, 1, 5, dtype=torch.float64)
    y, x = torch.meshgrid(c, c, indexing="ij")
    vertices = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(-1, 3)
    idx = torch.arange(25).reshape(5, 5)
    a, b, c_, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat(
        [torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c_], -1).reshape(-1, 3)]
    )
    scan = torch.rand(400, 3, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    scan[:, 2] = torch.where(torch.arange(400) % 2 == 0, 0.01, -0.03)
    landmarks = torch.tensor([0, 4, 6, 12, 18, 20, 24])
    err = now_scan_to_mesh_error(scan, vertices[landmarks], vertices, faces, vertices[landmarks])
    assert err.mean == pytest.approx(0.02)
    assert err.median == pytest.approx(0.02)  # the mean of the two middle values
    assert err.std == pytest.approx(0.01)


def test_icp_refines_a_poor_landmark_alignment():
    gen = torch.Generator().manual_seed(5)
    vertices, faces = _surface(11)
    s, rot, t = _similarity(gen)
    move = lambda p: s * p @ rot.T + t  # noqa: E731
    inner = (vertices[:, :2].abs() < 0.7).all(1)
    scan = move(torch.cat([vertices[inner], _samples(vertices, faces, 2, gen)]))
    landmarks = torch.tensor([12, 20, 36, 60, 84, 100, 108])
    noisy = move(vertices[landmarks]) + torch.randn(7, 3, generator=gen, dtype=torch.float64) * 0.05
    rough = now_scan_to_mesh_error(scan, noisy, vertices, faces, vertices[landmarks])
    fine = now_scan_to_mesh_error(
        scan, noisy, vertices, faces, vertices[landmarks], icp_iterations=8
    )
    assert rough.mean > 0.01
    assert fine.mean < rough.mean / 3

from pathlib import Path

import numpy as np
import pytest
import torch

from emorig.flame.data import FlameData, HeadAssets, LandmarkEmbedding
from emorig.flame.model import FlameModel
from emorig.geometry.landmarks import vertices_to_landmarks

UPSTREAM = Path(__file__).resolve().parents[3] / "shared" / "upstream-data" / "deca"


def tiny_flame(v: int = 40, n_shape: int = 6, n_exp: int = 4, seed: int = 0) -> FlameData:
    rng = np.random.default_rng(seed)
    faces = np.stack([np.arange(v - 2), np.arange(1, v - 1), np.arange(2, v)], 1)
    weights = rng.random((v, 5))
    reg = rng.random((5, v))
    return FlameData(
        v_template=rng.normal(size=(v, 3)).astype(np.float32) * 0.1,
        faces=faces.astype(np.int64),
        shapedirs=rng.normal(size=(v, 3, n_shape)).astype(np.float32) * 0.01,
        exprdirs=rng.normal(size=(v, 3, n_exp)).astype(np.float32) * 0.01,
        posedirs=rng.normal(size=(v, 3, 36)).astype(np.float32) * 0.01,
        j_regressor=(reg / reg.sum(1, keepdims=True)).astype(np.float32),
        weights=(weights / weights.sum(1, keepdims=True)).astype(np.float32),
        parents=np.array([-1, 0, 1, 1, 1]),
        name="tiny",
    ).validate("tiny")


def tiny_landmarks(n_faces: int, seed: int = 1) -> LandmarkEmbedding:
    rng = np.random.default_rng(seed)
    b = rng.random((79, 17, 3))
    b /= b.sum(-1, keepdims=True)
    s = rng.random((51, 3))
    s /= s.sum(-1, keepdims=True)
    return LandmarkEmbedding(
        static_faces=rng.integers(0, n_faces, 51),
        static_bary=s,
        dynamic_faces=rng.integers(0, n_faces, (79, 17)),
        dynamic_bary=b,
        full_faces=rng.integers(0, n_faces, 68),
        full_bary=np.concatenate([b[0], s]),
    )


@pytest.fixture(scope="module")
def model():
    flame = tiny_flame()
    return FlameModel(HeadAssets(flame, landmarks=tiny_landmarks(flame.faces.shape[0])))


def zeros(b, model):
    return (
        torch.zeros(b, model.n_shape),
        torch.zeros(b, model.n_expression),
        torch.zeros(b, 3),
        torch.zeros(b, 3),
    )


def test_rest_pose_is_template(model):
    out = model(*zeros(3, model))
    assert out.vertices.shape == (3, model.n_vertices, 3)
    assert torch.allclose(out.vertices, model.v_template.expand(3, -1, -1), atol=1e-6)
    assert out.joints.shape == (3, 5, 3)
    assert out.landmarks2d.shape == (3, 68, 3)
    assert out.landmarks3d.shape == (3, 68, 3)
    assert out.mediapipe is None


def test_fewer_coefficients_mean_leading_components(model):
    s = torch.randn(2, 3)
    e = torch.randn(2, 2)
    short = model(s, e, torch.zeros(2, 3), torch.zeros(2, 3)).vertices
    padded = torch.nn.functional.pad
    full = model(
        padded(s, (0, model.n_shape - 3)),
        padded(e, (0, model.n_expression - 2)),
        torch.zeros(2, 3),
        torch.zeros(2, 3),
    ).vertices
    assert torch.allclose(short, full)
    with pytest.raises(ValueError, match="coefficients"):
        model(
            torch.zeros(1, model.n_shape + 1),
            torch.zeros(1, 1),
            torch.zeros(1, 3),
            torch.zeros(1, 3),
        )
    with pytest.raises(ValueError, match="jaw_pose"):
        model(torch.zeros(1, 2), torch.zeros(1, 1), torch.zeros(1, 3), torch.zeros(2, 3))


def test_translation_and_float64():
    flame = tiny_flame()
    m64 = FlameModel(
        HeadAssets(flame, landmarks=tiny_landmarks(flame.faces.shape[0])), dtype=torch.float64
    )
    b = 2
    args = [
        torch.randn(b, 6, dtype=torch.float64),
        torch.randn(b, 4, dtype=torch.float64),
        torch.randn(b, 3, dtype=torch.float64) * 0.3,
        torch.randn(b, 3, dtype=torch.float64),
    ]
    t = torch.randn(b, 3, dtype=torch.float64)
    a = m64(*args)
    moved = m64(*args, translation=t)
    assert a.vertices.dtype == torch.float64
    for field in ("vertices", "joints", "landmarks2d", "landmarks3d"):
        assert torch.allclose(getattr(moved, field), getattr(a, field) + t[:, None])


def test_contour_row_follows_neck_and_root_yaw(model):
    b = 1
    s, e, g, j = zeros(b, model)
    for root_deg, neck_deg, row in (
        (20.0, 0.0, 20),
        (-20.0, 0.0, 59),
        (15.0, 10.0, 25),
        (50.0, 0.0, 39),
        (-45.0, 0.0, 78),
    ):
        g = torch.tensor([[0.0, np.radians(root_deg), 0.0]])
        neck = torch.tensor([[0.0, np.radians(neck_deg), 0.0]])
        out = model(s, e, g, j, neck_pose=neck)
        expected = vertices_to_landmarks(
            out.vertices, model.faces, model.dynamic_faces[row], model.dynamic_bary[row]
        )
        assert torch.allclose(out.landmarks2d[:, :17], expected), (root_deg, neck_deg)
        static = vertices_to_landmarks(
            out.vertices, model.faces, model.static_faces, model.static_bary
        )
        assert torch.allclose(out.landmarks2d[:, 17:], static)


def test_gradients_reach_every_input(model):
    args = [
        torch.randn(2, 6, requires_grad=True),
        torch.randn(2, 4, requires_grad=True),
        (torch.randn(2, 3) * 0.2).requires_grad_(),
        (torch.randn(2, 3) * 0.2).requires_grad_(),
    ]
    out = model(*args, eye_pose=torch.zeros(2, 6, requires_grad=True))
    (out.vertices.sum() + out.landmarks2d.sum()).backward()
    for a in args:
        assert a.grad is not None
        assert a.grad.abs().sum() > 0


def test_jaw_pose_only_moves_jaw_weighted_vertices():
    flame = tiny_flame()
    w = np.zeros_like(flame.weights)
    w[:, 1] = 1.0
    w[:5] = 0.0
    w[:5, 2] = 1.0
    import dataclasses

    flame = dataclasses.replace(flame, weights=w, posedirs=np.zeros_like(flame.posedirs))
    m = FlameModel(flame)
    s, e, g, _ = zeros(1, m)
    out = m(s, e, g, torch.tensor([[0.3, 0.0, 0.0]]))
    moved = (out.vertices[0] - m.v_template).norm(dim=-1) > 1e-6
    assert moved[:5].all()
    assert not moved[5:].any()


@pytest.mark.needs_upstream_data
def test_real_embedding_contour_hugs_far_silhouette():
    """DECA's real landmark table on the real FLAME topology: at +30 degrees yaw the far-side
    contour landmarks lie on the head's silhouette, which pins down the yaw sign convention."""
    if not (UPSTREAM / "landmark_embedding.npy").exists():
        pytest.skip("upstream DECA data not present")
    from emorig.io.flame_files import read_landmark_embedding
    from emorig.io.obj import read_obj

    verts, faces, _ = read_obj(UPSTREAM / "head_template.obj")
    verts = verts - verts.mean(0)
    v = verts.shape[0]
    weights = np.zeros((v, 5), dtype=np.float32)
    weights[:, 1] = 1.0
    flame = FlameData(
        v_template=verts,
        faces=faces,
        shapedirs=np.zeros((v, 3, 1), np.float32),
        exprdirs=np.zeros((v, 3, 1), np.float32),
        posedirs=np.zeros((v, 3, 36), np.float32),
        j_regressor=np.full((5, v), 1.0 / v, np.float32),
        weights=weights,
        parents=np.array([-1, 0, 1, 1, 1]),
        name="real topology",
    )
    emb = read_landmark_embedding(UPSTREAM / "landmark_embedding.npy")
    m = FlameModel(HeadAssets(flame, landmarks=emb))
    for yaw, far in ((30.0, [12, 14, 16]), (-30.0, [0, 2, 4])):
        g = torch.tensor([[0.0, np.radians(yaw), 0.0]])
        out = m(torch.zeros(1, 1), torch.zeros(1, 1), g, torch.zeros(1, 3))
        vv, lm = out.vertices[0], out.landmarks2d[0]
        for k in far:
            band = (vv[:, 1] - lm[k, 1]).abs() < 0.004
            side = torch.sign(lm[k, 0] - lm[8, 0])
            extreme = (vv[band, 0] * side).max() * side
            assert abs(float(lm[k, 0] - extreme)) < 0.004, (yaw, k)


def test_mediapipe_landmarks_follow_the_embedding():
    from emorig.flame.data import MediapipeEmbedding

    flame = tiny_flame()
    rng = np.random.default_rng(3)
    bary = rng.random((7, 3))
    bary /= bary.sum(1, keepdims=True)
    emb = MediapipeEmbedding(rng.integers(0, flame.faces.shape[0], 7), bary, np.arange(7) * 10)
    m = FlameModel(HeadAssets(flame, mediapipe=emb))
    out = m(torch.randn(2, 3), torch.randn(2, 2), torch.zeros(2, 3), torch.zeros(2, 3))
    expected = vertices_to_landmarks(out.vertices, m.faces, m.mediapipe_faces, m.mediapipe_bary)
    assert out.mediapipe.shape == (2, 7, 3)
    assert torch.allclose(out.mediapipe, expected)
    assert out.landmarks2d is None

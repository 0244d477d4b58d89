"""The built-in synthetic head: FLAME format, determinism, geometry and what each named
component does (measured on its own landmarks)."""

import numpy as np
import pytest
import torch

from emorig.flame.builtin import (
    ALBEDO_COMPONENTS,
    EXPRESSION_COMPONENTS,
    SHAPE_COMPONENTS,
    build_builtin_head,
    builtin_head,
    expression_index,
)
from emorig.flame.builtin.mesh import PART_LEFT_EYE, PART_MOUTH, PART_RIGHT_EYE, build_mesh
from emorig.flame.builtin.sculpt import ANATOMY
from emorig.flame.model import FlameModel
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

# iBUG 68 mirror partners (subject's left <-> right)
MIRROR68 = (
    list(range(16, -1, -1))
    + list(range(26, 16, -1))
    + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
    + [64, 63, 62, 61, 60, 67, 66, 65]
)


@pytest.fixture(scope="module")
def head():
    return builtin_head()


@pytest.fixture(scope="module")
def flame(head):
    return FlameModel(head, dtype=torch.float64)


def pose(flame, expression=None, jaw=0.0, yaw=0.0, shape=None, eye_pose=None):
    e = torch.zeros(1, flame.n_expression, dtype=torch.float64)
    for name, value in (expression or {}).items():
        e[0, expression_index(name)] = value
    s = torch.zeros(1, flame.n_shape, dtype=torch.float64) if shape is None else shape
    g = torch.tensor([[0.0, yaw, 0.0]], dtype=torch.float64)
    j = torch.tensor([[jaw, 0.0, 0.0]], dtype=torch.float64)
    return flame(s, e, g, j, eye_pose=eye_pose)


def lm(out):
    return out.landmarks3d[0].numpy()


def test_flame_format(head):
    f = head.flame
    assert f.synthetic
    assert "synthetic" in f.name
    assert f.parents.tolist() == [-1, 0, 1, 1, 1]
    assert f.shapedirs.shape[2] == 300
    assert f.exprdirs.shape[2] == 100
    assert f.posedirs.shape == (f.n_vertices, 3, 36)
    assert np.allclose(f.weights.sum(1), 1.0, atol=1e-6)
    assert f.weights.min() >= -1e-6
    assert np.allclose(f.j_regressor.sum(1), 1.0, atol=1e-5)
    joints = f.j_regressor @ f.v_template
    expected = [
        ANATOMY.root_joint,
        ANATOMY.neck_joint,
        ANATOMY.jaw_joint,
        ANATOMY.eye(+1),
        ANATOMY.eye(-1),
    ]
    assert np.allclose(joints, np.array(expected), atol=1e-6)
    assert head.uv is not None
    assert head.uv.uv.min() >= 0
    assert head.uv.uv.max() <= 1
    assert head.albedo.mean.shape == (256, 256, 3)
    assert head.albedo.n_components == 50
    assert head.albedo.mean.min() >= 0.0
    assert head.albedo.mean.max() <= 1.0
    assert len(SHAPE_COMPONENTS) >= 12
    assert len(EXPRESSION_COMPONENTS) >= 12
    assert len(ALBEDO_COMPONENTS) >= 8


def test_deterministic():
    a = builtin_head()
    b = build_builtin_head()
    assert np.array_equal(a.flame.v_template, b.flame.v_template)
    assert np.array_equal(a.flame.exprdirs, b.flame.exprdirs)
    assert np.array_equal(a.flame.shapedirs[..., 250], b.flame.shapedirs[..., 250])
    assert np.array_equal(a.albedo.basis[..., 40], b.albedo.basis[..., 40])
    assert np.array_equal(a.landmarks.dynamic_faces, b.landmarks.dynamic_faces)


def test_mirror_symmetric_template_and_landmarks(head, flame):
    mesh = build_mesh()
    v = mesh.vertices
    assert np.abs(v[mesh.mirror] * [-1, 1, 1] - v).max() < 1e-9
    pts = lm(pose(flame))
    assert np.abs(pts[MIRROR68] * [-1, 1, 1] - pts).max() < 1.5e-3


def test_topology_closed_except_neck_and_mouth():
    mesh = build_mesh()
    edges = np.sort(
        np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]),
        axis=1,
    )
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() == 2, "an edge is shared by more than two faces"
    boundary = np.unique(uniq[counts == 1])
    n_col = mesh.theta.size
    neck = np.arange(n_col)  # ring 0
    slit = np.flatnonzero((mesh.ring == mesh.mouth_ring) & np.isin(mesh.column, mesh.mouth_columns))
    assert set(boundary.tolist()) <= set(neck.tolist()) | set(slit.tolist())
    for part in (PART_LEFT_EYE, PART_RIGHT_EYE, PART_MOUTH):
        assert not np.isin(np.flatnonzero(mesh.part == part), boundary).any()


def test_skin_faces_point_outwards():
    mesh = build_mesh()
    f = mesh.faces[(mesh.part[mesh.faces] == 0).all(1)]
    v = mesh.vertices
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    out = v[f].mean(1) - np.asarray(ANATOMY.cast_center)
    assert ((n * out).sum(1) > 0).mean() > 0.99


def test_rest_landmarks_on_their_features(flame):
    pts = lm(pose(flame))
    assert np.argmax(pts[:, 2]) == 30  # nose tip is the most forward point
    eye_l = pts[42:48].mean(0)
    assert np.linalg.norm(eye_l[:2] - ANATOMY.eye(+1)[:2]) < 0.004
    assert pts[39, 0] < 0 < pts[42, 0]  # iBUG 36-41 is the subject's right eye
    assert pts[48, 0] < 0 < pts[54, 0]
    assert pts[8, 1] < pts[57, 1] < pts[51, 1] < pts[33, 1] < pts[27, 1]


def _eye_opening(pts, side):
    pairs = [(37, 41), (38, 40)] if side == "right" else [(43, 47), (44, 46)]
    return float(np.mean([pts[a, 1] - pts[b, 1] for a, b in pairs]))


def test_expressions_do_what_their_names_say(flame):
    rest = lm(pose(flame))
    move = {name: lm(pose(flame, {name: 1.0})) - rest for name, _ in EXPRESSION_COMPONENTS}
    mm = 1e-3
    # smile: corners up and outwards
    assert move["smile"][48, 1] > 3 * mm
    assert move["smile"][54, 1] > 3 * mm
    assert move["smile"][54, 0] > 2 * mm
    assert move["smile"][48, 0] < -2 * mm
    # frown: inner brows down and together
    assert move["frown"][21, 1] < -2 * mm
    assert move["frown"][22, 1] < -2 * mm
    assert (rest[22, 0] + move["frown"][22, 0]) - (rest[21, 0] + move["frown"][21, 0]) < (
        rest[22, 0] - rest[21, 0] - 2 * mm
    )
    assert move["brow_raise"][17:27, 1].min() > 3 * mm
    assert move["inner_brow_raise"][21, 1] > 2 * mm > move["inner_brow_raise"][17, 1]
    assert move["sad"][48, 1] < -2 * mm
    assert move["sad"][54, 1] < -2 * mm
    assert move["lip_pucker"][48:60, 2].mean() > 4 * mm
    assert move["lip_pucker"][54, 0] < -2 * mm
    assert move["mouth_stretch"][54, 0] > 4 * mm
    assert move["smirk_left"][54, 1] > 3 * mm
    assert abs(move["smirk_left"][48, 1]) < 0.5 * mm
    assert move["upper_lip_raise"][51, 1] > 2 * mm
    assert move["lower_lip_down"][57, 1] < -2 * mm
    assert move["mouth_shift"][51, 0] > 2 * mm
    for name in ("smile", "frown", "blink", "lip_pucker", "sad"):
        # expressions are local to the face: the back of the head never moves
        v = pose(flame, {name: 1.0}).vertices[0].numpy()
        back = flame.v_template.numpy()[:, 2] < -0.04
        assert np.abs(v[back] - flame.v_template.numpy()[back]).max() < 1e-9


def test_blink_closes_and_widen_opens_the_eyes(flame):
    rest = lm(pose(flame))
    for side in ("left", "right"):
        assert _eye_opening(rest, side) > 5e-3
        assert _eye_opening(lm(pose(flame, {"blink": 1.0})), side) < 0.15 * _eye_opening(rest, side)
        assert _eye_opening(lm(pose(flame, {"eye_widen": 1.0})), side) > 1.2 * _eye_opening(
            rest, side
        )
    wink = lm(pose(flame, {"blink_left": 1.0}))
    assert _eye_opening(wink, "left") < 0.15 * _eye_opening(rest, "left")
    assert abs(_eye_opening(wink, "right") - _eye_opening(rest, "right")) < 1e-4


def test_jaw_opens_the_mouth_as_an_ellipse(flame):
    rest = lm(pose(flame))
    prev = 0.0
    for angle in (0.1, 0.2, 0.3):
        pts = lm(pose(flame, jaw=angle))
        gap = pts[62, 1] - pts[66, 1]
        assert gap > prev + 3e-3
        prev = gap
        assert abs(pts[62, 1] - rest[62, 1]) < 1e-3  # upper lip mid-line stays
        side_gap = pts[61, 1] - pts[67, 1]
        assert 0.3 * gap < side_gap < gap  # narrower towards the corners


def test_eyeballs_rigid_under_identity_and_still_under_expression(head, flame):
    mesh = build_mesh()
    eye = np.flatnonzero(mesh.part == PART_LEFT_EYE)
    rest = flame.v_template.numpy()[eye]
    torch.manual_seed(0)
    for _ in range(3):
        s = torch.randn(1, flame.n_shape, dtype=torch.float64)
        v = pose(flame, shape=s).vertices[0].numpy()[eye]
        d0 = np.linalg.norm(rest[:, None] - rest[None], axis=-1)
        d1 = np.linalg.norm(v[:, None] - v[None], axis=-1)
        assert np.abs(d0 - d1).max() < 1e-9
    exprdirs = head.flame.exprdirs
    for part in (PART_LEFT_EYE, PART_RIGHT_EYE, PART_MOUTH):
        assert np.abs(exprdirs[mesh.part == part]).max() == 0.0


def test_eye_pose_turns_only_the_eyeballs(flame):
    mesh = build_mesh()
    out = pose(flame, eye_pose=torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.3, 0.0]], dtype=torch.float64))
    moved = np.linalg.norm(out.vertices[0].numpy() - flame.v_template.numpy(), axis=1) > 1e-4
    eyes = np.isin(mesh.part, [PART_LEFT_EYE, PART_RIGHT_EYE])
    assert moved[eyes].mean() > 0.9
    assert not moved[~eyes].any()
    exact = np.linalg.norm(out.vertices[0].numpy() - flame.v_template.numpy(), axis=1)
    assert exact[~eyes].max() < 1e-12


def test_identity_components_change_the_head(flame):
    rest = flame.v_template.numpy()
    for k, (name, _) in enumerate(SHAPE_COMPONENTS):
        s = torch.zeros(1, flame.n_shape, dtype=torch.float64)
        s[0, k] = 1.0
        d = np.linalg.norm(pose(flame, shape=s).vertices[0].numpy() - rest, axis=1).max()
        assert 1e-3 < d < 1.5e-2, name
    s = torch.zeros(1, flame.n_shape, dtype=torch.float64)
    s[0, 0] = 1.0  # head_size
    v = pose(flame, shape=s).vertices[0].numpy()
    assert np.ptp(v[:, 1]) > np.ptp(rest[:, 1]) * 1.03


def test_far_side_contour_follows_the_silhouette(flame):
    for yaw, far in ((np.radians(30), [12, 14, 16]), (np.radians(-30), [0, 2, 4])):
        out = pose(flame, yaw=yaw)
        v, pts = out.vertices[0].numpy(), out.landmarks2d[0].numpy()
        for k in far:
            band = np.abs(v[:, 1] - pts[k, 1]) < 0.004
            side = np.sign(pts[k, 0] - pts[8, 0])
            extreme = (v[band, 0] * side).max() * side
            assert abs(pts[k, 0] - extreme) < 0.006, (yaw, k)


def test_render_looks_like_this_head(head):
    """Texture, geometry and landmarks line up: the iris is dark, the lips red, the skin
    skin-coloured at the pixels the landmarks point to."""
    r = FaceRenderer(head)
    code = FaceCode.neutral(1, camera=(9.0, 0.0, 0.0))
    out = r(code, 256)
    albedo = out.buffers.albedo[0]
    px = ((out.landmarks[0] + 1) * 128).long().clamp(0, 255)

    iris = (out.landmarks[0, 37] + out.landmarks[0, 40]) / 2
    ix, iy = ((iris + 1) * 128).long()
    assert albedo[:, iy, ix].sum() < 1.2  # dark iris
    lip = albedo[:, px[51, 1] + 2, px[51, 0]]
    cheek = albedo[:, px[3, 1] - 20, px[3, 0] + 25]
    assert lip[0] / lip[1] > cheek[0] / cheek[1] + 0.2  # lips redder than skin
    assert 0.3 < float(out.buffers.mask.mean()) < 0.7

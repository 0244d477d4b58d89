import math

import torch

from emorig.geometry.lbs import blend_shapes, lbs, rigid_transform_chain, vertices_to_joints

F64 = torch.float64


def _run(pose, coeffs=None, dirs=None, posedirs=None):
    v_template = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=F64)
    # joint 0 at (0, 0, 0) = v1 - v0 - (0, 1, 0)... keep it exactly linear: J = A v with
    # J0 = v0 - v0 = 0 and J1 = v1 - v0 = (0, 1, 0)
    j_regressor = torch.tensor([[0.0, 0.0], [-1.0, 1.0]], dtype=F64)
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    parents = torch.tensor([-1, 0])
    k = 1
    coeffs = torch.zeros(1, k, dtype=F64) if coeffs is None else coeffs
    dirs = torch.zeros(2, 3, k, dtype=F64) if dirs is None else dirs
    posedirs = torch.zeros(9, 6, dtype=F64) if posedirs is None else posedirs
    return lbs(coeffs, pose, v_template, dirs, posedirs, j_regressor, parents, weights)


def test_rest_pose_is_identity():
    verts, joints = _run(torch.zeros(1, 2, 3, dtype=F64))
    assert torch.allclose(verts, torch.tensor([[[1.0, 0, 0], [1.0, 1, 0]]], dtype=F64))
    assert torch.allclose(joints, torch.tensor([[[0.0, 0, 0], [0.0, 1, 0]]], dtype=F64))


def test_child_rotation_hand_computed():
    # child turns 90 degrees about z: (1, 1) relative (1, 0) -> (0, 1) -> world (0, 2)
    pose = torch.zeros(1, 2, 3, dtype=F64)
    pose[0, 1, 2] = math.pi / 2
    verts, joints = _run(pose)
    assert torch.allclose(verts[0, 1], torch.tensor([0.0, 2.0, 0.0], dtype=F64), atol=1e-12)
    assert torch.allclose(verts[0, 0], torch.tensor([1.0, 0.0, 0.0], dtype=F64), atol=1e-12)
    assert torch.allclose(joints[0, 1], torch.tensor([0.0, 1.0, 0.0], dtype=F64))


def test_root_and_child_rotation_compose():
    pose = torch.zeros(1, 2, 3, dtype=F64)
    pose[0, 0, 2] = math.pi / 2  # root: everything turns 90 degrees about z
    pose[0, 1, 2] = math.pi / 2
    verts, joints = _run(pose)
    assert torch.allclose(verts[0, 0], torch.tensor([0.0, 1.0, 0.0], dtype=F64), atol=1e-12)
    assert torch.allclose(verts[0, 1], torch.tensor([-2.0, 0.0, 0.0], dtype=F64), atol=1e-12)
    assert torch.allclose(joints[0, 1], torch.tensor([-1.0, 0.0, 0.0], dtype=F64), atol=1e-12)


def test_blend_shapes_and_pose_correctives_hand_computed():
    dirs = torch.zeros(2, 3, 1, dtype=F64)
    dirs[1, 0, 0] = 0.5  # coefficient 2 moves vertex 1 by +1 in x (and the child joint with it)
    pose = torch.zeros(1, 2, 3, dtype=F64)
    pose[0, 1, 2] = math.pi / 2
    posedirs = torch.zeros(9, 6, dtype=F64)
    # feature (R - I)[0, 0] = cos(90) - 1 = -1 drives vertex 0 by (0, 0, 3) per unit
    posedirs[0, 0 * 3 + 2] = 3.0
    verts, joints = _run(pose, torch.tensor([[2.0]], dtype=F64), dirs, posedirs)
    # shaped: v1 = (2, 1, 0), child joint = v1 - v0 = (1, 1, 0); v0 gets corrective (0, 0, -3)
    assert torch.allclose(verts[0, 0], torch.tensor([1.0, 0.0, -3.0], dtype=F64), atol=1e-12)
    # v1 relative to the child joint (1, 0, 0) -> rotated (0, 1, 0) -> (1, 2, 0)
    assert torch.allclose(verts[0, 1], torch.tensor([1.0, 2.0, 0.0], dtype=F64), atol=1e-12)
    assert torch.allclose(joints[0, 1], torch.tensor([1.0, 1.0, 0.0], dtype=F64), atol=1e-12)


def test_helpers_shapes():
    c = torch.randn(3, 4)
    d = torch.randn(10, 3, 4)
    assert blend_shapes(c, d).shape == (3, 10, 3)
    assert torch.allclose(blend_shapes(c, d)[1, 2], d[2] @ c[1], atol=1e-6)
    assert vertices_to_joints(torch.rand(5, 10), torch.rand(3, 10, 3)).shape == (3, 5, 3)
    rot = torch.eye(3).expand(2, 5, 3, 3)
    joints = torch.rand(2, 5, 3)
    posed, rel = rigid_transform_chain(rot, joints, torch.tensor([-1, 0, 1, 1, 1]))
    assert torch.allclose(posed, joints)
    assert torch.allclose(rel, torch.eye(4).expand(2, 5, 4, 4), atol=1e-6)


def test_gradcheck_lbs():
    torch.manual_seed(0)
    v, j, k = 6, 3, 2
    v_template = torch.randn(v, 3, dtype=F64)
    dirs = torch.randn(v, 3, k, dtype=F64)
    posedirs = torch.randn(9 * (j - 1), 3 * v, dtype=F64) * 0.1
    j_reg = torch.rand(j, v, dtype=F64)
    j_reg = j_reg / j_reg.sum(1, keepdim=True)
    parents = torch.tensor([-1, 0, 1])
    w = torch.rand(v, j, dtype=F64)
    w = w / w.sum(1, keepdim=True)
    coeffs = torch.randn(2, k, dtype=F64, requires_grad=True)
    pose = (torch.randn(2, j, 3, dtype=F64) * 0.5).requires_grad_()

    def fn(c, p):
        return lbs(c, p, v_template, dirs, posedirs, j_reg, parents, w)[0]

    assert torch.autograd.gradcheck(fn, (coeffs, pose))

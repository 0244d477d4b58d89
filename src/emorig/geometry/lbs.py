"""Linear blend skinning for FLAME-format models (the SMPL family's equations).

``v = sum_k w_k G_k (T + B_S(beta) + B_E(psi) + B_P(theta))`` with the rest-pose joints
``J = J_regressor (T + B_S + B_E)``; see Loper et al. 2015, eq. 1-4, and Li et al. 2017 (FLAME).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.geometry.rotations import axis_angle_to_matrix


def blend_shapes(coefficients: Tensor, directions: Tensor) -> Tensor:
    """Linear blend shapes. coefficients (B, K), directions (V, 3, K) -> offsets (B, V, 3)."""
    return torch.einsum("bk,vck->bvc", coefficients, directions)


def vertices_to_joints(j_regressor: Tensor, vertices: Tensor) -> Tensor:
    """Joint locations from vertices. j_regressor (J, V), vertices (B, V, 3) -> (B, J, 3)."""
    return torch.einsum("jv,bvc->bjc", j_regressor, vertices)


def rigid_transform_chain(
    rotations: Tensor, joints: Tensor, parents: Tensor
) -> tuple[Tensor, Tensor]:
    """Compose local joint rotations along the kinematic tree.

    Args:
        rotations: (B, J, 3, 3) local rotation of each joint.
        joints: (B, J, 3) rest-pose joint locations.
        parents: (J,) int64 parent index per joint, ``-1`` for the root; parents precede children.

    Returns:
        posed_joints (B, J, 3) and the relative transforms (B, J, 4, 4) that move a rest-pose
        point rigidly with each joint (the ``G_k`` of LBS, rest pose removed).
    """
    j = joints.shape[1]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.cat(
        [F.pad(rotations, (0, 0, 0, 1)), F.pad(rel.unsqueeze(-1), (0, 0, 0, 1), value=1.0)], -1
    )  # (B, J, 4, 4)
    chain = [local[:, 0]]
    for i in range(1, j):
        chain.append(chain[int(parents[i])] @ local[:, i])
    world = torch.stack(chain, dim=1)
    posed_joints = world[:, :, :3, 3]
    # remove the rest pose: G_k <- G_k - [0 | G_k j_k]
    moved_rest = world[:, :, :3, :3] @ joints.unsqueeze(-1)
    relative = world - F.pad(moved_rest, (3, 0, 0, 1))
    return posed_joints, relative


def lbs(
    coefficients: Tensor,
    pose: Tensor,
    v_template: Tensor,
    directions: Tensor,
    posedirs: Tensor,
    j_regressor: Tensor,
    parents: Tensor,
    weights: Tensor,
) -> tuple[Tensor, Tensor]:
    """Shape, pose-corrective and skinning in one pass.

    Args:
        coefficients: (B, K) shape and expression coefficients, concatenated.
        pose: (B, J, 3) axis-angle per joint (FLAME: root, neck, jaw, left eye, right eye).
        v_template: (V, 3) template vertices.
        directions: (V, 3, K) blend-shape directions matching ``coefficients``.
        posedirs: (9 (J - 1), 3 V) pose-corrective basis (FLAME's ``posedirs`` reshaped to
            (3 V, 9 (J - 1)) and transposed).
        j_regressor: (J, V) dense joint regressor.
        parents: (J,) kinematic tree, ``-1`` for the root.
        weights: (V, J) skinning weights.

    Returns:
        vertices (B, V, 3) and joints (B, J, 3), both posed.
    """
    b = coefficients.shape[0]
    v_shaped = v_template.unsqueeze(0) + blend_shapes(coefficients, directions)
    joints = vertices_to_joints(j_regressor, v_shaped)
    rot = axis_angle_to_matrix(pose)  # (B, J, 3, 3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(b, -1)
    v_posed = v_shaped + (pose_feature @ posedirs).view(b, -1, 3)
    posed_joints, relative = rigid_transform_chain(rot, joints, parents)
    per_vertex = torch.einsum("vj,bjmn->bvmn", weights, relative)  # (B, V, 4, 4)
    vertices = (per_vertex[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + per_vertex[
        ..., :3, 3
    ]
    return vertices, posed_joints

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
    """Linear blend shapes. coefficients (B, K), directions (V, 3, K) -> offsets (B, V, 3).

    One matrix product over the (3 V, K) view of ``directions``.
    """
    v, _, k = directions.shape
    flat = directions.reshape(v * 3, k)
    return (coefficients @ flat.transpose(0, 1)).view(coefficients.shape[0], v, 3)


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
    rotations: Tensor | None = None,
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
        rotations: (B, J, 3, 3) ``axis_angle_to_matrix(pose)`` when the caller already has it.

    Returns:
        vertices (B, V, 3) and joints (B, J, 3), both posed.
    """
    b = coefficients.shape[0]
    v_shaped = v_template.unsqueeze(0) + blend_shapes(coefficients, directions)
    joints = vertices_to_joints(j_regressor, v_shaped)
    rot = axis_angle_to_matrix(pose) if rotations is None else rotations  # (B, J, 3, 3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(b, -1)
    v_posed = v_shaped + (pose_feature @ posedirs).view(b, -1, 3)
    posed_joints, relative = rigid_transform_chain(rot, joints, parents)
    return skin(v_posed, relative, weights), posed_joints


def skin(points: Tensor, relative: Tensor, weights: Tensor) -> Tensor:
    """Blend the joints' rigid transforms per point: ``sum_k w_k G_k p``.

    Args:
        points: (B, V, 3) rest-pose points (shaped and pose-corrected).
        relative: (B, J, 4, 4) transforms from :func:`rigid_transform_chain`.
        weights: (V, J) skinning weights.

    Returns:
        (B, V, 3). The blended transforms come from one (V, J) x (J, 16) product per batch item
        and are applied with one batched 4 x 4 product (measured fastest on CPU among the
        equivalent forms, see ``benchmarks/bench_flame.py``).
    """
    b, j = relative.shape[:2]
    blended = torch.matmul(weights, relative.reshape(b, j, 16)).view(b, -1, 4, 4)
    homogeneous = F.pad(points, (0, 1), value=1.0).unsqueeze(-1)
    return torch.matmul(blended, homogeneous)[:, :, :3, 0]

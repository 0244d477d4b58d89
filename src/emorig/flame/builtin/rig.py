"""Skeleton, joint regressor, skinning weights and pose correctives of the built-in head.

Five joints as in FLAME: root (base of the neck), neck, jaw, left eye, right eye. Joint
locations are regressed from vertices (``J = J_regressor @ v``) with minimum-norm weights
over symmetric vertex sets, so they follow identity changes as FLAME's do.
"""

from __future__ import annotations

import numpy as np

from emorig.flame.builtin.mesh import (
    PART_LEFT_EYE,
    PART_MOUTH,
    PART_RIGHT_EYE,
    PART_SKIN,
    HeadMesh,
)
from emorig.flame.builtin.sculpt import ANATOMY, Anatomy

ROOT, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(5)
PARENTS = np.array([-1, ROOT, NECK, NECK, NECK], dtype=np.int64)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 at ``edge0``, 1 at ``edge1`` (either order), cubic in between."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _min_norm_weights(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights w (K,) of least norm with ``w @ points == target`` and ``sum(w) == 1``."""
    a = np.concatenate([points.T, np.ones((1, points.shape[0]))])  # (4, K)
    b = np.concatenate([target, [1.0]])
    return a.T @ np.linalg.solve(a @ a.T, b)


def joint_regressor(mesh: HeadMesh, anatomy: Anatomy = ANATOMY) -> np.ndarray:
    """(5, V) regressor placing each joint exactly at its anatomical target on the template."""
    v = mesh.vertices
    n = v.shape[0]
    reg = np.zeros((5, n))
    skin = mesh.part == PART_SKIN
    x, y, z = v.T
    theta = np.where(mesh.column >= 0, mesh.theta[np.maximum(mesh.column, 0)], 0.0)
    candidates = {
        ROOT: skin & (mesh.ring <= 1),
        NECK: skin & (y > -0.075) & (y < -0.020) & (np.abs(theta) > np.radians(100)),
        JAW: skin & (np.abs(x) > 0.055) & (y > -0.035) & (y < 0.005) & (z > -0.030) & (z < 0.015),
    }
    targets = {ROOT: anatomy.root_joint, NECK: anatomy.neck_joint, JAW: anatomy.jaw_joint}
    for joint, mask in candidates.items():
        ids = np.flatnonzero(mask)
        if ids.size < 8:
            raise RuntimeError(f"built-in head: too few vertices to regress joint {joint}")
        reg[joint, ids] = _min_norm_weights(v[ids], np.asarray(targets[joint]))
    for joint, label in ((LEFT_EYE, PART_LEFT_EYE), (RIGHT_EYE, PART_RIGHT_EYE)):
        ids = np.flatnonzero(mesh.part == label)
        # the two poles of the eyeball straddle its centre exactly
        reg[joint, ids[0]] = 0.5
        reg[joint, ids[-1]] = 0.5
    return reg


CORNER_JAW_WEIGHT = 0.4  # how much the mouth corners follow the jaw


def jaw_weight(mesh: HeadMesh, anatomy: Anatomy = ANATOMY) -> np.ndarray:
    """(V,) how much each vertex follows the jaw.

    Along the mouth slit the lower lip follows with ``1 - 0.6 (1 - sqrt(1 - t^2))`` and the
    upper lip with ``0.4 (1 - sqrt(1 - t^2))``, ``t`` the distance from the mid-line over the
    half-width of the mouth, so the mouth opens as an ellipse with corners at 0.4. Away from
    the slit both blend smoothly: to 1 over the chin and to 0 over the upper lip and cheeks;
    the influence fades towards the ears and down the throat.
    """
    v = mesh.vertices
    y = v[:, 1]
    w = np.zeros(v.shape[0])
    skin = mesh.part == PART_SKIN
    ring, col = mesh.ring, mesh.column
    on_grid = skin & (ring >= 0)
    theta = np.abs(mesh.theta[np.maximum(col, 0)])
    m = mesh.mouth_ring
    half = abs(mesh.grid[m, mesh.mouth_columns[-1], 0])
    t = np.abs(mesh.grid[m, np.maximum(col, 0), 0]) / half
    tc = np.minimum(t, 1.0)
    bulge = 1.0 - np.sqrt(1.0 - tc**2)
    c = CORNER_JAW_WEIGHT
    lower_side = (ring < m) | mesh.lower_lip
    d_low = np.maximum(m - ring, 0).astype(float)
    d_up = np.maximum(ring - m, 0).astype(float)
    lower = 1.0 - (1.0 - c) * bulge * np.exp(-((d_low / 2.5) ** 2))
    lower = np.where(t > 1.0, 1.0 - (1.0 - c) * np.exp(-((d_low / 2.5) ** 2)), lower)
    upper = c * bulge * np.exp(-((d_up / 3.0) ** 2))
    upper = np.where(t > 1.0, c * np.exp(-((d_up / 3.5) ** 2)), upper)
    profile = np.where(lower_side, lower, upper)
    lateral = smoothstep(np.radians(88.0), np.radians(35.0), theta)
    throat = smoothstep(-0.114, -0.097, y)
    w[on_grid] = (profile * lateral * throat)[on_grid]
    cavity = mesh.part == PART_MOUTH
    cy = v[cavity, 1].mean()
    w[cavity] = smoothstep(cy + 0.004, cy - 0.004, y[cavity])
    return w


def skinning_weights(mesh: HeadMesh, anatomy: Anatomy = ANATOMY) -> np.ndarray:
    """(V, 5) skinning weights; rows sum to one."""
    v = mesh.vertices
    n = v.shape[0]
    w = np.zeros((n, 5))
    jaw = jaw_weight(mesh, anatomy)
    root = smoothstep(-0.095, -0.135, v[:, 1]) * (mesh.part == PART_SKIN)
    jaw = np.minimum(jaw, 1.0 - root)
    w[:, ROOT] = root
    w[:, JAW] = jaw
    w[:, NECK] = 1.0 - root - jaw
    for joint, label in ((LEFT_EYE, PART_LEFT_EYE), (RIGHT_EYE, PART_RIGHT_EYE)):
        eye = mesh.part == label
        w[eye] = 0.0
        w[eye, joint] = 1.0
    return w


def pose_correctives(mesh: HeadMesh, weights: np.ndarray) -> np.ndarray:
    """(V, 3, 36) FLAME-layout pose-corrective basis.

    Entry ``9 (k - 1) + 3 r + c`` multiplies ``(R_k - I)[r, c]`` of joint k. Two correctives:
    opening the jaw (``(R_jaw - I)[2, 1] = sin(angle)``) draws the stretched cheeks inwards
    and down, and pitching the neck (``(R_neck - I)[2, 1]``) pushes the throat skin forward.
    """
    v = mesh.vertices
    out = np.zeros((v.shape[0], 3, 36))
    jaw = weights[:, JAW]
    stretch = 4.0 * jaw * (1.0 - jaw) * (mesh.part == PART_SKIN)
    jaw_entry = 9 * (JAW - 1) + 3 * 2 + 1
    # draw the cheeks in towards the mid-line (a contraction, so columns never cross it)
    out[:, 0, jaw_entry] = -0.12 * v[:, 0] * stretch
    out[:, 1, jaw_entry] = -0.006 * stretch
    neck_mix = 4.0 * weights[:, ROOT] * (1.0 - weights[:, ROOT])
    front = smoothstep(-0.02, 0.02, v[:, 2])
    neck_entry = 9 * (NECK - 1) + 3 * 2 + 1
    out[:, 2, neck_entry] = 0.015 * neck_mix * front
    return out

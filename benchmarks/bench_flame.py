"""Speed of the FLAME layer (shape + expression blend shapes, pose correctives, LBS, 68
landmarks) on a FLAME-sized head, against an upstream-style formulation in the same run.

Usage: ``python benchmarks/bench_flame.py [--quick] [--device cpu|cuda]``

The head has FLAME's size: DECA's ``head_template.obj`` topology (5,023 vertices, 9,976 faces)
with seeded random bases when ``<repo parent>/shared/upstream-data/deca`` exists, otherwise
the built-in head (same code path, about 5.7k vertices). 100 identity and 50 expression
coefficients, as DECA uses.

Baseline: the SMPL-family formulation DECA's FLAME layer uses, written here from the
equations: Rodrigues with the angle ``|r + 1e-8|``, blend shapes through ``einsum``, skinning
as ``matmul(W, A.view(B, J, 16))`` then a batched 4x4 product per vertex.
The ratio printed is baseline time / emorig time (above 1: emorig is faster).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emorig.flame.builtin import builtin_head
from emorig.flame.data import FlameData, HeadAssets
from emorig.flame.model import FlameModel
from emorig.geometry.landmarks import contour_lut_row, vertices_to_landmarks
from timing import time_ms

UPSTREAM = Path(__file__).resolve().parents[2] / "shared/upstream-data/deca"


def flame_sized_head() -> tuple[HeadAssets, str]:
    if (UPSTREAM / "head_template.obj").exists() and (UPSTREAM / "landmark_embedding.npy").exists():
        from emorig.io.flame_files import read_landmark_embedding
        from emorig.io.obj import read_obj

        verts, faces, _ = read_obj(UPSTREAM / "head_template.obj")
        v = verts.shape[0]
        rng = np.random.default_rng(0)
        weights = rng.random((v, 5)).astype(np.float32)
        reg = rng.random((5, v)).astype(np.float32)
        flame = FlameData(
            v_template=verts,
            faces=faces,
            shapedirs=(rng.normal(size=(v, 3, 300)) * 1e-3).astype(np.float32),
            exprdirs=(rng.normal(size=(v, 3, 100)) * 1e-3).astype(np.float32),
            posedirs=(rng.normal(size=(v, 3, 36)) * 1e-3).astype(np.float32),
            j_regressor=reg / reg.sum(1, keepdims=True),
            weights=weights / weights.sum(1, keepdims=True),
            parents=np.array([-1, 0, 1, 1, 1]),
            name="FLAME topology, random bases",
        )
        emb = read_landmark_embedding(UPSTREAM / "landmark_embedding.npy")
        return HeadAssets(flame, landmarks=emb), "DECA head_template.obj (5,023 v, 9,976 f)"
    head = builtin_head()
    return head, f"built-in head ({head.flame.n_vertices} v, {head.flame.faces.shape[0]} f)"


def baseline_rodrigues(rot_vecs: torch.Tensor) -> torch.Tensor:
    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
    direction = rot_vecs / angle
    cos, sin = torch.unsqueeze(torch.cos(angle), 1), torch.unsqueeze(torch.sin(angle), 1)
    rx, ry, rz = torch.split(direction, 1, dim=1)
    zeros = torch.zeros_like(rx)
    k = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)[None]
    return eye + sin * k + (1 - cos) * torch.bmm(k, k)


def baseline_forward(m: FlameModel, shape, expression, pose6):
    """Upstream-style FLAME forward: vertices, contour landmarks and the fixed 68."""
    b = shape.shape[0]
    betas = torch.cat([shape, expression], 1)
    dirs = torch.cat(
        [m.shapedirs[..., : shape.shape[1]], m.exprdirs[..., : expression.shape[1]]], 2
    )
    v_shaped = m.v_template + torch.einsum("bl,mkl->bmk", betas, dirs)
    joints = torch.einsum("bik,ji->bjk", v_shaped, m.j_regressor)
    full_pose = torch.cat(
        [
            pose6[:, :3],
            torch.zeros_like(pose6[:, :3]),
            pose6[:, 3:],
            torch.zeros(b, 6, dtype=shape.dtype, device=shape.device),
        ],
        1,
    )
    rot = baseline_rodrigues(full_pose.view(-1, 3)).view(b, -1, 3, 3)
    eye = torch.eye(3, dtype=shape.dtype, device=shape.device)
    pose_feature = (rot[:, 1:] - eye).view(b, -1)
    v_posed = torch.matmul(pose_feature, m.posedirs).view(b, -1, 3) + v_shaped
    rel = joints.clone()
    rel[:, 1:] -= joints[:, m.parents[1:]]
    tm = torch.cat([F.pad(rot, [0, 0, 0, 1]), F.pad(rel.unsqueeze(-1), [0, 0, 0, 1], value=1)], 3)
    chain = [tm[:, 0]]
    for i in range(1, m.parents.shape[0]):
        chain.append(torch.matmul(chain[int(m.parents[i])], tm[:, i]))
    transforms = torch.stack(chain, 1)
    homo = F.pad(joints.unsqueeze(-1), [0, 0, 0, 1])
    a = transforms - F.pad(torch.matmul(transforms, homo), [3, 0, 0, 0, 0, 0, 0, 0])
    w = m.weights.unsqueeze(0).expand(b, -1, -1)
    t = torch.matmul(w, a.view(b, -1, 16)).view(b, -1, 4, 4)
    v_homo = torch.cat(
        [v_posed, torch.ones(b, v_posed.shape[1], 1, dtype=shape.dtype, device=shape.device)], 2
    )
    verts = torch.matmul(t, v_homo.unsqueeze(-1))[:, :, :3, 0]
    # DECA also returns the yaw-dependent and the fixed 68 landmarks
    yaw = torch.atan2(-rot[:, 0, 2, 0], torch.sqrt(rot[:, 0, 0, 0] ** 2 + rot[:, 0, 1, 0] ** 2))
    row = contour_lut_row(yaw)
    idx = torch.cat([m.dynamic_faces[row], m.static_faces.expand(b, -1)], 1)
    bary = torch.cat([m.dynamic_bary[row], m.static_bary.expand(b, -1, -1)], 1)
    lmk2d = vertices_to_landmarks(verts, m.faces, idx, bary)
    lmk3d = vertices_to_landmarks(verts, m.faces, m.full_faces, m.full_bary)
    return verts, lmk2d, lmk3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    repeats = 5 if args.quick else 20
    head, label = flame_sized_head()
    m = FlameModel(head, n_shape=100, n_expression=50).to(args.device)
    print(f"mesh: {label}; device {args.device}; torch threads {torch.get_num_threads()}")
    gen = torch.Generator().manual_seed(0)
    for b in (1, 64):
        shape = torch.randn(b, 100, generator=gen).to(args.device)
        exp = torch.randn(b, 50, generator=gen).to(args.device)
        pose = (torch.randn(b, 6, generator=gen) * 0.2).to(args.device)
        with torch.inference_mode():
            ours = m(shape, exp, pose[:, :3], pose[:, 3:])
            base = baseline_forward(m, shape, exp, pose)
            err = float((ours.vertices - base[0]).abs().max())
            args_ = (shape, exp, pose[:, :3], pose[:, 3:])
            t_ours = time_ms(lambda a=args_: m(*a), repeats, args.device)[0] / 1000
            t_base = (
                time_ms(lambda a=(m, shape, exp, pose): baseline_forward(*a), repeats, args.device)[
                    0
                ]
                / 1000
            )
        print(
            f"batch {b:3d}: emorig {1000 * t_ours:7.2f} ms ({1000 * t_ours / b:6.3f} ms/face, "
            f"vertices + 68 contour + 68 fixed landmarks) | upstream-style "
            f"{1000 * t_base:7.2f} ms | ratio {t_base / t_ours:4.2f}x | "
            f"max vertex difference {err:.1e} m"
        )


if __name__ == "__main__":
    main()

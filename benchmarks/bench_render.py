"""Speed and memory of the pure-PyTorch renderer on a FLAME-sized head.

Usage: ``python benchmarks/bench_render.py [--quick] [--device cpu|cuda]``

The mesh is DECA's ``head_template.obj`` (FLAME topology with UVs) when
``<repo parent>/shared/upstream-data/deca/head_template.obj`` exists, read in place with
emorig's OBJ reader, otherwise a procedurally generated closed ellipsoid with the same vertex
count. It is scaled so the head covers about half of the image, as a DECA crop does.

Reported: milliseconds per image (median of timed runs after warm-up, default thread count)
for ``rasterize`` alone and for the full ``MeshRenderer.forward`` buffer set, the process's
peak resident memory, and the throughput ratio of our rasterizer over a naive dense one
(every face tested against every pixel, in chunks) measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import resource
import sys
from pathlib import Path

import torch

from emorig.geometry import orthographic_project
from emorig.render import MeshRenderer, rasterize
from timing import time_ms

TARGET_MS_PER_IMAGE = 20.0
TARGET_PEAK_MB = 2048.0
TEMPLATE = Path(__file__).resolve().parents[2] / "shared/upstream-data/deca/head_template.obj"
FLAME_VERTICES = 5023


def read_obj(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vertices, texture coordinates, faces and texture faces of an OBJ with UVs."""
    from emorig.io.obj import read_obj as read

    v, f, uv = read(path)
    return (
        torch.from_numpy(v),
        torch.from_numpy(uv.uv),
        torch.from_numpy(f),
        torch.from_numpy(uv.uv_faces),
    )


def ellipsoid(n_vertices: int = FLAME_VERTICES):
    """A closed UV-sphere-like ellipsoid with exactly ``n_vertices`` vertices, CCW outward."""
    rings = 49  # latitude rings between the poles
    per_ring = (n_vertices - 2) // rings
    extra = n_vertices - 2 - rings * per_ring
    verts, uvs, ring_start = [[0.0, 1.0, 0.0]], [[0.5, 1.0]], []
    for r in range(rings):
        theta = math.pi * (r + 1) / (rings + 1)
        count = per_ring + (1 if r < extra else 0)
        ring_start.append((len(verts), count))
        for k in range(count):
            phi = 2 * math.pi * k / count
            verts.append(
                [math.sin(theta) * math.sin(phi), math.cos(theta), math.sin(theta) * math.cos(phi)]
            )
            uvs.append([k / count, 1 - (r + 1) / (rings + 1)])
    verts.append([0.0, -1.0, 0.0])
    uvs.append([0.5, 0.0])
    faces = []

    def strip(a: list[int], b: list[int]) -> None:  # ring a above ring b, zip by angle
        i = j = 0
        while i < len(a) or j < len(b):
            ai, bj = a[i % len(a)], b[j % len(b)]
            if j >= len(b) or (i < len(a) and (i + 1) / len(a) <= (j + 1) / len(b)):
                faces.append([ai, bj, a[(i + 1) % len(a)]])
                i += 1
            else:
                faces.append([ai, bj, b[(j + 1) % len(b)]])
                j += 1

    top = ring_start[0]
    first = list(range(top[0], top[0] + top[1]))
    faces += [[0, first[k], first[(k + 1) % len(first)]] for k in range(len(first))]
    for (s0, c0), (s1, c1) in itertools.pairwise(ring_start):
        strip(list(range(s0, s0 + c0)), list(range(s1, s1 + c1)))
    s, c = ring_start[-1]
    last = len(verts) - 1
    faces += [[s + k, last, s + (k + 1) % c] for k in range(c)]
    v = torch.tensor(verts) * torch.tensor([0.08, 0.11, 0.09])
    f = torch.tensor(faces)
    return v, torch.tensor(uvs), f, f.clone()


def head_mesh():
    if TEMPLATE.exists():
        return (*read_obj(TEMPLATE), f"DECA head_template.obj ({TEMPLATE})")
    return (*ellipsoid(), "procedural ellipsoid (head_template.obj not found)")


def frame(vertices: torch.Tensor, faces: torch.Tensor, coverage: float = 0.5) -> torch.Tensor:
    """DECA camera ``(s, tx, ty)`` centring the mesh, its silhouette ``coverage`` of the image.

    The scale is corrected with the coverage of a first render.
    """
    centre = (vertices.amax(0) + vertices.amin(0)) / 2
    extent = (vertices - centre)[:, :2].abs().amax()
    cam = torch.tensor([[1.0 / extent, -centre[0], -centre[1]]])
    probe = rasterize(orthographic_project(vertices[None], cam), faces, (128, 128))
    covered = float((probe.pix_to_face >= 0).float().mean())
    cam[0, 0] *= math.sqrt(coverage / max(covered, 1e-6))
    return cam


def dense_rasterize(screen: torch.Tensor, faces: torch.Tensor, size: int, chunk: int = 256):
    """Baseline: every face against every pixel centre (vectorised, faces in chunks)."""
    b = screen.shape[0]
    px = (screen[..., 0] + 1) * size / 2
    py = (screen[..., 1] + 1) * size / 2
    c = torch.arange(size, dtype=screen.dtype, device=screen.device) + 0.5
    cx, cy = c[None, None, None, :], c[None, None, :, None]
    best = torch.full((b, size, size), float("inf"), device=screen.device)
    face = torch.full((b, size, size), -1, dtype=torch.long, device=screen.device)
    for s in range(0, faces.shape[0], chunk):
        f = faces[s : s + chunk]
        x = px[:, f][..., None, None]  # (B, n, 3, 1, 1)
        y = py[:, f][..., None, None]
        z = screen[..., 2][:, f][..., None, None]
        e = [
            (x[:, :, i] - cx) * (y[:, :, j] - cy) - (y[:, :, i] - cy) * (x[:, :, j] - cx)
            for i, j in ((1, 2), (2, 0), (0, 1))
        ]
        area = e[0] + e[1] + e[2]
        inside = ((e[0] * area >= 0) & (e[1] * area >= 0) & (e[2] * area >= 0)) & (area != 0)
        depth = (e[0] * z[:, :, 0] + e[1] * z[:, :, 1] + e[2] * z[:, :, 2]) / area
        depth = torch.where(inside, depth, float("inf"))
        d, k = depth.min(1)
        closer = d < best
        best = torch.where(closer, d, best)
        face = torch.where(closer, k + s, face)
    return face, best


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 only, fewer runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    runs = 3 if args.quick else 7

    v, vt, f, ft, source = head_mesh()
    print(f"mesh: {source}: {v.shape[0]} vertices, {f.shape[0]} faces")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    cam = frame(v, f).to(device)
    renderer = MeshRenderer(f, vt, ft).to(device)
    v, faces = v.to(device), f.to(device)
    texture = torch.rand(1, 3, 256, 256, device=device)
    light = torch.zeros(1, 9, 3, device=device)
    light[:, 0] = 3.0

    def inputs(b: int, grad: bool = False):
        verts = v[None].expand(b, -1, -1).clone().requires_grad_(grad)
        tex = texture.expand(b, -1, -1, -1).clone().requires_grad_(grad)
        return verts, orthographic_project(verts, cam.expand(b, 3)), tex, light.expand(b, -1, -1)

    with torch.no_grad():  # settle allocator and thread pool before timing anything
        warm = inputs(16)
        for _ in range(3):
            renderer(*warm, 256)

    print("\nms per image: median (min) of", runs, "runs after warm-up")
    print(
        f"{'size':>5} {'batch':>5} {'coverage':>8} {'rasterize':>16} {'forward (all buffers)':>22}"
    )
    worst = 0.0
    for size in (256,) if args.quick else (224, 256):
        for b in (1, 16):
            verts, screen, tex, sh = inputs(b)
            with torch.no_grad():
                cover = float(rasterize(screen, faces, size).mask.mean())
                r_med, r_min = time_ms(
                    lambda s=screen, n=size: rasterize(s, faces, n), runs, device
                )
                f_med, f_min = time_ms(
                    lambda a=(verts, screen, tex, sh, size): renderer(*a), runs, device
                )
            if b == 16 and size == 256:
                worst = f_med / b
            print(
                f"{size:>5} {b:>5} {cover:>8.2f} {r_med / b:>9.2f} ({r_min / b:>5.2f})"
                f" {f_med / b:>14.2f} ({f_min / b:>5.2f})"
            )

    b = 16
    verts, _, tex, sh = inputs(b, grad=True)

    def train_step() -> None:
        screen = orthographic_project(verts, cam.expand(b, 3))
        out = renderer(verts, screen, tex, sh, 256)
        (out.rendered.mean() + out.normal.mean()).backward()

    t_med, t_min = time_ms(train_step, max(runs // 2, 2), device)
    print(f"forward + backward, 256, batch 16: {t_med / b:.2f} ({t_min / b:.2f}) ms per image")

    # Baseline: a naive dense rasterizer on the same mesh at smaller sizes (its cost grows
    # with pixels x faces). Ratio = dense time / our time for the same image.
    print("\nbaseline: naive dense rasterizer (every face x every pixel, 256-face chunks), batch 1")
    screen = orthographic_project(v[None], cam)
    n_faces = f.shape[0]
    rate = 0.0
    for size in (64,) if args.quick else (64, 128):
        with torch.no_grad():
            dense, _ = time_ms(lambda n=size: dense_rasterize(screen, faces, n), 2, device, 1)
            ours, _ = time_ms(lambda n=size: rasterize(screen, faces, n), runs, device)
        rate = size * size * n_faces / dense  # pixel-face pairs per ms
        print(
            f"  {size}x{size}: dense {dense:7.1f} ms, ours {ours:6.2f} ms:"
            f" ours {dense / ours:5.0f}x faster (dense: {rate / 1e3:.0f}k pixel-face pairs/ms)"
        )
    with torch.no_grad():
        ours, _ = time_ms(lambda: rasterize(screen, faces, 256), runs, device)
    projected = 256 * 256 * n_faces / rate
    print(
        f"  256x256: dense ~{projected:.0f} ms (projected from its throughput), ours {ours:.2f} ms:"
        f" ours ~{projected / ours:.0f}x faster"
    )

    peak = peak_rss_mb()
    print(f"\npeak RSS of this process (all of the above): {peak:.0f} MB")
    ok = worst <= TARGET_MS_PER_IMAGE and peak <= TARGET_PEAK_MB
    print(
        f"verdict: {'PASS' if ok else 'FAIL'}: all buffers at 256x256, batch 16: {worst:.1f} ms"
        f" per image (target <= {TARGET_MS_PER_IMAGE:.0f}); peak RSS {peak:.0f} MB"
        f" (target <= {TARGET_PEAK_MB:.0f})"
    )


if __name__ == "__main__":
    main()

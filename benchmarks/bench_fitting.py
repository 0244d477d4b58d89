"""Speed and accuracy of weight-free fitting on the built-in head (CPU by default).

Usage: ``python benchmarks/bench_fitting.py [--quick] [--threads N]``

Sections, each printed under its own heading (``main`` runs the functions of ``SECTIONS`` in
order; append one there to add a section):

1. ``speed``: seconds per photo of ``fit`` (landmarks + photometric albedo and light, DECA's
   224 crop, photometric stage at 112 px), batches of 8, with the previous settings
   (``fast=False``: every evaluation poses the whole head and renders it; far-side contour at
   full weight) and the current ones, on the same faces in the same run; then where the time
   goes (closed-form initialisation, landmark stage, photometric stage, seconds per
   evaluation) for both.
2. ``accuracy``: the same two settings on synthetic renders with known codes (yaw within
   +-45 degrees, 1 px landmark noise): landmark error against the noise-free landmarks,
   identity coefficient error, worst yaw error, prior scores; and on real photos
   (scikit-image's astronaut, matplotlib's Grace Hopper; skipped when no detector is
   installed): landmark error in pixels of the 224 crop and the prior scores.
3. ``optimisers``: the batched L-BFGS against ``torch.optim.Adam``, ``torch.optim.LBFGS``
   and a naive start, at the same evaluation budget (error ratio = baseline / emorig's landmark
   error, time ratio = baseline / emorig's seconds per image).
4. ``warp_edits``: seconds per ``--method warp`` edit (jaw, smile, yaw, relight) of the fitted
   astronaut at 512^2 and 1024^2 (``bench_warp.py``).

Faces: the built-in head rendered from known random codes (identity N(0, 0.5^2) in the first
20 components, two named expressions, jaw 0-14 degrees, pitch +-10, camera s ~ 9); the targets
are their exact projected landmarks plus 1 px Gaussian noise. Timings are wall-clock medians on
a possibly shared machine; the landmark errors are deterministic.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from emorig.flame.builtin import builtin_head
from emorig.geometry.landmarks import yaw_of_rotation
from emorig.geometry.rotations import (
    axis_angle_to_matrix,
)
from emorig.reconstruct.fitting import (
    DEFAULT_PITCHES,
    DEFAULT_YAWS,
    fit,
    fit_landmarks,
    fit_photometric,
    initialise_pose,
    project_landmarks,
)
from emorig.reconstruct.synthetic_eval import fit_test_codes
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

PX = 112.0


def yaw_degrees(pose: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(yaw_of_rotation(axis_angle_to_matrix(pose)))


def scores(renderer, result, true, clean) -> tuple[float, float]:
    """Mean landmark error against the clean landmarks (px) and the worst yaw error (deg)."""
    lm = project_landmarks(renderer.flame, result.code)
    error = ((lm - clean) * PX).norm(dim=-1).mean()
    yaw = (yaw_degrees(result.code.global_pose) - yaw_degrees(true.global_pose)).abs().max()
    return float(error), float(yaw)


#: The two settings compared: ``fit``'s previous defaults and the current ones.
SETTINGS = {
    "previous": dict(fast=False, occluded_contour=1.0),
    "current": dict(fast=True, occluded_contour=0.2),
}


@dataclass
class Bench:
    """What every section shares: the renderer, the synthetic faces and the options."""

    renderer: FaceRenderer
    true: FaceCode
    clean: torch.Tensor
    noisy: torch.Tensor
    images: torch.Tensor
    quick: bool


def _median_seconds(run, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def speed(bench: Bench) -> None:
    """Seconds per photo of ``fit`` with both settings, and where the time goes."""
    r, n = bench.renderer, bench.noisy.shape[0]
    repeats = 1 if bench.quick else 3
    print(f"\n== speed: fit (landmarks + photometric at 112 px), batches of {n}, per photo")
    seconds = {}
    for options in SETTINGS.values():  # warm-up: the first render of a batch allocates
        fit(r, bench.images, bench.noisy, landmark_steps=5, photometric_steps=5, **options)
    for name, options in SETTINGS.items():
        t, _ = _median_seconds(lambda o=options: fit(r, bench.images, bench.noisy, **o), repeats)
        seconds[name] = t / n
        print(f"  {name:9s}: {t / n:6.3f} s/photo (median of {repeats})")
    print(f"  speed-up: {seconds['previous'] / seconds['current']:.1f}x")
    print("  where the time goes (one batch, s/photo; evaluations = batched passes):")
    t, _ = _median_seconds(lambda: initialise_pose(r.flame, bench.noisy), repeats)
    print(
        f"    closed-form initialisation ({len(DEFAULT_YAWS) * len(DEFAULT_PITCHES)} pose "
        f"hypotheses): {t / n:.3f}"
    )
    for name, options in SETTINGS.items():
        fast = options["fast"]
        t_lm, geometry = _median_seconds(
            lambda f=fast, o=options: fit_landmarks(
                r.flame, bench.noisy, restrict_head=f, occluded_contour=o["occluded_contour"]
            ),
            repeats,
        )
        t_ph, colour = _median_seconds(
            lambda f=fast, c=geometry.code: fit_photometric(r, bench.images, c, reuse_raster=f),
            repeats,
        )
        print(
            f"    {name:9s}: landmark stage {t_lm / n:.3f} ({geometry.steps} evaluations, "
            f"{1000 * t_lm / geometry.steps:.1f} ms each), photometric stage {t_ph / n:.3f} "
            f"({colour.steps} evaluations, {1000 * t_ph / colour.steps:.1f} ms each)"
        )


def _real_photos(r: FaceRenderer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """DECA crops and detected landmarks (crop NDC) of two real photos, or None."""
    try:
        import matplotlib.cbook
        import numpy as np
        from PIL import Image
        from skimage import data

        from emorig.faces.pipeline import FaceAligner
        from emorig.geometry.camera import pixels_to_ndc

        aligner = FaceAligner(size=224, mode="deca")
        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        photos = [data.astronaut(), np.asarray(Image.open(path).convert("RGB"))]
        faces = [aligner.align(p)[0][0] for p in photos]
    except Exception as err:  # a missing detector only skips this part
        print(f"  real photos skipped: {err}")
        return None
    images = torch.stack([f.image for f in faces])
    points = torch.stack([torch.as_tensor(f.landmarks, dtype=torch.float32) for f in faces])
    return images, pixels_to_ndc(points, 224, 224)


def accuracy(bench: Bench) -> None:
    """Both settings on synthetic faces (known codes) and on real photos."""
    r = bench.renderer
    print("\n== accuracy: synthetic renders (yaw within +-45 degrees, 1 px noise)")
    for name, options in SETTINGS.items():
        result = fit(r, bench.images, bench.noisy, **options)
        error, yaw = scores(r, result, bench.true, bench.clean)
        shape = (result.code.shape[:, :20] - bench.true.shape[:, :20]).pow(2).mean(-1).sqrt()
        q = result.quality
        print(
            f"  {name:9s}: landmarks {error:.2f} px (clean), identity error "
            f"{float(shape.mean()):.3f} sd, worst yaw error {yaw:.2f} deg, photometric L1 "
            f"{float(result.photometric_error.mean()):.4f}, identity rms <= "
            f"{max(x.shape_rms for x in q):.2f}, {sum(x.ok for x in q)}/{len(q)} ok"
        )
    print("== accuracy: real photos (astronaut, Grace Hopper)")
    real = _real_photos(r)
    if real is None:
        return
    for name, options in SETTINGS.items():
        result = fit(r, real[0], real[1], **options)
        print(f"  {name:9s}: " + " | ".join(q.summary() for q in result.quality))


def optimisers(bench: Bench) -> None:
    """The batched L-BFGS against torch's optimisers and a naive start, same budget."""
    r, noisy, true, clean = bench.renderer, bench.noisy, bench.true, bench.clean
    budget = 100
    start = time.perf_counter()
    result = fit_landmarks(r.flame, noisy, steps=budget)
    ours_seconds = (time.perf_counter() - start) / noisy.shape[0]
    ours, _ = scores(r, result, true, clean)
    print(
        f"\n== optimisers: batch {noisy.shape[0]}, budget {budget} evaluations (emorig: "
        f"{ours:.2f} px, {ours_seconds:.2f} s/image):"
    )
    baselines = [
        ("torch.optim.Adam lr 0.1", dict(optimizer="adam", lr=0.1)),
        ("torch.optim.LBFGS", dict(optimizer="torch-lbfgs")),
        ("naive start (frontal, s=9)", dict(init=FaceCode.neutral(noisy.shape[0]))),
    ]
    if bench.quick:
        baselines = baselines[::2]
    for label, options in baselines:
        start = time.perf_counter()
        result = fit_landmarks(r.flame, noisy, steps=budget, **options)
        seconds = (time.perf_counter() - start) / noisy.shape[0]
        error, yaw = scores(r, result, true, clean)
        print(
            f"  {label:28s}: {seconds:5.2f} s/image, {error:.2f} px, worst yaw error "
            f"{yaw:.1f} deg, {result.steps} batched passes -> error ratio "
            f"{error / ours:.2f}, time ratio {seconds / ours_seconds:.2f} (baseline / emorig)"
        )


#: The benchmark's sections, run in order by :func:`main`; append a function taking a
#: :class:`Bench` to add one.
def warp_edits(bench: Bench) -> None:
    """Seconds per warp edit of a fitted real photo at 512^2 and 1024^2 (what ``emorig edit
    --method warp`` does after the fit; details in ``bench_warp.py``)."""
    import bench_warp

    print("\n== warp edits of the fitted astronaut (after the fit), seconds per edit")
    bench_warp.report(1 if bench.quick else 5, torch.device("cpu"))


SECTIONS = [speed, accuracy, optimisers, warp_edits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer baselines")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    renderer = FaceRenderer(builtin_head())
    true = fit_test_codes(8, 1, max_yaw=45.0, albedo=True)
    with torch.no_grad():
        out = renderer(true, 224)
    g = torch.Generator().manual_seed(2)
    noisy = out.landmarks + torch.randn(out.landmarks.shape, generator=g) / PX
    images = out.buffers.rendered.clamp(0, 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, built-in head")
    fit_landmarks(renderer.flame, noisy[:1], steps=5)  # warm-up
    bench = Bench(renderer, true, out.landmarks, noisy, images, args.quick)
    for section in SECTIONS:
        section(bench)


if __name__ == "__main__":
    main()

"""How well a reconstruction method recovers faces whose truth is known: held-out synthetic
renders of a head (fresh seeds, never seen in training)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from emorig.geometry.camera import ndc_to_pixels
from emorig.geometry.landmarks import yaw_of_rotation
from emorig.geometry.rotations import axis_angle_to_matrix
from emorig.reconstruct.deca import DecaModel
from emorig.render.face import FaceRenderer
from emorig.synth.sampling import SynthConfig, synthetic_batch
from emorig.types import FaceCode


@dataclass(frozen=True)
class SyntheticScores:
    """Mean errors over the evaluated faces.

    Attributes:
        landmark_px: projected 68 landmarks vs the true ones, pixels of the 224 crop.
        vertex_pct: face vertices (those the 68-landmark box covers) projected with each
            code's camera, mean distance in % of the true face width.
        yaw_deg, jaw_deg: absolute error of the head yaw and the jaw opening, degrees.
        n: faces evaluated.
    """

    landmark_px: float
    vertex_pct: float
    yaw_deg: float
    jaw_deg: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {
            "landmark_px": self.landmark_px,
            "vertex_pct": self.vertex_pct,
            "yaw_deg": self.yaw_deg,
            "jaw_deg": self.jaw_deg,
            "n": self.n,
        }


def _screen(renderer: FaceRenderer, code: FaceCode):
    flame = renderer.geometry(code)
    return (
        renderer.project(flame.vertices, code)[..., :2],
        renderer.project(flame.landmarks2d, code)[..., :2],
    )


@torch.no_grad()
def score_codes(
    renderer: FaceRenderer, predicted: FaceCode, truth: FaceCode, size: int = 224
) -> SyntheticScores:
    """Compare predicted codes with the true ones (see :class:`SyntheticScores`)."""
    pv, pl = _screen(renderer, predicted)
    tv, tl = _screen(renderer, truth)
    lm = (ndc_to_pixels(pl, size, size) - ndc_to_pixels(tl, size, size)).norm(dim=-1).mean()
    lo, hi = tl.amin(1, keepdim=True), tl.amax(1, keepdim=True)
    face = ((tv >= lo) & (tv <= hi)).all(-1)  # vertices inside the landmark box
    width = (hi - lo)[..., 0].squeeze(1)
    dist = (pv - tv).norm(dim=-1)
    per_face = (dist * face).sum(1) / face.sum(1).clamp_min(1) / width
    deg = 180 / math.pi
    yaw = (
        yaw_of_rotation(axis_angle_to_matrix(predicted.global_pose))
        - yaw_of_rotation(axis_angle_to_matrix(truth.global_pose))
    ).abs().mean() * deg
    jaw = (predicted.jaw_pose[:, 0] - truth.jaw_pose[:, 0]).abs().mean() * deg
    return SyntheticScores(
        float(lm), float(per_face.mean() * 100), float(yaw), float(jaw), truth.batch_size
    )


@torch.no_grad()
def evaluate_encoder(
    model: DecaModel, renderer: FaceRenderer, n: int = 64, seed: int = 12345, batch: int = 16
) -> SyntheticScores:
    """Encode ``n`` held-out synthetic faces of ``renderer``'s head and score the codes."""
    fast = model.for_inference()
    config = SynthConfig(image_size=224)
    totals, count = None, 0
    for start in range(0, n, batch):
        g = torch.Generator().manual_seed(seed + start)
        b = synthetic_batch(renderer, min(batch, n - start), config, g)
        code = fast.encode(b.images.contiguous(memory_format=torch.channels_last))
        s = score_codes(renderer, code, b.code)
        vals = torch.tensor([s.landmark_px, s.vertex_pct, s.yaw_deg, s.jaw_deg]) * s.n
        totals = vals if totals is None else totals + vals
        count += s.n
    m = (totals / count).tolist()
    return SyntheticScores(m[0], m[1], m[2], m[3], count)


#: Named expressions of the built-in head that :func:`fit_test_codes` mixes.
FIT_TEST_EXPRESSIONS = (
    "smile",
    "frown",
    "brow_raise",
    "blink",
    "lip_pucker",
    "mouth_stretch",
    "sad",
)


def fit_test_codes(
    b: int,
    seed: int,
    *,
    max_yaw: float = 30.0,
    yaw_degrees: float | None = None,
    albedo: bool = False,
    expressions: tuple[str, ...] = FIT_TEST_EXPRESSIONS,
    dtype: torch.dtype = torch.float32,
) -> FaceCode:
    """Random built-in-head faces with known codes, the ones the fitting tests and benchmark
    fit: identity N(0, 0.5^2) in the first 20 components, two of ``expressions`` at 0.3-0.9,
    jaw 0-0.25 rad, yaw within ``max_yaw`` degrees (or exactly ``yaw_degrees``), pitch +-10,
    roll +-5, camera scale 8.5-9.5, the studio light; ``albedo``: the first 10 albedo
    components N(0, 0.5^2) too. The random draws are the same whatever the options."""
    from emorig.flame.builtin import expression_index
    from emorig.geometry.rotations import matrix_to_axis_angle, yaw_pitch_roll_to_matrix
    from emorig.render.showcase import studio_light

    g = torch.Generator().manual_seed(seed)

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=g, dtype=dtype)

    shape = torch.zeros(b, 100, dtype=dtype)
    shape[:, :20] = 0.5 * torch.randn(b, 20, generator=g, dtype=dtype)
    expression = torch.zeros(b, 50, dtype=dtype)
    for i in range(b):
        for k in torch.randperm(len(expressions), generator=g)[:2].tolist():
            expression[i, expression_index(expressions[k])] = float(uniform(1, 0.3, 0.9))
    jaw = torch.zeros(b, 3, dtype=dtype)
    jaw[:, 0] = uniform(b, 0.0, 0.25)
    yaw = uniform(b, -math.radians(max_yaw), math.radians(max_yaw))
    if yaw_degrees is not None:
        yaw = torch.full((b,), math.radians(yaw_degrees), dtype=dtype)
    pitch = uniform(b, -math.radians(10), math.radians(10))
    roll = uniform(b, -math.radians(5), math.radians(5))
    pose = matrix_to_axis_angle(yaw_pitch_roll_to_matrix(yaw, pitch, roll))
    camera = torch.stack(
        [uniform(b, 8.5, 9.5), uniform(b, -0.01, 0.01), uniform(b, -0.01, 0.01)], -1
    )
    code = FaceCode.neutral(b, dtype=dtype).replace(
        shape=shape, expression=expression, jaw_pose=jaw, global_pose=pose, camera=camera,
        light=studio_light(b, dtype=dtype),
    )  # fmt: skip
    if albedo:
        values = torch.zeros(b, 50, dtype=dtype)
        values[:, :10] = 0.5 * torch.randn(b, 10, generator=g, dtype=dtype)
        code = code.replace(albedo=values)
    return code

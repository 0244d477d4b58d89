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

"""Synthetic faces with known codes, rendered from any FLAME-format head (the built-in head by
default): identities, expressions, jaw, pose, SH light, albedo, camera and backgrounds drawn at
random, framed like DECA's crop. Used to pre-train encoders where no photos are labelled."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from emorig.geometry.rotations import matrix_to_axis_angle, yaw_pitch_roll_to_matrix
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode


@dataclass(frozen=True)
class SynthConfig:
    """Distributions of the random faces (angles in degrees).

    Identity coefficients are N(0, shape_std^2) on the first ``n_shape_active`` components;
    expressions N(0, expression_std^2) on the first ``n_expression_active`` (the built-in head's
    named ones) plus occasional strong single expressions; jaw opening in [0, jaw_max];
    camera scale so the face fills DECA's crop (about 1.25 x 1.1 the landmark box) with jitter.
    """

    image_size: int = 224
    shape_std: float = 0.8
    n_shape_active: int = 30
    expression_std: float = 0.35
    n_expression_active: int = 19
    strong_expression_prob: float = 0.3
    jaw_max: float = 18.0
    yaw: float = 35.0
    pitch: float = 15.0
    roll: float = 8.0
    albedo_std: float = 0.7
    crop_scale: tuple[float, float] = (1.25, 1.5)
    shift: float = 0.06  # NDC jitter of the face centre


@dataclass(frozen=True)
class SyntheticBatch:
    """Images (B, 3, S, S) in [0, 1], their exact codes, and the projected landmarks.

    ``landmarks`` are DECA's 68 (contour + static) in NDC of the image (x right, y down).
    """

    images: Tensor
    code: FaceCode
    landmarks: Tensor
    mask: Tensor


def sample_codes(
    renderer: FaceRenderer, batch: int, config: SynthConfig, generator: torch.Generator
) -> FaceCode:
    """Random face codes for ``renderer``'s head (cameras not yet framed)."""
    dev = renderer.flame.v_template.device
    n_s, n_e = renderer.flame.n_shape, renderer.flame.n_expression
    n_a = max(renderer.n_albedo, 0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dev)

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    shape = torch.zeros(batch, n_s, device=dev)
    k = min(config.n_shape_active, n_s)
    shape[:, :k] = randn(batch, k) * config.shape_std / (1 + torch.arange(k, device=dev) / 10)
    expression = torch.zeros(batch, n_e, device=dev)
    k = min(config.n_expression_active, n_e)
    expression[:, :k] = randn(batch, k) * config.expression_std
    strong = rand(batch) < config.strong_expression_prob
    pick = (rand(batch) * k).long()
    expression[strong, pick[strong]] += 0.5 + 0.5 * rand(int(strong.sum()))
    deg = math.pi / 180
    yaw = (rand(batch) * 2 - 1) * config.yaw * deg
    pitch = (rand(batch) * 2 - 1) * config.pitch * deg
    roll = (rand(batch) * 2 - 1) * config.roll * deg
    global_pose = matrix_to_axis_angle(yaw_pitch_roll_to_matrix(yaw, pitch, roll))
    jaw = torch.zeros(batch, 3, device=dev)
    jaw[:, 0] = rand(batch) ** 2 * config.jaw_max * deg
    light = torch.zeros(batch, 9, 3, device=dev)
    # white-ish ambient with a mild tint, one dominant direction, a little second order
    light[:, 0] = 2.4 + 1.0 * rand(batch, 1) + 0.08 * randn(batch, 3)
    light[:, 1:4] = randn(batch, 3, 1) * 0.22 + randn(batch, 3, 3) * 0.03
    light[:, 4:] = randn(batch, 5, 3) * 0.05
    albedo = randn(batch, n_a) * config.albedo_std if n_a else torch.zeros(batch, 0, device=dev)
    z3 = torch.zeros(batch, 3, device=dev)
    return FaceCode(
        shape=shape,
        expression=expression,
        global_pose=global_pose,
        jaw_pose=jaw,
        camera=torch.tensor([[10.0, 0.0, 0.0]], device=dev).expand(batch, 3).clone(),
        light=light,
        albedo=albedo,
        neck_pose=z3,
        eye_pose=torch.zeros(batch, 6, device=dev),
    )


def frame_like_deca(
    renderer: FaceRenderer, code: FaceCode, config: SynthConfig, generator: torch.Generator
) -> FaceCode:
    """Choose each camera so the 68-landmark box, grown as DECA's crop grows it, fills the
    image, with random extra margin and shift."""
    flame = renderer.geometry(code)
    lm = flame.landmarks2d[..., :2]  # world x, y; the camera is orthographic
    lo, hi = lm.amin(1), lm.amax(1)
    size = ((hi - lo).sum(1) / 2) * 1.1  # DECA: mean of width and height, times 1.1
    dev = lm.device
    b = code.batch_size
    grow = config.crop_scale[0] + (config.crop_scale[1] - config.crop_scale[0]) * torch.rand(
        b, generator=generator
    ).to(dev)
    s = 2.0 / (size * grow)
    centre = (lo + hi) / 2
    shift = (torch.rand(b, 2, generator=generator).to(dev) * 2 - 1) * config.shift
    tx = -centre[:, 0] + shift[:, 0] / s
    ty = -centre[:, 1] + shift[:, 1] / s
    return code.replace(camera=torch.stack([s, tx, ty], 1))


def backgrounds(batch: int, size: int, generator: torch.Generator, device) -> Tensor:
    """(B, 3, S, S) smooth random backdrops: a colour, a gradient and low-frequency noise."""
    base = torch.rand(batch, 3, 1, 1, generator=generator) * 0.8 + 0.1
    direction = torch.randn(batch, 2, generator=generator)
    c = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    ramp = direction[:, 0, None, None] * xx + direction[:, 1, None, None] * yy
    noise = torch.nn.functional.interpolate(
        torch.randn(batch, 3, 6, 6, generator=generator),
        size=(size, size),
        mode="bicubic",
        align_corners=False,
    )
    img = base + 0.12 * ramp[:, None] + 0.06 * noise
    return img.clamp(0, 1).to(device)


@torch.no_grad()
def synthetic_batch(
    renderer: FaceRenderer, batch: int, config: SynthConfig, generator: torch.Generator
) -> SyntheticBatch:
    """Render ``batch`` random faces with their exact codes and landmarks."""
    code = frame_like_deca(
        renderer, sample_codes(renderer, batch, config, generator), config, generator
    )
    out = renderer(code, config.image_size)
    bg = backgrounds(batch, config.image_size, generator, out.buffers.mask.device)
    images = out.buffers.rendered * out.buffers.mask + bg * (1 - out.buffers.mask)
    return SyntheticBatch(images.clamp(0, 1), code, out.landmarks, out.buffers.mask)

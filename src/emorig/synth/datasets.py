"""Synthetic face datasets with known truth, rendered from the built-in head.

Three layouts (``SynthDatasetConfig.mode``):

* ``"random"``: every image a new identity, expression, pose, light, albedo and background;
* ``"album"``: one identity per group of ``album_size`` images, varied expression, pose,
  light and background, like a personal photo album;
* ``"multiview"``: one identity with one expression seen from ``views`` yaw angles evenly
  spread over ``[-max_yaw, max_yaw]`` (same light and backdrop within a group).

A fraction of the faces (all with ``emotions=True``) shows one of the eight emotion presets of
:mod:`emorig.emotion.presets` and carries its class, intensity and valence/arousal; the others
show random mixtures of the head's named expressions and have no label (``-1``).

Images are framed as FFHQ alignment frames a photo (the oriented square of
:func:`emorig.faces.align.ffhq_quad` fills the image, so the face is centred and covers about
60% of it), since the diffusion stage works on FFHQ-aligned faces. They are rendered at
``supersample`` times the size and averaged down (anti-aliased edges) over smooth, muted
backdrops, with a little sensor noise.

Every draw comes from generators seeded by ``seed``, before any rendering and independent of
the batch size: the same config gives the same files (other batch sizes agree up to float
rounding of batched maths, about 1e-5). Results on these faces say nothing about real people.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from emorig.emotion.presets import PRESETS, preset_code
from emorig.errors import EmorigError
from emorig.faces.align import ffhq_quad
from emorig.flame.builtin import ALBEDO_COMPONENTS, EXPRESSION_COMPONENTS, SHAPE_COMPONENTS
from emorig.geometry.rotations import matrix_to_axis_angle, yaw_pitch_roll_to_matrix
from emorig.io.atomic import atomic_write, save_npz_atomic
from emorig.io.images import contact_sheet, save_png, to_uint8
from emorig.render.face import FaceRenderer
from emorig.synth.sampling import SynthConfig, backgrounds, sample_codes
from emorig.types import EMOTION_CLASSES, FaceCode, RenderBuffers

__all__ = [
    "CODE_FIELDS",
    "MODES",
    "PhotoStyle",
    "SynthDatasetConfig",
    "SynthDatasetResult",
    "SynthFaces",
    "SynthPlan",
    "frame_like_ffhq",
    "iter_synth_faces",
    "plan_dataset",
    "read_codes",
    "render_plan",
    "synthesize",
    "write_dataset",
]

MODES = ("random", "album", "multiview")
#: FaceCode fields stored in ``codes.npz`` (the ``detail`` code is never set here).
CODE_FIELDS = (
    "shape",
    "expression",
    "global_pose",
    "jaw_pose",
    "camera",
    "light",
    "albedo",
    "neck_pose",
    "eye_pose",
)
SYNTHETIC_NOTE = (
    "SYNTHETIC: renders of emorig's procedurally generated built-in head, not photos of people; "
    "results on them say nothing about real faces."
)
# the built-in head's named components (the rest are seeded random fields)
_N_NAMED_SHAPE = len(SHAPE_COMPONENTS)
_N_NAMED_EXPRESSION = len(EXPRESSION_COMPONENTS)
_DEG = math.pi / 180


@dataclass(frozen=True)
class PhotoStyle:
    """Distributions that make renders of the built-in head look like portrait photos.

    Angles in degrees. Identity and albedo coefficients are N(0, std^2): ``shape_std`` and
    ``albedo_std`` (one per name of :data:`~emorig.flame.builtin.ALBEDO_COMPONENTS`, skin tone
    clamped to ``skin_tone_range``, ``one_sided_albedo`` folded to be positive) on the head's
    named components, ``*_detail_std`` on its seeded random ones (lumpy or blotchy when
    large). Free expressions switch on 0 to ``max_active`` named components at strengths in
    ``expression_strength``. Light: DC SH coefficient in ``ambient`` (0.28 x it is the shading
    of a surface facing nowhere in particular), a key light of first-order strength in ``key``
    from the front half-space, a warm/cool tint. The eyes turn back towards the camera by a
    random share ``gaze_follow`` of the head's yaw and pitch, plus ``gaze`` noise. Framing
    jitters the FFHQ square's size by up to ``framing_scale`` (relative) and its centre by
    ``framing_shift`` (NDC).
    """

    shape_std: float = 0.75
    shape_detail_std: float = 0.1
    n_shape_detail: int = 34
    # skin_tone, redness, olive, lip_colour, brow_darkness, hair_lightness, blush, stubble,
    # iris_blue, under_eye
    albedo_std: tuple[float, ...] = (0.9, 0.35, 0.35, 0.6, 0.6, 1.0, 0.35, 0.45, 0.8, 0.5)
    skin_tone_range: tuple[float, float] = (-2.2, 1.2)
    one_sided_albedo: tuple[str, ...] = ("blush", "stubble", "under_eye")
    albedo_detail_std: float = 0.08
    max_active: int = 3
    expression_strength: tuple[float, float] = (0.2, 0.8)
    expression_noise: float = 0.04
    jaw_max: float = 6.0
    yaw: float = 30.0
    pitch: float = 12.0
    roll: float = 3.0
    gaze: float = 6.0
    gaze_follow: tuple[float, float] = (0.3, 0.8)
    ambient: tuple[float, float] = (2.5, 3.2)
    key: tuple[float, float] = (0.12, 0.42)
    tint: float = 0.05
    emotion_intensity: tuple[float, float] = (0.6, 1.1)
    emotion_noise: float = 0.04
    background_saturation: float = 0.25
    noise: float = 0.008
    framing_scale: float = 0.03
    framing_shift: float = 0.02


@dataclass(frozen=True)
class SynthDatasetConfig:
    """What to synthesise.

    Attributes:
        mode: ``"random"``, ``"album"`` or ``"multiview"`` (see the module docstring).
        count: images in total; multiview needs a multiple of ``views``.
        size: image side in pixels.
        seed: seed of every random draw.
        views: images per multiview group.
        max_yaw: multiview yaw span ``[-max_yaw, max_yaw]`` in degrees.
        album_size: images per album (the last album may be smaller).
        emotion_fraction: share of faces (multiview: of groups) showing an emotion preset
            with its label; 1 for ``emotions=True`` on the command line.
        supersample: render at this factor and average down (1 = no anti-aliasing).
        style: the appearance distributions.
    """

    mode: str = "random"
    count: int = 100
    size: int = 256
    seed: int = 0
    views: int = 5
    max_yaw: float = 30.0
    album_size: int = 20
    emotion_fraction: float = 0.5
    supersample: int = 2
    style: PhotoStyle = PhotoStyle()

    def validate(self) -> SynthDatasetConfig:
        """Raise :class:`EmorigError` on a bad setting; returns ``self``."""
        if self.mode not in MODES:
            raise EmorigError(f"mode '{self.mode}': choose one of {', '.join(MODES)}")
        if self.count < 1:
            raise EmorigError(f"count {self.count}: need at least one image")
        if not 16 <= self.size <= 4096:
            raise EmorigError(f"size {self.size}: choose between 16 and 4096 pixels")
        if self.views < 1 or self.album_size < 1 or self.supersample < 1:
            raise EmorigError("views, album size and supersample must be at least 1")
        if not 0.0 <= self.max_yaw <= 90.0:
            raise EmorigError(f"max yaw {self.max_yaw}: choose between 0 and 90 degrees")
        if not 0.0 <= self.emotion_fraction <= 1.0:
            raise EmorigError(f"emotion fraction {self.emotion_fraction}: must be in [0, 1]")
        if self.mode == "multiview" and self.count % self.views:
            raise EmorigError(
                f"multiview: count {self.count} is not a multiple of views {self.views} "
                f"(e.g. {max(1, self.count // self.views) * self.views})"
            )
        return self

    @property
    def n_groups(self) -> int:
        if self.mode == "random":
            return self.count
        if self.mode == "album":
            return -(-self.count // self.album_size)
        return self.count // self.views


@dataclass(frozen=True)
class SynthPlan:
    """Everything random about a dataset, drawn before any rendering (N images).

    Attributes:
        code: (N) face codes, cameras not yet framed.
        labels: (N,) int64 emotion class (index into EMOTION_CLASSES), -1 when unlabelled.
        intensity: (N,) preset intensity, NaN when unlabelled.
        valence_arousal: (N, 2) in [-1, 1], NaN when unlabelled.
        groups: (N,) int64 identity group (album / multiview group; the index in random mode).
        views: (N,) int64 position in the group.
        yaw: (N,) head yaw in degrees.
        framing: (N, 3) relative scale jitter and NDC shift (x, y) of the FFHQ square.
        noise_seeds: (N,) int64 seeds of each image's backdrop and sensor noise.
    """

    code: FaceCode
    labels: Tensor
    intensity: Tensor
    valence_arousal: Tensor
    groups: Tensor
    views: Tensor
    yaw: Tensor
    framing: Tensor
    noise_seeds: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class SynthFaces:
    """A batch of synthetic faces with their truth (B images).

    Attributes:
        images: (B, 3, S, S) float in [0, 1].
        code: the exact codes, cameras framed for the image (FFHQ-like).
        buffers: condition buffers rendered at S (no anti-aliasing, as DiffusionRig renders
            them), or None when not requested.
        landmarks: (B, 68, 2) DECA's landmarks in NDC of the image (x right, y down).
        labels, intensity, valence_arousal, groups, views, yaw: as in :class:`SynthPlan`.
        index: (B,) int64 position in the dataset.
    """

    images: Tensor
    code: FaceCode
    buffers: RenderBuffers | None
    landmarks: Tensor
    labels: Tensor
    intensity: Tensor
    valence_arousal: Tensor
    groups: Tensor
    views: Tensor
    yaw: Tensor
    index: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class SynthDatasetResult:
    """Files written by :func:`write_dataset`."""

    folder: Path
    images: list[Path]
    codes: Path
    labels: Path
    sheet: Path
    seconds: float


# ---------------------------------------------------------------------------------------------
# sampling


def _check_renderer(renderer: FaceRenderer) -> None:
    if not getattr(renderer, "synthetic", False):
        raise EmorigError(
            f"synthetic datasets use the built-in head (its named expressions make the emotion "
            f"presets); got {renderer.head_name}"
        )


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64).float()


def _group_layout(config: SynthDatasetConfig) -> tuple[Tensor, Tensor]:
    i = torch.arange(config.count)
    if config.mode == "random":
        return i, torch.zeros_like(i)
    k = config.album_size if config.mode == "album" else config.views
    return i // k, i % k


def _free_expressions(n: int, n_expr: int, style: PhotoStyle, gen: torch.Generator) -> Tensor:
    """(n, E): 0 to max_active named components switched on, plus a little noise."""
    k = min(_N_NAMED_EXPRESSION, n_expr)
    expression = torch.zeros(n, n_expr)
    active = torch.randint(0, style.max_active + 1, (n,), generator=gen)
    order = torch.rand(n, k, generator=gen).argsort(1)
    strength = _uniform(*style.expression_strength, n * k, gen).view(n, k)
    on = torch.arange(k)[None] < active[:, None]
    expression.scatter_(1, order, strength * on)
    expression[:, :k] += torch.randn(n, k, generator=gen) * style.expression_noise
    return expression


def _albedo(n: int, n_albedo: int, style: PhotoStyle, gen: torch.Generator) -> Tensor:
    """(n, T) albedo coefficients: per-name spreads on the named components."""
    albedo = torch.randn(n, n_albedo, generator=gen) * style.albedo_detail_std
    m = min(len(ALBEDO_COMPONENTS), len(style.albedo_std), n_albedo)
    albedo[:, :m] = torch.randn(n, m, generator=gen) * torch.tensor(style.albedo_std[:m])
    names = [name for name, _ in ALBEDO_COMPONENTS[:m]]
    for name in style.one_sided_albedo:
        if name in names:
            albedo[:, names.index(name)] = albedo[:, names.index(name)].abs()
    if "skin_tone" in names:
        i = names.index("skin_tone")
        albedo[:, i] = albedo[:, i].clamp(*style.skin_tone_range)
    return albedo


def _photo_light(n: int, style: PhotoStyle, gen: torch.Generator) -> Tensor:
    """(n, 9, 3) SH light: ambient, one key from the front half-space, a warm/cool tint."""
    ambient = _uniform(*style.ambient, n, gen)
    direction = torch.randn(n, 3, generator=gen)
    direction[:, 1] = direction[:, 1].abs() * 0.6 + 0.2  # mostly from above
    direction[:, 2] = direction[:, 2].abs() + 0.4  # from the camera's side
    direction = direction / direction.norm(dim=1, keepdim=True)
    key = _uniform(*style.key, n, gen)
    warm = (torch.rand(n, generator=gen) * 2 - 1) * style.tint
    tint = torch.stack([1 + warm, torch.ones(n), 1 - warm], 1)  # (n, 3)
    light = torch.zeros(n, 9, 3)
    light[:, 0] = ambient[:, None] * tint
    light[:, 1:4] = (direction * key[:, None])[:, :, None] * tint[:, None]
    light[:, 4:] = torch.randn(n, 5, 1, generator=gen) * 0.03
    return light


def _seed_of(seed: int, index: int) -> int:
    return (seed * 0x9E3779B1 + index * 0x85EBCA77 + 0x27D4EB2F) % (2**62)


def _identities(
    renderer: FaceRenderer, config: SynthDatasetConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(G, S) shape and (G, T) albedo of every identity group."""
    style, n_groups = config.style, config.n_groups
    n_s, n_a = renderer.flame.n_shape, max(renderer.n_albedo, 0)
    # identities from the training sampler (named components only); everything else is drawn
    # below with photo-like statistics
    base = sample_codes(
        renderer,
        n_groups,
        SynthConfig(
            shape_std=style.shape_std,
            n_shape_active=_N_NAMED_SHAPE,
            expression_std=0.0,
            strong_expression_prob=0.0,
            albedo_std=0.0,
        ),
        gen,
    ).to("cpu")  # drawn on the CPU: the same numbers on every device
    shape = base.shape.clone()
    k = min(_N_NAMED_SHAPE + style.n_shape_detail, n_s)
    shape[:, _N_NAMED_SHAPE:k] = torch.randn(n_groups, k - _N_NAMED_SHAPE, generator=gen) * (
        style.shape_detail_std
    )
    albedo = _albedo(n_groups, n_a, style, gen)
    return shape, albedo


@dataclass
class _Looks:
    """Per-image expression, jaw, light, head pose (degrees) and gaze draws."""

    expression: Tensor
    jaw: Tensor
    light: Tensor
    yaw: Tensor
    pitch: Tensor
    roll: Tensor
    gaze: Tensor
    follow: Tensor

    def take(self, pick: Tensor) -> _Looks:
        return _Looks(*(getattr(self, f.name)[pick] for f in dataclasses.fields(self)))


def _draw_looks(m: int, n_expr: int, style: PhotoStyle, gen: torch.Generator) -> _Looks:
    """``m`` draws of expression, jaw, light, pose and gaze, in this order."""
    expression = _free_expressions(m, n_expr, style, gen)
    jaw = torch.zeros(m, 3)
    jaw[:, 0] = torch.rand(m, generator=gen) ** 2 * style.jaw_max * _DEG
    light = _photo_light(m, style, gen)
    yaw = (torch.rand(m, generator=gen) * 2 - 1) * style.yaw
    pitch = (torch.rand(m, generator=gen) * 2 - 1) * style.pitch
    roll = (torch.rand(m, generator=gen) * 2 - 1) * style.roll
    gaze = torch.randn(m, 2, generator=gen) * style.gaze
    follow = _uniform(*style.gaze_follow, m, gen)
    return _Looks(expression, jaw, light, yaw, pitch, roll, gaze, follow)


def _orbit_camera(looks: _Looks, config: SynthDatasetConfig, views: Tensor) -> None:
    """Multiview: the camera moves round a still subject; gaze fixed in the head, the light
    turns with the head (first order rotated, second order dropped)."""
    n = views.shape[0]
    looks.yaw = (
        torch.linspace(-config.max_yaw, config.max_yaw, config.views)[views]
        if config.views > 1
        else torch.zeros(n)
    )
    looks.follow = torch.zeros(n)
    turn = yaw_pitch_roll_to_matrix(looks.yaw * _DEG, torch.zeros(n), torch.zeros(n))
    light = looks.light.clone()
    light[:, 1:4] = turn @ light[:, 1:4]
    light[:, 4:] = 0.0
    looks.light = light


def _draw_emotions(
    m: int, n_expr: int, config: SynthDatasetConfig, gen: torch.Generator, pick: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Emotion presets, balanced classes over the labelled faces (or groups): (N,) labels
    (-1 unlabelled), (N,) intensity (NaN unlabelled) and (N, E) expression jitter."""
    style = config.style
    labelled = torch.rand(m, generator=gen) < config.emotion_fraction
    classes = torch.arange(m) % len(EMOTION_CLASSES)
    classes = classes[torch.randperm(m, generator=gen)]
    labels = torch.where(labelled, classes, torch.full_like(classes, -1))
    intensity = _uniform(*style.emotion_intensity, m, gen)
    jitter = torch.randn(m, n_expr, generator=gen) * style.emotion_noise
    labels, intensity, jitter = labels[pick], intensity[pick], jitter[pick]
    intensity = torch.where(labels >= 0, intensity, torch.full_like(intensity, math.nan))
    return labels, intensity, jitter


def _draw_framing(
    config: SynthDatasetConfig, gen: torch.Generator, noise_key: Tensor
) -> tuple[Tensor, Tensor]:
    """(N, 3) framing jitter (scale, x, y) and (N,) backdrop and noise seeds."""
    n, style = config.count, config.style
    framing = torch.empty(n, 3)
    framing[:, 0] = (torch.rand(n, generator=gen) * 2 - 1) * style.framing_scale
    framing[:, 1:] = (torch.rand(n, 2, generator=gen) * 2 - 1) * style.framing_shift
    noise_seeds = torch.tensor([_seed_of(config.seed, int(i)) for i in noise_key])
    return framing, noise_seeds


def _posed_code(shape: Tensor, albedo: Tensor, looks: _Looks) -> FaceCode:
    """The codes of the drawn faces, eyes following the camera by ``looks.follow``."""
    n = shape.shape[0]
    yaw, pitch, follow, gaze = looks.yaw, looks.pitch, looks.follow, looks.gaze
    rot = yaw_pitch_roll_to_matrix(yaw * _DEG, pitch * _DEG, looks.roll * _DEG)
    eyes = torch.zeros(n, 6)
    eye_yaw = (-follow * yaw + gaze[:, 0]).clamp(-25, 25) * _DEG
    eye_pitch = (-follow * pitch + gaze[:, 1]).clamp(-15, 15) * _DEG
    eyes[:, 0], eyes[:, 1] = eye_pitch, eye_yaw
    eyes[:, 3], eyes[:, 4] = eye_pitch, eye_yaw
    return FaceCode(
        shape=shape,
        expression=looks.expression,
        global_pose=matrix_to_axis_angle(rot),
        jaw_pose=looks.jaw,
        camera=torch.tensor([[10.0, 0.0, 0.0]]).expand(n, 3).clone(),
        light=looks.light,
        albedo=albedo,
        neck_pose=torch.zeros(n, 3),
        eye_pose=eyes,
    )


def plan_dataset(renderer: FaceRenderer, config: SynthDatasetConfig) -> SynthPlan:
    """Draw every random choice of a dataset (cheap: no rendering).

    Args:
        renderer: a :class:`FaceRenderer` of the built-in head.
        config: the dataset.

    Returns:
        The plan on the renderer's device.
    """
    config.validate()
    _check_renderer(renderer)
    dev = renderer.flame.v_template.device
    gen = torch.Generator().manual_seed(int(config.seed))
    n = config.count
    groups, views = _group_layout(config)
    n_e = renderer.flame.n_expression
    shape, albedo = _identities(renderer, config, gen)
    shape, albedo = shape[groups], albedo[groups]

    # per image (multiview: per group) expression, jaw, pose, gaze and light
    per_group = config.mode == "multiview"
    m_draw = config.n_groups if per_group else n
    pick = groups if per_group else torch.arange(n)
    looks = _draw_looks(m_draw, n_e, config.style, gen).take(pick)
    if per_group:
        _orbit_camera(looks, config, views)
    labels, intensity, jitter = _draw_emotions(m_draw, n_e, config, gen, pick)
    framing, noise_seeds = _draw_framing(config, gen, groups if per_group else torch.arange(n))

    code, va = _apply_presets(_posed_code(shape, albedo, looks), labels, intensity, jitter)
    as_dev = lambda t: t.to(dev)  # noqa: E731
    return SynthPlan(
        code=code.to(dev),
        labels=as_dev(labels),
        intensity=as_dev(intensity),
        valence_arousal=as_dev(va),
        groups=as_dev(groups),
        views=as_dev(views),
        yaw=as_dev(looks.yaw),
        framing=as_dev(framing),
        noise_seeds=as_dev(noise_seeds),
    )


def _apply_presets(
    code: FaceCode, labels: Tensor, intensity: Tensor, jitter: Tensor
) -> tuple[FaceCode, Tensor]:
    """Replace the expression and jaw of labelled faces by their preset (plus jitter on the
    named components); returns the codes and (N, 2) valence/arousal (NaN when unlabelled)."""
    expression, jaw = code.expression.clone(), code.jaw_pose.clone()
    va = torch.full((labels.shape[0], 2), math.nan)
    k = min(_N_NAMED_EXPRESSION, expression.shape[1])
    for c, name in enumerate(EMOTION_CLASSES):
        sel = labels == c
        if not bool(sel.any()):
            continue
        one = preset_code(code[sel], name, intensity[sel])
        noise = torch.zeros_like(one.expression)
        noise[:, :k] = jitter[sel][:, :k]
        expression[sel] = one.expression + noise
        jaw[sel] = one.jaw_pose
        p = PRESETS[name]
        # as labelled_batch: affect grows with intensity up to the preset's value
        va[sel] = torch.tensor([p.valence, p.arousal]) * intensity[sel, None].clamp(max=1.0)
    return code.replace(expression=expression, jaw_pose=jaw), va


# ---------------------------------------------------------------------------------------------
# framing and rendering


def frame_like_ffhq(
    renderer: FaceRenderer, code: FaceCode, framing: Tensor | None = None
) -> FaceCode:
    """Choose each orthographic camera so FFHQ's alignment square fills the image.

    The square is :func:`emorig.faces.align.ffhq_quad` of the projected 68 landmarks (eyes
    and mouth corners); its centre goes to the image centre and its half side to NDC 1, which
    is where FFHQ alignment would put this face. Roll is not undone (FFHQ rotates it away; keep
    it small).

    Args:
        renderer: the head's renderer.
        code: (B) codes; only the camera is changed.
        framing: (B, 3) relative scale jitter and NDC shift (x, y), or None for exact framing.

    Returns:
        ``code`` with cameras ``(s, tx, ty)``.
    """
    flame = renderer.geometry(code)
    if flame.landmarks2d is None:
        raise EmorigError(f"{renderer.head_name} has no landmark embedding; cannot frame faces")
    # NDC of a unit camera: x = X, y = -Y
    lm = flame.landmarks2d[..., :2].detach().double().cpu().numpy() * np.array([1.0, -1.0])
    b = code.batch_size
    centre = np.empty((b, 2))
    half = np.empty(b)
    for i in range(b):
        c, x, _ = ffhq_quad(lm[i])
        centre[i], half[i] = c, np.hypot(*x)
    dev, dtype = code.camera.device, code.camera.dtype
    centre_t = torch.as_tensor(centre, dtype=dtype, device=dev)
    s = 1.0 / torch.as_tensor(half, dtype=dtype, device=dev)
    shift = torch.zeros(b, 2, dtype=dtype, device=dev)
    if framing is not None:
        s = s * (1 + framing[:, 0].to(dev, dtype))
        shift = framing[:, 1:].to(dev, dtype)
    # x' = s (X + tx) = shift_x at X = c_x;  y' = -s (Y + ty) = shift_y at Y = -c_y
    tx = -centre_t[:, 0] + shift[:, 0] / s
    ty = centre_t[:, 1] - shift[:, 1] / s
    return code.replace(camera=torch.stack([s, tx, ty], 1))


def _backdrops(
    seeds: Tensor, size: int, saturation: float, noise: float, device
) -> tuple[Tensor, Tensor]:
    """(B, 3, S, S) muted backdrops and (B, 3, S, S) sensor noise, one generator per image."""
    bgs, noises = [], []
    for seed in seeds.tolist():
        gen = torch.Generator().manual_seed(int(seed))
        bg = backgrounds(1, size, gen, "cpu")
        grey = bg.mean(1, keepdim=True)
        level = 0.25 + 0.5 * torch.rand(1, generator=gen)
        bgs.append((level + 0.6 * (grey - grey.mean()) + saturation * (bg - grey)).clamp(0, 1))
        noises.append(torch.randn(1, 3, size, size, generator=gen) * noise)
    return torch.cat(bgs).to(device), torch.cat(noises).to(device)


@torch.no_grad()
def render_plan(
    renderer: FaceRenderer,
    plan: SynthPlan,
    config: SynthDatasetConfig,
    start: int = 0,
    stop: int | None = None,
    *,
    with_buffers: bool = True,
) -> SynthFaces:
    """Render images ``start:stop`` of a plan (see :class:`SynthFaces`)."""
    stop = len(plan) if stop is None else min(stop, len(plan))
    sel = slice(start, stop)
    code = frame_like_ffhq(renderer, plan.code[sel], plan.framing[sel])
    size, ss = config.size, config.supersample
    dev = code.camera.device
    hi = renderer(code, size * ss)
    mask, rendered = hi.buffers.mask, hi.buffers.rendered.clamp(0, 1)
    if ss > 1:
        fg = F.avg_pool2d(rendered * mask, ss)
        alpha = F.avg_pool2d(mask, ss)
    else:
        fg, alpha = rendered * mask, mask
    bg, noise = _backdrops(
        plan.noise_seeds[sel].cpu(),
        size,
        config.style.background_saturation,
        config.style.noise,
        dev,
    )
    images = (fg + bg * (1 - alpha) + noise).clamp(0, 1)
    buffers, landmarks = None, hi.landmarks
    if with_buffers:
        if ss > 1:
            out = renderer(code, size)
            buffers, landmarks = out.buffers, out.landmarks
        else:
            buffers = hi.buffers
    return SynthFaces(
        images=images,
        code=code,
        buffers=buffers,
        landmarks=landmarks,
        labels=plan.labels[sel],
        intensity=plan.intensity[sel],
        valence_arousal=plan.valence_arousal[sel],
        groups=plan.groups[sel],
        views=plan.views[sel],
        yaw=plan.yaw[sel],
        index=torch.arange(start, stop, device=dev),
    )


def _default_renderer(device: torch.device | str | None) -> FaceRenderer:
    from emorig.flame.heads import load_head

    return FaceRenderer(load_head("builtin")).to(device or "cpu")


def iter_synth_faces(
    config: SynthDatasetConfig,
    renderer: FaceRenderer | None = None,
    *,
    batch_size: int = 16,
    with_buffers: bool = True,
    device: torch.device | str | None = None,
) -> Iterator[SynthFaces]:
    """Render a dataset batch by batch (memory stays bounded for any ``count``).

    Args:
        config: the dataset.
        renderer: a renderer of the built-in head (default: built here, about 5 s, on
            ``device``); its device is used.
        batch_size: images rendered at once.
        with_buffers: also return the condition buffers at the image size.
        device: where to build the default renderer (ignored with ``renderer``).
    """
    if batch_size < 1:
        raise EmorigError(f"batch size {batch_size}: must be at least 1")
    renderer = renderer if renderer is not None else _default_renderer(device)
    plan = plan_dataset(renderer, config)
    for start in range(0, len(plan), batch_size):
        yield render_plan(
            renderer, plan, config, start, start + batch_size, with_buffers=with_buffers
        )


def synthesize(
    config: SynthDatasetConfig,
    renderer: FaceRenderer | None = None,
    *,
    batch_size: int = 16,
    with_buffers: bool = True,
    device: torch.device | str | None = None,
) -> SynthFaces:
    """The whole dataset as tensors, no disk (see :func:`iter_synth_faces` for arguments).

    Buffers take 16 floats per pixel: at 256 px that is 4 MB per image; pass
    ``with_buffers=False`` or use :func:`iter_synth_faces` for large counts.
    """
    parts = list(
        iter_synth_faces(
            config, renderer, batch_size=batch_size, with_buffers=with_buffers, device=device
        )
    )
    return _concat(parts)


def _concat(parts: Sequence[SynthFaces]) -> SynthFaces:
    if len(parts) == 1:
        return parts[0]

    def cat_record(records):
        first = records[0]
        changes = {}
        for f in dataclasses.fields(first):
            value = getattr(first, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = torch.cat([getattr(r, f.name) for r in records])
        return dataclasses.replace(first, **changes)

    changes = {}
    for f in dataclasses.fields(SynthFaces):
        values = [getattr(p, f.name) for p in parts]
        if values[0] is None:
            changes[f.name] = None
        elif isinstance(values[0], Tensor):
            changes[f.name] = torch.cat(values)
        else:
            changes[f.name] = cat_record(values)
    return SynthFaces(**changes)


# ---------------------------------------------------------------------------------------------
# files


class _Stream:
    """A sized iterable of (index, image) for progress bars, rendering batch by batch."""

    def __init__(self, batches: Iterable[SynthFaces], count: int):
        self._batches, self._count = batches, count
        self.done: list[SynthFaces] = []  # rendered batches without their images

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        for batch in self._batches:
            for j in range(len(batch)):
                yield int(batch.index[j]), batch.images[j]
            self.done.append(dataclasses.replace(batch, images=batch.images[:, :, :0, :0]))


def _caption_tile(image: np.ndarray, text: str, size: int) -> np.ndarray:
    """The image at ``size`` with ``text`` below it, widened so the text is never cut."""
    font = ImageFont.load_default()
    tile = Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS)
    box = font.getbbox(text)
    out = Image.new("RGB", (max(size, int(box[2] - box[0]) + 6), size + 14), (24, 24, 24))
    out.paste(tile, (0, 0))
    ImageDraw.Draw(out).text((3, size + 1), text, fill=(230, 230, 230), font=font)
    return np.asarray(out)


def _sheet(
    config: SynthDatasetConfig, thumbs: dict[int, np.ndarray], info: list[dict]
) -> np.ndarray:
    """Contact sheet: a grid (random), albums in rows of 10, or one row per multiview group."""
    t = min(config.size, 160)

    def caption(i: int) -> str:
        row = info[i]
        text = f"#{i}"
        if row["emotion"] is not None:
            text += f" {row['emotion']} {row['intensity']:.1f}"
        return text

    rows: list[list[np.ndarray]] = []
    row_labels: list[str] = []
    column_labels = None
    if config.mode == "multiview":
        groups = sorted({info[i]["group"] for i in thumbs})
        for g in groups:
            members = [i for i in sorted(thumbs) if info[i]["group"] == g]
            rows.append([_caption_tile(thumbs[i], caption(i), t) for i in members])
            row_labels.append(f"group {g}")
        yaws = np.linspace(-config.max_yaw, config.max_yaw, config.views)
        column_labels = [f"yaw {y:+.0f}" for y in (yaws if config.views > 1 else [0.0])]
    else:
        per_row = 10 if config.mode == "album" else 8
        order = sorted(thumbs)
        for r in range(0, len(order), per_row):
            chunk = order[r : r + per_row]
            rows.append([_caption_tile(thumbs[i], caption(i), t) for i in chunk])
            g = info[chunk[0]]["group"]
            row_labels.append(f"album {g}" if config.mode == "album" else "")
        if config.mode == "random":
            row_labels = []
    sheet = Image.fromarray(contact_sheet(rows, row_labels or None, column_labels))
    title = (
        f"SYNTHETIC (built-in procedural head, not real people) - mode {config.mode}, "
        f"seed {config.seed}, {config.count} images at {config.size} px"
    )
    font = ImageFont.load_default()
    box = font.getbbox(title)
    width = max(sheet.width, int(box[2] - box[0]) + 8)  # the title is never cut
    out = Image.new("RGB", (width, sheet.height + 18), (24, 24, 24))
    out.paste(sheet, (0, 18))
    ImageDraw.Draw(out).text((4, 3), title, fill=(255, 210, 90), font=font)
    return np.asarray(out)


def _sheet_members(config: SynthDatasetConfig) -> set[int]:
    if config.mode == "random":
        return set(range(min(config.count, 48)))
    if config.mode == "album":
        return set(range(min(config.count, 2 * config.album_size, 40)))
    return set(range(min(config.count, 8 * config.views)))


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _write_images(
    config: SynthDatasetConfig,
    renderer: FaceRenderer,
    out: Path,
    batch_size: int,
    progress: Callable[[Iterable], Iterable] | None,
) -> tuple[SynthFaces, list[Path], dict[int, np.ndarray]]:
    """Render and save every image; the faces, their files and the contact sheet's pixels."""
    stream = _Stream(
        iter_synth_faces(config, renderer, batch_size=batch_size, with_buffers=False),
        config.count,
    )
    members = _sheet_members(config)
    thumbs: dict[int, np.ndarray] = {}
    files: list[Path] = []
    for i, image in progress(stream) if progress is not None else stream:
        pixels = to_uint8(image)
        files.append(save_png(pixels, out / "images" / f"{i:06d}.png"))
        if i in members:
            thumbs[i] = pixels
    return _concat(stream.done), files, thumbs


def _write_codes(path: Path, faces: SynthFaces, rel: list[str]) -> None:
    """``codes.npz``: the code fields and every truth array, one row per image."""
    arrays = {name: getattr(faces.code, name).cpu().numpy() for name in CODE_FIELDS}
    arrays.update(
        landmarks=faces.landmarks.cpu().numpy(),
        labels=faces.labels.cpu().numpy(),
        intensity=faces.intensity.cpu().numpy(),
        valence_arousal=faces.valence_arousal.cpu().numpy(),
        groups=faces.groups.cpu().numpy(),
        views=faces.views.cpu().numpy(),
        yaw=faces.yaw.cpu().numpy(),
        files=np.array(rel),
    )
    save_npz_atomic(path, **arrays)


def _image_info(count: int, faces: SynthFaces, rel: list[str]) -> list[dict]:
    """The readable per-image entries of ``labels.json``."""
    info = []
    for i in range(count):
        label = int(faces.labels[i])
        va = faces.valence_arousal[i].tolist()
        info.append(
            {
                "file": rel[i],
                "index": i,
                "group": int(faces.groups[i]),
                "view": int(faces.views[i]),
                "yaw_degrees": round(float(faces.yaw[i]), 4),
                "label": label,
                "emotion": EMOTION_CLASSES[label] if label >= 0 else None,
                "intensity": _none_if_nan(float(faces.intensity[i])),
                "valence": _none_if_nan(va[0]),
                "arousal": _none_if_nan(va[1]),
            }
        )
    return info


def _write_labels(path: Path, config: SynthDatasetConfig, head_name: str, info: list[dict]):
    """``labels.json``: the per-image entries, the config and the conventions."""
    payload = {
        "synthetic": True,
        "note": SYNTHETIC_NOTE,
        "head": head_name,
        "config": dataclasses.asdict(config),
        "emotion_classes": list(EMOTION_CLASSES),
        "codes": "codes.npz",
        "conventions": "images float [0,1] saved as 8-bit RGB; FaceCode fields as in "
        "emorig.types (axis-angle radians, DECA orthographic camera framed FFHQ-like); "
        "landmarks: DECA 68 in image NDC, x right, y down",
        "images": info,
    }
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=1, allow_nan=False)
        f.write("\n")


def write_dataset(
    config: SynthDatasetConfig,
    out_dir: str | os.PathLike[str],
    renderer: FaceRenderer | None = None,
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> SynthDatasetResult:
    """Render a dataset to ``out_dir``: ``images/NNNNNN.png``, ``codes.npz``, ``labels.json``
    and ``contact_sheet.png``, every file written atomically (``labels.json`` last).

    ``codes.npz`` holds the FaceCode fields (:data:`CODE_FIELDS`, one row per image, cameras
    as framed), ``landmarks`` (N, 68, 2) NDC, ``labels`` (N,) int (-1 unlabelled),
    ``intensity`` (N,), ``valence_arousal`` (N, 2) (NaN unlabelled), ``groups``, ``views``,
    ``yaw`` (degrees) and ``files``. ``labels.json`` has the same per image, readable, and the
    config.

    Args:
        config: the dataset.
        out_dir: output folder (created; same-named files of an earlier run are replaced,
            images beyond ``count`` of a larger earlier run are not removed).
        renderer: a renderer of the built-in head (default: built on ``device``).
        batch_size: images rendered at once.
        device: where to build the default renderer.
        progress: wraps a sized iterable of images (e.g. a tqdm progress bar).
    """
    t0 = time.perf_counter()
    config.validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EmorigError(f"{out}: exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    renderer = renderer if renderer is not None else _default_renderer(device)
    faces, files, thumbs = _write_images(config, renderer, out, batch_size, progress)
    rel = [f"images/{p.name}" for p in files]
    codes_path = out / "codes.npz"
    _write_codes(codes_path, faces, rel)
    info = _image_info(config.count, faces, rel)
    sheet_path = save_png(_sheet(config, thumbs, info), out / "contact_sheet.png")
    labels_path = out / "labels.json"
    _write_labels(labels_path, config, renderer.head_name, info)
    return SynthDatasetResult(
        out, files, codes_path, labels_path, sheet_path, time.perf_counter() - t0
    )


def read_codes(path: str | os.PathLike[str], device: torch.device | str | None = None) -> FaceCode:
    """The ground-truth :class:`FaceCode` (N images) of a ``codes.npz`` from
    :func:`write_dataset`."""
    from emorig.errors import reading

    path = Path(path)
    with reading(str(path)), np.load(path, allow_pickle=False) as data:
        missing = [k for k in CODE_FIELDS if k not in data]
        if missing:
            raise EmorigError(f"{path}: not a synthetic dataset's codes (no {missing[0]})")
        fields = {k: torch.as_tensor(data[k], device=device) for k in CODE_FIELDS}
    return FaceCode(**fields)

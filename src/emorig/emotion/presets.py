"""Expression presets for the eight emotions on the built-in head, and labelled synthetic faces.

Each preset combines the built-in head's named expression components the way the Facial
Action Coding System describes the prototypical expressions (Ekman & Friesen; e.g. happiness =
cheek raiser + lip corner puller, AU6 + AU12), plus a jaw opening, and carries a typical
valence/arousal from Russell's circumplex (values are ours, rounded). They label the synthetic
training faces and give emotion edits a starting point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from emorig.errors import EmorigError
from emorig.flame.builtin import EXPRESSION_COMPONENTS
from emorig.render.face import FaceRenderer
from emorig.synth.sampling import SynthConfig, backgrounds, frame_like_deca, sample_codes
from emorig.types import EMOTION_CLASSES, FaceCode


@dataclass(frozen=True)
class Preset:
    """An emotion's expression on the built-in head at intensity 1."""

    components: dict[str, float]
    jaw_degrees: float
    valence: float
    arousal: float


PRESETS: dict[str, Preset] = {
    "neutral": Preset({}, 0.0, 0.0, 0.0),
    # AU6 + AU12
    "happy": Preset({"smile": 1.0}, 3.0, 0.8, 0.45),
    # AU1 + AU4 + AU15
    "sad": Preset({"sad": 1.3, "inner_brow_raise": 0.9, "frown": 0.2}, 0.0, -0.65, -0.35),
    # AU1 + AU2 + AU5 + AU26
    "surprise": Preset({"brow_raise": 1.0, "eye_widen": 0.8}, 14.0, 0.25, 0.8),
    # AU1 + AU2 + AU4 + AU5 + AU20 + AU26
    "fear": Preset(
        {
            "inner_brow_raise": 0.8,
            "brow_raise": 0.4,
            "eye_widen": 1.0,
            "mouth_stretch": 0.9,
            "frown": 0.2,
        },
        7.0,
        -0.6,
        0.75,
    ),
    # AU9 + AU10 + AU4
    "disgust": Preset({"nose_wrinkle": 1.0, "upper_lip_raise": 0.7, "frown": 0.3}, 2.0, -0.7, 0.35),
    # AU4 + AU5 + AU7 + AU23
    "anger": Preset({"frown": 1.3, "lip_press": 1.0, "eye_widen": 0.3}, 0.0, -0.6, 0.7),
    # unilateral AU12 + AU14
    "contempt": Preset({"smirk_left": 1.0, "lip_press": 0.3}, 0.0, -0.45, 0.2),
}
assert tuple(PRESETS) == EMOTION_CLASSES


def preset_code(
    code: FaceCode, emotion: str | int, intensity: float | torch.Tensor = 1.0
) -> FaceCode:
    """``code`` with its expression and jaw replaced by the preset's, scaled by ``intensity``
    (a scalar or one value per item). Built-in head only (its components have names)."""
    name = EMOTION_CLASSES[emotion] if isinstance(emotion, int) else emotion
    if name not in PRESETS:
        raise EmorigError(f"unknown emotion '{name}'; choose from {', '.join(PRESETS)}")
    preset = PRESETS[name]
    names = [n for n, _ in EXPRESSION_COMPONENTS]
    s = torch.as_tensor(intensity, dtype=code.expression.dtype, device=code.expression.device)
    s = s.reshape(-1, 1) if s.dim() else s.reshape(1, 1)
    expression = torch.zeros_like(code.expression)
    for component, value in preset.components.items():
        expression[:, names.index(component)] = value
    jaw = torch.zeros_like(code.jaw_pose)
    jaw[:, 0] = math.radians(preset.jaw_degrees)
    return code.replace(expression=expression * s, jaw_pose=jaw * s)


@dataclass(frozen=True)
class LabelledBatch:
    """Synthetic faces with emotion labels: images (B, 3, S, S) in [0, 1], class indices (B,),
    valence/arousal (B, 2), and the codes that made them."""

    images: torch.Tensor
    labels: torch.Tensor
    valence_arousal: torch.Tensor
    code: FaceCode


@torch.no_grad()
def labelled_codes(
    renderer: FaceRenderer,
    batch: int,
    generator: torch.Generator,
    intensity: tuple[float, float] = (0.5, 1.2),
    noise: float = 0.12,
    image_size: int = 224,
) -> tuple[FaceCode, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random identities, poses and lights, each showing a random emotion preset at a random
    intensity with small random expression noise (classes drawn uniformly), framed like a
    DECA crop.

    Returns:
        (code, labels (B,), valence/arousal (B, 2), intensity (B,)).
    """
    config = SynthConfig(image_size=image_size, strong_expression_prob=0.0)
    code = sample_codes(renderer, batch, config, generator)
    dev = code.expression.device
    labels = torch.randint(0, len(EMOTION_CLASSES), (batch,), generator=generator).to(dev)
    lo, hi = intensity
    strength = (lo + (hi - lo) * torch.rand(batch, generator=generator)).to(dev)
    expressions, jaws = [], []
    for i in range(batch):
        one = preset_code(code[i : i + 1], int(labels[i]), strength[i])
        expressions.append(one.expression)
        jaws.append(one.jaw_pose)
    k = min(len(EXPRESSION_COMPONENTS), code.expression.shape[1])
    jitter = torch.zeros_like(code.expression)
    jitter[:, :k] = torch.randn(batch, k, generator=generator).to(dev) * noise
    code = code.replace(expression=torch.cat(expressions) + jitter, jaw_pose=torch.cat(jaws))
    code = frame_like_deca(renderer, code, config, generator)
    va = torch.tensor(
        [
            [PRESETS[EMOTION_CLASSES[int(c)]].valence, PRESETS[EMOTION_CLASSES[int(c)]].arousal]
            for c in labels
        ],
        device=dev,
    )
    return code, labels, va * strength[:, None].clamp(max=1.0), strength


@torch.no_grad()
def labelled_batch(
    renderer: FaceRenderer,
    batch: int,
    generator: torch.Generator,
    image_size: int = 224,
    intensity: tuple[float, float] = (0.5, 1.2),
    noise: float = 0.12,
) -> LabelledBatch:
    """:func:`labelled_codes` rendered on random backgrounds."""
    code, labels, va, _ = labelled_codes(renderer, batch, generator, intensity, noise, image_size)
    out = renderer(code, image_size)
    bg = backgrounds(batch, image_size, generator, code.expression.device)
    images = (out.buffers.rendered * out.buffers.mask + bg * (1 - out.buffers.mask)).clamp(0, 1)
    return LabelledBatch(images, labels, va, code)

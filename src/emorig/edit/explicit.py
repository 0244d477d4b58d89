"""Edits asked for by name instead of by a target photo: ``--face`` terms and ``--light``.

``--face`` uses the terms ``emorig render --face`` knows (:func:`~emorig.render.showcase.
parse_face_spec`), read as a change of the source's code:

* an expression component by name (built-in head: ``smile``, ``brow_raise``, ...) or
  ``expN`` sets that coefficient (prior standard deviations) and keeps the others;
* ``jaw=DEG`` sets the jaw opening in degrees; ``eyes=DEG`` the eyeballs' yaw;
* ``yaw``, ``pitch``, ``roll`` (degrees) turn the head from where it is (a relative rotation:
  the photo's pose plus the asked turn);
* ``shapeN`` / ``albedoN`` are refused: an edit keeps the person.

``--light`` moves the spherical-harmonics light in image terms: ``left``, ``right``,
``above``, ``below``, ``front`` with a strength (1 when omitted): a surface facing that way gets
``1 + strength`` times the ambient shading, one facing away ``1 - strength`` times (so 0.3 is
a soft key light, 1 leaves the far side dark), and ``ambient=F`` scales the ambient term (and
with it the overall brightness). Terms add up: ``left=0.6+above=0.3``. DECA's SH layout:
coefficient 1 is x (the subject's left, image right), 2 is y (up), 3 is z (towards the
camera).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from emorig.errors import EmorigError
from emorig.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    yaw_pitch_roll_to_matrix,
)
from emorig.render.showcase import FaceSpec, parse_face_spec
from emorig.types import FaceCode

__all__ = [
    "LIGHT_TERMS",
    "apply_face_spec",
    "apply_light_spec",
    "parse_face",
    "parse_light_spec",
    "turn_head",
]

#: DECA's SH constants of bands 0 and 1 (0.2821 and 0.4886): with a first-band term of
#: ``strength x _BAND_RATIO x ambient``, a surface facing the light gets ``1 + strength`` times
#: the ambient shading and one facing away ``1 - strength`` times.
_BAND_RATIO = 0.28209479 / 0.48860251

#: Image-space light directions -> (x, y, z) of DECA's first SH band.
LIGHT_TERMS: dict[str, tuple[float, float, float]] = {
    "left": (-1.0, 0.0, 0.0),
    "right": (1.0, 0.0, 0.0),
    "above": (0.0, 1.0, 0.0),
    "below": (0.0, -1.0, 0.0),
    "front": (0.0, 0.0, 1.0),
}


def parse_face(text: str, expression_names: Sequence[str]) -> FaceSpec:
    """A ``--face`` change; identity and albedo terms are refused (an edit keeps the person)."""
    spec = parse_face_spec(text, expression_names)
    if spec.shape or spec.albedo:
        raise EmorigError(
            f"--face '{text}': shapeN / albedoN would change the person; an edit changes "
            "expression, jaw, eyes, head pose (yaw/pitch/roll) and, with --light, the light"
        )
    return spec


def apply_face_spec(code: FaceCode, spec: FaceSpec) -> FaceCode:
    """``code`` (B, ...) with the change ``spec`` applied to every item (see the module
    docstring for what each term means)."""
    expression = code.expression.clone()
    for k, v in spec.expression.items():
        if k >= expression.shape[1]:
            raise EmorigError(
                f"--face '{spec.label}': expression component {k} does not exist "
                f"(this head uses {expression.shape[1]})"
            )
        expression[:, k] = v
    given = _terms(spec.label)
    jaw, eyes = code.jaw_pose.clone(), code.eye_pose.clone()
    if "jaw" in given:
        jaw[:, 0] = math.radians(spec.jaw)
    if "eyes" in given:
        eyes[:, 1] = eyes[:, 4] = math.radians(spec.eyes)
    pose = turn_head(code.global_pose, spec.yaw, spec.pitch, spec.roll)
    return code.replace(expression=expression, jaw_pose=jaw, eye_pose=eyes, global_pose=pose)


def turn_head(pose: torch.Tensor, yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """(B, 3) axis-angle ``pose`` turned further by yaw, pitch and roll in degrees (the same
    tensor when all three are 0)."""
    if not (yaw or pitch or roll):
        return pose
    angles = (torch.tensor(math.radians(a), dtype=torch.float64) for a in (yaw, pitch, roll))
    turn = yaw_pitch_roll_to_matrix(*angles).to(pose)
    return matrix_to_axis_angle(turn @ axis_angle_to_matrix(pose))


def _terms(text: str) -> set[str]:
    """The term names a spec gives (``jaw=0`` is given, a missing ``jaw`` is not)."""
    return {t.partition("=")[0].strip() for t in text.split("+")}


def parse_light_spec(text: str) -> dict[str, float]:
    """``left=0.6+above=0.3`` -> ``{"left": 0.6, "above": 0.3}``; ``ambient`` too."""
    out: dict[str, float] = {}
    for term in filter(None, (t.strip() for t in text.split("+"))):
        key, sep, raw = term.partition("=")
        key = key.strip()
        if key not in (*LIGHT_TERMS, "ambient"):
            raise EmorigError(
                f"--light '{text}': unknown term '{key}'; terms: "
                f"{', '.join(LIGHT_TERMS)} and ambient, each with an optional =VALUE"
            )
        try:
            value = float(raw) if sep else 1.0
        except ValueError:
            raise EmorigError(f"--light '{text}': '{raw}' is not a number") from None
        if not math.isfinite(value) or (key == "ambient" and value <= 0):
            raise EmorigError(f"--light '{text}': '{term}' is out of range")
        out[key] = out.get(key, 0.0) + value
    if not out:
        raise EmorigError(f"--light '{text}': no terms")
    return out


def apply_light_spec(code: FaceCode, terms: dict[str, float]) -> FaceCode:
    """``code`` with its SH light moved by ``terms`` (:func:`parse_light_spec`)."""
    light = code.light.clone()
    ambient = light[:, 0:1].clone()  # (B, 1, 3): per colour channel
    for key, value in terms.items():
        if key == "ambient":
            continue
        x, y, z = LIGHT_TERMS[key]
        direction = torch.tensor([x, y, z], dtype=light.dtype, device=light.device)
        light[:, 1:4] = light[:, 1:4] + value * _BAND_RATIO * direction[None, :, None] * ambient
    if "ambient" in terms:
        light[:, 0] = light[:, 0] * terms["ambient"]
    return code.replace(light=light)

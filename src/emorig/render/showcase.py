"""Render a head in several named poses and expressions to PNG buffers and a contact sheet
(what ``emorig render`` does)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from emorig.errors import EmorigError
from emorig.flame.data import HeadAssets
from emorig.geometry.camera import ndc_to_pixels
from emorig.geometry.rotations import matrix_to_axis_angle, yaw_pitch_roll_to_matrix
from emorig.io.atomic import atomic_write
from emorig.io.images import contact_sheet, save_png, to_uint8
from emorig.render.face import FaceRender, FaceRenderer
from emorig.types import FaceCode

BUFFERS = ("rendered", "normal", "albedo", "shape", "landmarks", "mask", "depth", "uv")
DEFAULT_BUFFERS = ("rendered", "normal", "albedo", "shape", "landmarks")
# What `emorig render` shows when no --face is given.
BUILTIN_SHOWCASE = (
    "neutral",
    "smile",
    "frown",
    "brow_raise+eye_widen",
    "blink",
    "lip_pucker",
    "sad",
    "jaw=16",
    "smile+yaw=30",
    "brow_raise+eye_widen+jaw=12+yaw=-25",
)
FLAME_SHOWCASE = ("neutral", "exp0=2", "exp1=2", "jaw=16", "yaw=30", "pitch=15")
DEFAULT_CAMERA = (7.0, 0.0, 0.005)


@dataclass(frozen=True)
class FaceSpec:
    """One face to render, parsed from text like ``smile=0.8+jaw=12+yaw=20``.

    Terms are joined by ``+``: an expression component by name (built-in head) or as
    ``expN``, identity ``shapeN``, albedo ``albedoN`` (value 1 when omitted), and angles in
    degrees ``jaw``, ``yaw``, ``pitch``, ``roll``, ``eyes`` (both eyeballs' yaw).
    """

    label: str
    expression: dict[int, float] = field(default_factory=dict)
    shape: dict[int, float] = field(default_factory=dict)
    albedo: dict[int, float] = field(default_factory=dict)
    jaw: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    eyes: float = 0.0


def parse_face_spec(text: str, expression_names: Sequence[str] = ()) -> FaceSpec:
    """Parse a :class:`FaceSpec`; raises :class:`EmorigError` naming the bad term."""
    names = {n: i for i, n in enumerate(expression_names)}
    values: dict = {"expression": {}, "shape": {}, "albedo": {}}
    angles: dict[str, float] = {}
    for term in filter(None, (t.strip() for t in text.split("+"))):
        key, sep, raw = term.partition("=")
        key = key.strip()
        try:
            value = float(raw) if sep else 1.0
        except ValueError:
            raise EmorigError(f"face '{text}': '{raw}' in '{term}' is not a number") from None
        if not math.isfinite(value):
            raise EmorigError(f"face '{text}': '{term}' is not finite")
        if key == "neutral":
            continue
        if key in ("jaw", "yaw", "pitch", "roll", "eyes"):
            angles[key] = value
        elif key in names:
            values["expression"][names[key]] = value
        elif key[:3] == "exp" and key[3:].isdigit():
            values["expression"][int(key[3:])] = value
        elif key[:5] == "shape" and key[5:].isdigit():
            values["shape"][int(key[5:])] = value
        elif key[:6] == "albedo" and key[6:].isdigit():
            values["albedo"][int(key[6:])] = value
        else:
            known = ", ".join(expression_names) if expression_names else "none (use expN)"
            raise EmorigError(
                f"face '{text}': unknown term '{key}'. Expression names: {known}; also "
                "expN, shapeN, albedoN and jaw/yaw/pitch/roll/eyes in degrees"
            )
    return FaceSpec(label=text, **values, **angles)


def parse_face_specs(faces: Sequence[str], expression_names: Sequence[str] = ()) -> list[FaceSpec]:
    """Parse several face specs (:func:`parse_face_spec`); needs no head, so callers can check
    their input before loading one."""
    return [parse_face_spec(f, expression_names) for f in faces]


def studio_light(batch: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(B, 9, 3) a soft white key from the upper front left plus ambient (DECA's SH layout)."""
    sh = torch.zeros(batch, 9, 3, dtype=dtype, device=device)
    sh[:, 0] = 2.9  # ambient: 2.9 * 0.2821 = 0.82
    sh[:, 1] = -0.12  # x: a little more light from the subject's right (image left)
    sh[:, 2] = 0.22  # y: from above
    sh[:, 3] = 0.30  # z: from the front
    return sh


def specs_to_code(
    specs: Sequence[FaceSpec],
    renderer: FaceRenderer,
    camera: Sequence[float] = DEFAULT_CAMERA,
) -> FaceCode:
    """Turn face specs into a batched :class:`FaceCode` for ``renderer``."""
    n = len(specs)
    p = next(renderer.buffers())
    dev = p.device
    code = FaceCode.neutral(
        n,
        renderer.flame.n_shape,
        renderer.flame.n_expression,
        max(renderer.n_albedo, 1),
        camera=tuple(camera),
        device=dev,
    )
    exp, shape, alb = code.expression.clone(), code.shape.clone(), code.albedo.clone()
    pose, jaw, eyes = code.global_pose.clone(), code.jaw_pose.clone(), code.eye_pose.clone()
    for i, s in enumerate(specs):
        for table, target, what in (
            (s.expression, exp, "expression"),
            (s.shape, shape, "identity"),
            (s.albedo, alb, "albedo"),
        ):
            for k, v in table.items():
                if k >= target.shape[1]:
                    raise EmorigError(
                        f"face '{s.label}': {what} component {k} does not exist "
                        f"(this head uses {target.shape[1]})"
                    )
                target[i, k] = v
        rot = yaw_pitch_roll_to_matrix(
            *(torch.tensor(math.radians(a)) for a in (s.yaw, s.pitch, s.roll))
        )
        pose[i] = matrix_to_axis_angle(rot)
        jaw[i, 0] = math.radians(s.jaw)
        eyes[i, 1] = eyes[i, 4] = math.radians(s.eyes)
    light = studio_light(n, device=dev)
    return code.replace(
        expression=exp,
        shape=shape,
        albedo=alb if renderer.n_albedo else code.albedo[:, :0],
        global_pose=pose,
        jaw_pose=jaw,
        eye_pose=eyes,
        light=light,
    )


def buffer_images(
    render: FaceRender, shape: tuple[torch.Tensor, torch.Tensor], buffers: Sequence[str]
) -> dict[str, list[np.ndarray]]:
    """(H, W, 3) uint8 pictures of each requested buffer, per face."""
    b = render.buffers
    out: dict[str, list[np.ndarray]] = {}
    n = b.mask.shape[0]
    for name in buffers:
        if name == "rendered":
            imgs = b.rendered
        elif name == "normal":
            imgs = (b.normal + 1) / 2 * b.mask
        elif name == "albedo":
            imgs = b.albedo
        elif name == "mask":
            imgs = b.mask
        elif name == "shape":
            imgs = shape[0]
        elif name == "uv":
            imgs = torch.cat([b.uv, torch.zeros_like(b.mask)], 1)
        elif name == "depth":
            d = b.depth
            m = b.mask > 0
            lo = torch.where(m, d, torch.inf).amin((1, 2, 3), keepdim=True)
            hi = torch.where(m, d, -torch.inf).amax((1, 2, 3), keepdim=True)
            imgs = torch.where(m, 1 - (d - lo) / (hi - lo).clamp_min(1e-12), 0.0)
        elif name == "landmarks":
            out[name] = [_draw_landmarks(b.rendered[i], render.landmarks, i) for i in range(n)]
            continue
        else:
            raise EmorigError(f"unknown buffer '{name}'; choose from {', '.join(BUFFERS)}")
        out[name] = [to_uint8(imgs[i]) for i in range(n)]
    return out


def _draw_landmarks(image: torch.Tensor, landmarks: torch.Tensor | None, i: int) -> np.ndarray:
    base = Image.fromarray(to_uint8(image))
    if landmarks is None:
        return np.asarray(base)
    h, w = image.shape[1:]
    px = ndc_to_pixels(landmarks[i].detach().float().cpu(), h, w).numpy()
    draw = ImageDraw.Draw(base)
    r = max(1.0, w / 160)
    for k, (x, y) in enumerate(px):
        colour = (255, 200, 0) if k < 17 else (0, 230, 120)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return np.asarray(base)


@dataclass(frozen=True)
class ShowcaseResult:
    sheet: Path
    files: list[Path]
    parameters: Path


def render_showcase(
    head: HeadAssets,
    faces: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    size: int = 256,
    buffers: Sequence[str] = DEFAULT_BUFFERS,
    camera: Sequence[float] = DEFAULT_CAMERA,
    device: str | torch.device = "cpu",
) -> ShowcaseResult:
    """Render each face spec, write one PNG per buffer and face, a labelled contact sheet
    (``sheet.png``) and the exact parameters (``faces.json``)."""
    from emorig.flame.builtin import expression_names

    specs = parse_face_specs(faces, expression_names() if head.synthetic else [])
    for name in buffers:
        if name not in BUFFERS:
            raise EmorigError(f"unknown buffer '{name}'; choose from {', '.join(BUFFERS)}")
    renderer = FaceRenderer(head).to(device)
    code = specs_to_code(specs, renderer, camera)
    with torch.inference_mode():
        render = renderer(code, size)
        shape = renderer.render_shape(code, size)
    pictures = buffer_images(render, shape, buffers)
    out = Path(out_dir)
    files = []
    for i, spec in enumerate(specs):
        stem = f"{i:02d}_" + _slug(spec.label)
        for name in buffers:
            files.append(save_png(pictures[name][i], out / f"{stem}_{name}.png"))
    rows = [[pictures[name][i] for name in buffers] for i in range(len(specs))]
    sheet = contact_sheet(rows, [s.label for s in specs], list(buffers))
    sheet_path = save_png(sheet, out / "sheet.png")
    params = {
        "head": head.flame.name,
        "synthetic": head.synthetic,
        "size": size,
        "camera": list(camera),
        "faces": [asdict(s) for s in specs],
    }
    params_path = out / "faces.json"
    with atomic_write(params_path, "w") as f:
        json.dump(params, f, indent=2)
    return ShowcaseResult(sheet_path, files, params_path)


def _slug(text: str) -> str:
    keep = [c if c.isalnum() or c in "-." else "_" for c in text]
    return "".join(keep).strip("_")[:60] or "face"

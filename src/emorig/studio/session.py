"""What ``emorig studio`` does, without a web page: one photo, its fitted faces, the controls,
the warp preview, the full-resolution result and its files.

The page (:mod:`emorig.studio.app`) only moves values between widgets and a
:class:`StudioSession`; everything a test needs to check the behaviour runs here without a
browser.

Controls (:class:`Controls`) are changes of the photo's fitted code, so every slider at zero
gives the photo back exactly: an emotion (found by the expression search of
``emorig edit --emotion`` at full intensity, for all eight when a face is loaded or picked;
the intensity blends towards it), named expressions of the
built-in head added to the photo's coefficients, a jaw opening added in degrees, a head
turn (yaw / pitch / roll, degrees, relative to the photo's pose) and a light from a direction
in the image plane with a strength. The preview warps a copy of the photo at most
``PREVIEW_SIDE`` pixels on a side (about 0.1 s); the result and the downloads are at the
photo's own resolution.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emorig.errors import EmorigError
from emorig.types import EMOTION_CLASSES, FaceCode

__all__ = [
    "EXPRESSION_SLIDERS",
    "MAX_PIXELS",
    "PREVIEW_SIDE",
    "Controls",
    "StudioSession",
    "sample_photo",
]

#: Largest photo the studio takes (pixels); bigger ones are refused with one sentence.
MAX_PIXELS = 40_000_000
#: Longest side of the live preview.
PREVIEW_SIDE = 512
#: The built-in head's named expressions offered as sliders.
EXPRESSION_SLIDERS = ("smile", "frown", "brow_raise", "blink", "eye_widen", "lip_pucker")


@dataclass(frozen=True)
class Controls:
    """The studio's sliders; all at their defaults give the photo back.

    Attributes:
        emotion: one of :data:`~emorig.types.EMOTION_CLASSES`, or ``"none"``.
        intensity: of the emotion, 0..1.
        expressions: named expression -> amount added to the photo's coefficient (prior SDs).
        jaw: opening added, degrees.
        yaw, pitch, roll: head turn from the photo's pose, degrees.
        light_direction: where the added light comes from in the image, degrees (0: right,
            90: above, 180: left, 270: below).
        light_strength: 0 (the photo's light) .. 1 (the far side dark).
    """

    emotion: str = "none"
    intensity: float = 1.0
    expressions: dict[str, float] = field(default_factory=dict)
    jaw: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    light_direction: float = 180.0
    light_strength: float = 0.0

    def describe(self) -> str:
        """A short, file-name-safe summary of what is changed (``"unchanged"`` when nothing)."""
        parts = []
        if self.emotion != "none":
            parts.append(f"{self.emotion}{self.intensity:.2f}")
        parts += [f"{k}{v:+.2f}" for k, v in sorted(self.expressions.items()) if v]
        for name in ("jaw", "yaw", "pitch", "roll"):
            if getattr(self, name):
                parts.append(f"{name}{getattr(self, name):+.0f}")
        if self.light_strength:
            parts.append(f"light{self.light_direction:.0f}-{self.light_strength:.2f}")
        return "_".join(parts) or "unchanged"


def sample_photo(renderer, side: int = 512) -> tuple[np.ndarray, np.ndarray, FaceCode]:
    """A SYNTHETIC sample face: the built-in head rendered on a grey backdrop.

    Returns the (side, side, 3) uint8 image, its (3, 3) image -> 224-crop matrix and the code
    that drew it (so the studio can edit it without fitting)."""
    from emorig.geometry.camera import DECA_CROP, CropTransform
    from emorig.render.showcase import parse_face_spec, specs_to_code

    code = specs_to_code([parse_face_spec("neutral")], renderer)
    scale = DECA_CROP / side
    matrix = np.diag([scale, scale, 1.0])
    device = code.expression.device
    crop = CropTransform(
        torch.tensor(matrix, dtype=torch.float32, device=device)[None], DECA_CROP, (side, side)
    )
    with torch.no_grad():
        out = renderer(code, crop=crop).buffers
    grey = torch.full_like(out.rendered, 0.55)
    image = out.rendered.clamp(0, 1) * out.mask + grey * (1 - out.mask)
    pixels = (image[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return pixels, matrix, code


@dataclass
class _Face:
    """One face of the loaded photo, with what
    :func:`~emorig.reconstruct.pipeline.shape_overlay` and
    :func:`~emorig.edit.methods.refine_photo` read of an aligned face."""

    matrix: np.ndarray  # photo pixels -> 224 crop
    code: FaceCode
    quality: dict | None
    detector: str
    source_landmarks: np.ndarray  # (68, 2) in photo pixels
    image_size: tuple[int, int]  # the photo's (height, width)

    def crop_transform(self):
        from emorig.geometry.camera import DECA_CROP, CropTransform

        m = torch.as_tensor(self.matrix, dtype=torch.float32)[None]
        return CropTransform(m, DECA_CROP, self.image_size)


class StudioSession:
    """One user's photo and its faces.

    Args:
        renderer: the built-in head's :class:`~emorig.render.face.FaceRenderer`.
        reconstructor: a ``fit`` :class:`~emorig.reconstruct.pipeline.Reconstructor` on the
            same head (created on first use when None).
        predictor: the code-space emotion predictor (created on first emotion when None).
        refiner: a :class:`~emorig.edit.methods.WarpEditor` holding a diffusion model, for
            "refine with diffusion" (None: no model).
    """

    def __init__(self, renderer, reconstructor=None, predictor=None, refiner=None):
        self.renderer, self.reconstructor = renderer, reconstructor
        self.predictor, self.refiner = predictor, refiner
        self.photo: np.ndarray | None = None
        self.name = "photo"
        self.synthetic = False
        self.faces: list[_Face] = []
        self.index = 0
        self._emotion_cache: dict[tuple, FaceCode] = {}

    # -- loading ---------------------------------------------------------------------------

    def load_sample(self) -> None:
        """Start with the SYNTHETIC built-in-head sample (no fitting)."""
        from emorig.faces.align import transform_points
        from emorig.geometry.camera import DECA_CROP, ndc_to_pixels

        pixels, matrix, code = sample_photo(self.renderer)
        with torch.no_grad():
            ndc = self.renderer.project(self.renderer.geometry(code).landmarks2d, code)[0, :, :2]
        crop_px = ndc_to_pixels(ndc, DECA_CROP, DECA_CROP).cpu().numpy()
        landmarks = transform_points(np.linalg.inv(matrix), crop_px)
        face = _Face(matrix, code, None, "none (rendered)", landmarks, pixels.shape[:2])
        self._set(pixels, "builtin-sample", [face])
        self.synthetic = True

    def load_file(self, path: str | Path, progress=None) -> None:
        """Read a photo, find and fit its faces (largest first). Raises :class:`EmorigError`
        with one sentence on an unreadable file, a huge image or a photo without a face."""
        from emorig.io.images import ImageReadError, read_image

        try:
            loaded = read_image(path)
        except ImageReadError as err:
            raise EmorigError(f"This file cannot be read as an image ({err.reason}).") from None
        h, w = loaded.pixels.shape[:2]
        if h * w > MAX_PIXELS:
            raise EmorigError(
                f"The image is too large ({w} x {h} pixels); the studio takes photos up to "
                f"{MAX_PIXELS // 1_000_000} megapixels."
            )
        self._set(loaded.pixels, Path(path).stem, self._fit(loaded.pixels, progress))
        self.synthetic = False

    def _fit(self, pixels: np.ndarray, progress) -> list[_Face]:
        rec = self._reconstructor()
        if progress is not None:
            progress(0.1, "finding faces")
        rec.aligner.all_faces = True
        faces, _ = rec.aligner.align(pixels)
        if not faces:
            raise EmorigError("No face was found in this photo.")
        if progress is not None:
            progress(0.4, f"fitting {len(faces)} face{'s' * (len(faces) > 1)}")
        out = []
        for r in rec.reconstruct_crops(faces):
            quality = None if r.quality is None else r.quality.to_json()
            face = r.face
            found_by = face.detection.detector
            size = pixels.shape[:2]
            out.append(_Face(face.matrix, r.code, quality, found_by, face.source_landmarks, size))
        return out

    def _reconstructor(self):
        if self.reconstructor is None:
            from emorig.flame.heads import load_head
            from emorig.reconstruct.pipeline import Reconstructor

            device = self.renderer.flame.v_template.device
            self.reconstructor = Reconstructor("fit", load_head("builtin"), device=device)
        return self.reconstructor

    def _set(self, pixels: np.ndarray, name: str, faces: list[_Face]) -> None:
        self.photo, self.name, self.faces, self.index = pixels, name, faces, 0
        self._emotion_cache.clear()

    def pick(self, index: int) -> None:
        """Edit face ``index`` (0: the largest)."""
        if not 0 <= index < len(self.faces):
            raise EmorigError(f"There is no face {index + 1} in this photo.")
        self.index = index  # the emotion cache is kept: its entries name their face

    @property
    def face(self) -> _Face:
        if self.photo is None or not self.faces:
            raise EmorigError("Load a photo first.")
        return self.faces[self.index]

    # -- what the page shows ---------------------------------------------------------------

    def overlay(self) -> np.ndarray:
        """The photo with the fitted 3D face of the chosen face drawn over it (grey shape)."""
        from emorig.reconstruct.pipeline import shape_overlay

        face = self.face
        return shape_overlay(self.renderer, face.code, face, self.photo)

    def shape_view(self, controls: Controls | None = None) -> np.ndarray:
        """(224, 224, 3) the 3D face asked for, rendered frontally in its crop."""
        from emorig.geometry.camera import DECA_CROP
        from emorig.io.images import to_uint8

        code = self.code_for(controls or Controls())
        with torch.no_grad():
            shape, alpha = self.renderer.render_shape(code, DECA_CROP)
        return to_uint8((shape * alpha + 0.1 * (1 - alpha))[0])

    def quality_text(self) -> str:
        """One line about the chosen face: how it was found and whether its fit is sound."""
        face = self.face
        head = f"face {self.index + 1} of {len(self.faces)}, found by {face.detector}"
        if self.synthetic:
            return "SYNTHETIC sample: the built-in head, drawn from a known code (no fit)."
        q = face.quality or {}
        if not q:
            return f"{head}."
        verdict = q.get("quality", "ok")
        text = f"{head}; fit {verdict}, landmarks {q.get('landmark_error_px', 0):.1f} px"
        if verdict != "ok":
            text += " (" + "; ".join(q.get("reasons", [])) + "): edits may be off"
        return text + "."

    # -- edits -----------------------------------------------------------------------------

    def code_for(self, controls: Controls) -> FaceCode:
        """The chosen face's code with the controls applied."""
        from emorig.edit.explicit import apply_light_spec, turn_head
        from emorig.edit.photo import pose_kept
        from emorig.flame.builtin import expression_index

        base = self.face.code
        code = self._emotion(base, controls.emotion, controls.intensity)
        expression = code.expression.clone()
        for name, value in controls.expressions.items():
            if value:
                expression[:, expression_index(name)] += value
        jaw = code.jaw_pose.clone()
        jaw[:, 0] = jaw[:, 0] + math.radians(controls.jaw)
        pose = turn_head(code.global_pose, controls.yaw, controls.pitch, controls.roll)
        code = code.replace(expression=expression, jaw_pose=jaw, global_pose=pose)
        if controls.light_strength:
            a = math.radians(controls.light_direction)
            s = controls.light_strength
            code = apply_light_spec(code, {"right": s * math.cos(a), "above": s * math.sin(a)})
        return pose_kept(self.renderer, base, code)

    def _emotion(self, base: FaceCode, emotion: str, intensity: float) -> FaceCode:
        """``base`` moved towards the expression the emotion search finds at full intensity
        (searched once per face and emotion, then blended by ``intensity``, so moving the
        intensity slider costs no search)."""
        if emotion == "none" or intensity <= 0:
            return base
        if emotion not in EMOTION_CLASSES:
            raise EmorigError(f"Unknown emotion '{emotion}'.")
        key = (self.index, emotion)
        if key not in self._emotion_cache:
            from emorig.edit.emotion import EmotionTarget
            from emorig.edit.modes import edit_mode

            if self.predictor is None:
                from emorig.edit.emotion import emotion_predictor

                device = self.renderer.flame.v_template.device
                self.predictor = emotion_predictor("codes", self.renderer, "builtin", None, device)
            target = EmotionTarget(emotion, 1.0)
            self._emotion_cache[key] = edit_mode("emotion").search(base, self.predictor, target)
        full = self._emotion_cache[key]
        return base.replace(
            expression=base.expression + intensity * (full.expression - base.expression),
            jaw_pose=base.jaw_pose + intensity * (full.jaw_pose - base.jaw_pose),
        )

    def search_emotions(self, progress=None) -> None:
        """Find the chosen face's expression for every emotion now (about 0.4 s each), so
        picking one later costs only the warp."""
        for k, emotion in enumerate(EMOTION_CLASSES):
            if progress is not None:
                progress(0.6 + 0.4 * k / len(EMOTION_CLASSES), f"preparing emotions ({emotion})")
            self._emotion(self.face.code, emotion, 1.0)

    def preview(self, controls: Controls) -> tuple[np.ndarray, float]:
        """The edit of a copy at most :data:`PREVIEW_SIDE` on a side, and its seconds."""
        from PIL import Image

        from emorig.edit.warp import warp_edit

        start = time.perf_counter()
        photo, face = self.photo, self.face
        h, w = photo.shape[:2]
        scale = min(1.0, PREVIEW_SIDE / max(h, w))
        small, matrix = photo, face.matrix
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
            sx, sy = w / size[0], h / size[1]
            matrix = face.matrix @ np.diag([sx, sy, 1.0])
        code = self.code_for(controls)
        out = warp_edit(small, matrix, self.renderer, face.code, code).image
        return out, time.perf_counter() - start

    def result(self, controls: Controls, refine: bool = False, progress=None) -> np.ndarray:
        """The edit at the photo's own resolution (``refine``: warp+diffusion)."""
        from emorig.edit.warp import warp_edit

        face, code = self.face, self.code_for(controls)
        image = warp_edit(self.photo, face.matrix, self.renderer, face.code, code).image
        if refine:
            if self.refiner is None:
                raise EmorigError(
                    "Refining needs a diffusion model: start the studio with --model FOLDER."
                )
            from emorig.edit.methods import refine_photo

            if progress is not None:
                progress(0.3, "refining with the diffusion model")
            image = refine_photo(self.refiner, self.photo, image, face, face.code, code)
        return image

    def export(self, controls: Controls, folder: str | Path, refine: bool = False) -> list[Path]:
        """Write the edited photo (PNG, the photo's size) and its code (``.npz``, ``.json``)."""
        from emorig.io.atomic import atomic_write, save_npz_atomic
        from emorig.io.images import save_png
        from emorig.reconstruct.pipeline import code_arrays

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{self.name}_{controls.describe()}"[:120]
        image = self.result(controls, refine=refine)
        arrays = code_arrays(self.code_for(controls))
        png = save_png(image, folder / f"{stem}.png")
        npz = folder / f"{stem}.npz"
        save_npz_atomic(npz, crop_transform=self.face.matrix, **arrays)
        meta = {
            "source": self.name,
            "synthetic": self.synthetic,
            "face": self.index,
            "controls": controls.__dict__,
            "refined": refine,
            "image_size": list(self.photo.shape[:2]),
            "crop_transform": self.face.matrix.tolist(),
            "code": {k: np.round(v, 6).tolist() for k, v in arrays.items()},
        }
        with atomic_write(folder / f"{stem}.json", "w") as f:
            json.dump(meta, f, indent=1)
        return [png, npz, folder / f"{stem}.json"]

"""Editing photos at their own resolution (``emorig edit --method warp`` on photos).

Each photo's largest face is detected, cropped and reconstructed (:class:`PhotoFace`), its
code is changed (a target's pose / expression / light, an emotion, or ``--face`` terms), the
photo is warped to the new code (:func:`~emorig.edit.warp.warp_edit`) and, for
``warp+diffusion``, refined by the model and pasted back
(:func:`~emorig.edit.methods.refine_photo`).

Emotion edits are checked on the pixels (:func:`emotion_check`): an emotion recogniser reads
the face before and after, and an edit that did not move towards the requested emotion is
reported with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emorig.errors import EmorigError
from emorig.types import EMOTION_CLASSES, FaceCode

__all__ = [
    "EmotionCheck",
    "PhotoFace",
    "edit_photo",
    "emotion_check",
    "fit_photos",
    "photo_crops",
    "photo_grid",
    "pose_kept",
    "recognise",
]


@dataclass(frozen=True)
class PhotoFace:
    """One photo's face, ready to edit.

    Attributes:
        name: the photo's file stem.
        path: the photo's path.
        photo: (H, W, 3) uint8 RGB, upright.
        face: its DECA crop (:class:`~emorig.faces.pipeline.AlignedFace`; ``matrix`` maps the
            photo's pixels to the 224 crop's).
        code: (1, ...) the fitted code.
        quality: the fit-quality record, when the reconstructor gives one.
        n_faces: faces detected in the photo (the largest is edited).
    """

    name: str
    path: str
    photo: np.ndarray
    face: object
    code: FaceCode
    quality: dict | None
    n_faces: int


def fit_photos(
    files: Sequence[Path], reconstructor, say: Callable[[str], None] = print
) -> list[PhotoFace]:
    """Detect and reconstruct the largest face of each photo (batched); a photo that cannot
    be used is said in one line and skipped. Raises when none can be used."""
    from emorig.faces.pipeline import DONE, SEVERAL

    found = []
    for path in files:
        result = reconstructor.aligner.align_file(path)
        if result.status not in (DONE, SEVERAL):
            say(f"skipped: {path}: {result.reason or result.status}")
            continue
        if result.status == SEVERAL:
            say(f"note: {path}: {result.n_detected} faces; editing the largest")
        found.append((path, result))
    if not found:
        raise EmorigError("no usable face in the given photos (see the lines above)")
    recs = reconstructor.reconstruct_crops([r.faces[0] for _, r in found])
    out = []
    for (path, result), rec in zip(found, recs, strict=True):
        quality = None if rec.quality is None else rec.quality.to_json()
        photo = result._loaded.pixels  # upright RGB uint8, as aligned
        out.append(
            PhotoFace(
                Path(path).stem, str(path), photo, rec.face, rec.code, quality, result.n_detected
            )
        )
    return out


def photo_crops(photos: Sequence[np.ndarray], faces: Sequence[object], device) -> torch.Tensor:
    """(B, 3, 224, 224) DECA crops of the photos (the emotion recognisers' input)."""
    from emorig.faces.align import warp
    from emorig.geometry.camera import DECA_CROP

    return torch.stack(
        [warp(p, f.matrix, DECA_CROP, "zeros", device) for p, f in zip(photos, faces, strict=True)]
    )


@dataclass(frozen=True)
class EmotionCheck:
    """Did an emotion edit move? (one face)

    Attributes:
        before, after: the recogniser's class probabilities on the source and the edit.
        code_change: L2 distance between the found and the source expression + jaw codes.
        frame_change: mean absolute difference (0-255) between consecutive sweep frames
            (empty without a sweep).
        already: the source already shows the requested emotion (its most likely class).
        problems: why the edit does not count as moving (empty: it does).
    """

    before: dict[str, float]
    after: dict[str, float]
    code_change: float
    frame_change: tuple[float, ...]
    already: bool
    problems: tuple[str, ...]

    def to_json(self) -> dict:
        return {
            "probabilities_before": self.before,
            "probabilities_after": self.after,
            "code_change": round(self.code_change, 6),
            "sweep_frame_change": [round(v, 4) for v in self.frame_change],
            "source_already_shows_it": self.already,
            "moved": not self.problems,
            "problems": list(self.problems),
        }


#: Below this code distance the found expression counts as the source's.
MIN_CODE_CHANGE = 0.05
#: Below this mean change (0-255) two sweep frames count as the same picture.
MIN_FRAME_CHANGE = 0.25
#: The least rise of the requested class's probability that counts (0.1 percentage point:
#: below it the recogniser's reading has not changed, only its rounding noise).
MIN_RISE = 0.001


def emotion_check(
    emotion: str,
    before: torch.Tensor,
    after: torch.Tensor,
    source: FaceCode,
    found: FaceCode,
    frames: Sequence[np.ndarray] = (),
) -> EmotionCheck:
    """Judge one emotion edit.

    Args:
        emotion: the requested class.
        before, after: (8,) the recogniser's probabilities on the source and on the edit.
        source, found: (1, ...) the source's code and the found one.
        frames: the sweep's images (H, W, 3) uint8, in intensity order.
    """
    k = EMOTION_CLASSES.index(emotion)
    names = EMOTION_CLASSES
    b = {n: round(float(v), 6) for n, v in zip(names, before.tolist(), strict=True)}
    a = {n: round(float(v), 6) for n, v in zip(names, after.tolist(), strict=True)}
    change = float(
        torch.cat([found.expression - source.expression, found.jaw_pose - source.jaw_pose], 1)
        .norm()
        .item()
    )
    steps = tuple(
        float(np.abs(frames[i + 1].astype(np.float32) - frames[i].astype(np.float32)).mean())
        for i in range(len(frames) - 1)
    )
    already = int(before.argmax()) == k
    problems = []
    if not already:
        if change < MIN_CODE_CHANGE:
            problems.append(f"the found expression is the source's (change {change:.3f})")
        if steps and min(steps) < MIN_FRAME_CHANGE:
            problems.append(f"sweep frames do not differ (mean change {min(steps):.2f}/255)")
        if float(after[k]) - float(before[k]) < MIN_RISE:
            problems.append(
                f"the recogniser's p({emotion}) did not rise "
                f"({float(before[k]):.4f} -> {float(after[k]):.4f})"
            )
    return EmotionCheck(b, a, change, steps, already, tuple(problems))


def pose_kept(renderer, source: FaceCode, code: FaceCode) -> FaceCode:
    """``code`` re-centred on the source's face when its head rotation differs, so a pose
    edit turns the head in place (:func:`~emorig.edit.transfer.recentre`)."""
    from emorig.edit.transfer import recentre

    if torch.equal(code.global_pose, source.global_pose):
        return code
    return recentre(renderer, source, code)


def edit_photo(
    face: PhotoFace, codes: Sequence[tuple[str, FaceCode]], renderer, refiner=None
) -> list[np.ndarray]:
    """The photo warped to each code (and, with ``refiner``, a
    :class:`~emorig.edit.methods.WarpEditor` holding a model, refined and pasted back), at
    the photo's own resolution."""
    from emorig.edit.methods import refine_photo
    from emorig.edit.warp import warp_edit

    out = []
    for _, code in codes:
        image = warp_edit(face.photo, face.face, renderer, face.code, code).image
        if refiner is not None:
            image = refine_photo(refiner, face.photo, image, face.face, face.code, code)
        out.append(image)
    return out


def photo_grid(
    face: PhotoFace,
    labels: Sequence[str],
    codes: Sequence[FaceCode],
    images: Sequence[np.ndarray],
    renderer,
    target: PhotoFace | None = None,
) -> np.ndarray:
    """A sheet of the face, close up: DECA crops of the source (, the target) and each edit
    on top, the head rendered with each code below (what was asked for)."""
    from emorig.geometry.camera import DECA_CROP
    from emorig.io.images import contact_sheet, to_uint8

    device = face.code.expression.device
    crops = photo_crops([face.photo, *images], [face.face] * (1 + len(images)), device)
    top = [to_uint8(c) for c in crops]
    code_row = [face.code, *codes]
    names = ["source", *labels]
    if target is not None:
        top.insert(1, to_uint8(photo_crops([target.photo], [target.face], device)[0]))
        code_row.insert(1, target.code)
        names.insert(1, "target")
    with torch.no_grad():
        renders = [renderer(c, DECA_CROP).buffers.rendered[0].clamp(0, 1) for c in code_row]
    return contact_sheet(
        [top, [to_uint8(r) for r in renders]], row_labels=["photo", "3D face"], column_labels=names
    )


def recognise(recognizer, crops: torch.Tensor) -> torch.Tensor:
    """(B, 8) the recogniser's class probabilities on (B, 3, 224, 224) face crops
    (:func:`photo_crops`)."""
    device = next(recognizer.parameters()).device
    with torch.no_grad():
        return recognizer(crops.to(device)).probabilities.cpu()

"""Photo -> DECA crop -> FLAME code (DECA, EMOCA or weight-free fitting) -> meshes, buffers
and overlays. What ``emorig reconstruct`` runs.

Faces of consecutive photos are reconstructed in batches (:data:`BATCH_FACES`), and every
reconstruction carries a quality record
(:class:`~emorig.reconstruct.fitting_common.FitQuality`) written to its JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from emorig.errors import EmorigError, short_reason
from emorig.faces.align import transform_points
from emorig.faces.pipeline import AlignedFace, FaceAligner
from emorig.flame.data import HeadAssets
from emorig.geometry.camera import DECA_CROP, ndc_to_pixels, pixels_to_ndc
from emorig.io.atomic import atomic_write, save_npz_atomic
from emorig.io.images import ImageReadError, LoadedImage, read_image, save_png
from emorig.io.obj import write_obj
from emorig.reconstruct.deca import DecaModel
from emorig.reconstruct.detail import DetailRenderer, detail_mesh, sample_uv
from emorig.reconstruct.encoders import encoder_spec
from emorig.reconstruct.fitting_common import FitQuality, fit_quality
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

CROP = DECA_CROP


@dataclass(frozen=True)
class Reconstruction:
    """One reconstructed face.

    Attributes:
        face: the DECA crop (224 px) with its 68 detected landmarks and transform.
        code: (1, ...) the face's code; ``code.detail`` is set for DECA/EMOCA.
        displacement: (1, 1, 256, 256) detail displacement (DECA/EMOCA), else None.
        landmark_error: mean distance of the code's projected landmarks to the detected ones,
            pixels of the 224 crop.
        quality: landmark error, prior scores and verdict (``ok`` / ``doubtful``) of the code,
            the same record for every reconstructor
            (:class:`~emorig.reconstruct.fitting_common.FitQuality`).
    """

    face: AlignedFace
    code: FaceCode
    displacement: Tensor | None
    landmark_error: float
    quality: FitQuality | None = None


class Reconstructor:
    """Reconstruct faces of photos with one method.

    Args:
        method: a reconstructor of :data:`~emorig.reconstruct.encoders.ENCODERS`: ``"deca"``,
            ``"emoca"``, ``"builtin"`` (networks) or ``"fit"`` (no weights: landmarks then
            albedo and light).
        head: the FLAME-format head the codes belong to.
        model: the network for ``deca``/``emoca`` (its code sizes must fit ``head``).
        aligner: face detector + DECA crop; default dlib, DECA mode, 224.
        photometric: for ``fit``, also fit albedo and light to the pixels.
        device: where to run.
    """

    def __init__(
        self,
        method: str,
        head: HeadAssets,
        model: DecaModel | None = None,
        *,
        aligner: FaceAligner | None = None,
        photometric: bool = True,
        device: str | torch.device = "cpu",
    ):
        spec = encoder_spec(method)
        self.method, self.head, self.photometric = method, head, photometric
        self.device = torch.device(device)
        n_albedo = model.config.n_albedo if model is not None else 50
        self.renderer = FaceRenderer(head, n_albedo=n_albedo).to(self.device)
        self.model = None if model is None else model.for_inference().to(self.device)
        self.encoder = spec.build(head, self.renderer, self.model, photometric)
        self.aligner = aligner or FaceAligner(size=CROP, mode="deca", device=self.device)
        if self.aligner.mode != "deca" or self.aligner.size != CROP:
            raise EmorigError("reconstruction works on DECA crops of 224 px")
        self.detail = None
        if model is not None and head.uv_face_eye_mask is not None:
            fixed = head.fixed_displacement
            self.detail = DetailRenderer(
                torch.as_tensor(head.flame.faces),
                torch.as_tensor(head.uv.uv),
                torch.as_tensor(head.uv.uv_faces),
                torch.as_tensor(head.uv_face_eye_mask),
                None if fixed is None else torch.as_tensor(fixed),
            ).to(self.device)

    def reconstruct_crops(self, faces: list[AlignedFace]) -> list[Reconstruction]:
        """Codes for already-aligned DECA crops (batched)."""
        if not faces:
            return []
        images = torch.stack([f.image for f in faces]).to(self.device)
        target = torch.stack([torch.as_tensor(f.landmarks, dtype=torch.float32) for f in faces]).to(
            self.device
        )
        target_ndc = pixels_to_ndc(target, CROP, CROP)
        code, displacement = self.encoder.encode(images, target_ndc)
        if self.detail is None:
            displacement = None
        with torch.no_grad():
            projected = self.renderer.project(self.renderer.geometry(code).landmarks2d, code)
        err = (ndc_to_pixels(projected[..., :2], CROP, CROP) - target).norm(dim=-1).mean(-1)
        quality = fit_quality(code, err)
        return [
            Reconstruction(
                f,
                code[i : i + 1],
                None if displacement is None else displacement[i : i + 1],
                float(err[i]),
                quality[i],
            )
            for i, f in enumerate(faces)
        ]

    def detect(self, image: np.ndarray, all_faces: bool = False) -> list[AlignedFace]:
        """Detect and crop the faces of an (H, W, 3) uint8 photo (the largest, or all)."""
        self.aligner.all_faces = all_faces
        faces, _ = self.aligner.align(image)
        return faces

    def reconstruct(self, image: np.ndarray, all_faces: bool = False) -> list[Reconstruction]:
        """Detect, crop and reconstruct the faces of an (H, W, 3) uint8 photo."""
        return self.reconstruct_crops(self.detect(image, all_faces))


# ---------------------------------------------------------------------------------------------
# Writing results


def code_arrays(code: FaceCode) -> dict[str, np.ndarray]:
    """The code's fields as float32 arrays without the batch axis (None fields left out)."""
    out = {}
    for name in (
        "shape",
        "expression",
        "global_pose",
        "jaw_pose",
        "neck_pose",
        "eye_pose",
        "camera",
        "light",
        "albedo",
        "detail",
    ):
        value = getattr(code, name)
        if value is not None:
            out[name] = value[0].detach().float().cpu().numpy()
    return out


def write_reconstruction(
    rec: Reconstruction,
    loaded: LoadedImage,
    reconstructor: Reconstructor,
    stem: Path,
    method_label: str,
) -> list[Path]:
    """Codes (.npz, .json), meshes (.obj), crop buffers and overlays on the photo."""
    r = reconstructor.renderer
    written: list[Path] = []
    arrays = code_arrays(rec.code)
    meta = {
        "source": loaded.path,
        "method": method_label,
        "head": reconstructor.head.flame.name,
        "synthetic_head": reconstructor.head.synthetic,
        "crop_transform": rec.face.matrix.tolist(),
        "crop_size": CROP,
        "image_size": list(loaded.size),
        "landmarks_crop": np.round(rec.face.landmarks, 3).tolist(),
        "landmark_error_px": round(rec.landmark_error, 3),
        "quality": None if rec.quality is None else rec.quality.to_json(),
        "code": {k: np.round(v, 6).tolist() for k, v in arrays.items()},
        "conventions": "FLAME axes (x left of the subject, y up, z out); axis-angle radians; "
        "camera = DECA orthographic (s, tx, ty) on the 224 crop; light = 9x3 SH",
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    npz = stem.with_name(stem.name + ".npz")
    save_npz_atomic(
        npz, crop_transform=rec.face.matrix, landmarks_crop=rec.face.landmarks, **arrays
    )
    with atomic_write(stem.with_name(stem.name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
    written += [npz, stem.with_name(stem.name + ".json")]
    with torch.no_grad():
        render = r(rec.code, CROP)
        shape, _ = r.render_shape(rec.code, CROP)
        vertices = render.flame.vertices[0].cpu().numpy()
        coarse = stem.with_name(stem.name + "_coarse.obj")
        write_obj(coarse, vertices, reconstructor.head.flame.faces, uv=reconstructor.head.uv)
        written.append(coarse)
        buffers = {
            "rendered": render.buffers.rendered[0],
            "albedo": render.buffers.albedo[0],
            "normal": ((render.buffers.normal + 1) / 2 * render.buffers.mask)[0],
            "shape": shape[0],
        }
        if rec.displacement is not None and reconstructor.detail is not None:
            d = reconstructor.detail
            normals = d.detail_normals(render.flame.vertices, rec.displacement)
            image_normals = sample_uv(normals, render.buffers.uv, render.buffers.mask)
            detail_shape, _ = r.mesh.render_shape(
                render.flame.vertices, render.screen_vertices, CROP, normal_images=image_normals
            )
            buffers["shape_detail"] = detail_shape[0]
            uv_v, uv_n = d.uv_maps(render.flame.vertices)
            region = (d.face_eye_mask > 0.5) & (d.uv_mapper.mask[0, 0] > 0)
            v, faces, uv = detail_mesh(
                uv_v[0], uv_n[0], rec.displacement[0], region, d.fixed_displacement
            )
            path = stem.with_name(stem.name + "_detail.obj")
            from emorig.flame.data import UVLayout

            write_obj(path, v, faces, uv=UVLayout(uv.astype(np.float32), faces))
            written.append(path)
        for name, img in buffers.items():
            written.append(save_png(img, stem.with_name(f"{stem.name}_{name}.png")))
        written += write_overlays(rec, loaded, reconstructor, stem)
    return written


def shape_overlay(renderer, code: FaceCode, face: AlignedFace, pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the photo with the code's grey shape drawn over the face (85 %)."""
    from emorig.io.images import to_uint8

    device = code.expression.device
    crop = face.crop_transform()
    crop = type(crop)(crop.matrix.to(device), crop.crop_size, crop.image_size)
    photo = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float().to(device) / 255
    with torch.no_grad():
        shape, alpha = renderer.render_shape(code, crop=crop, background=photo)
    return to_uint8((shape * alpha * 0.85 + photo * (1 - alpha * 0.85))[0])


def write_overlays(
    rec: Reconstruction, loaded: LoadedImage, reconstructor: Reconstructor, stem: Path
) -> list[Path]:
    """Landmarks (detected green, reconstructed red) and the shape on the original photo."""
    r = reconstructor.renderer
    blend = shape_overlay(r, rec.code, rec.face, loaded.pixels)
    h, w = loaded.size
    projected = r.project(r.geometry(rec.code).landmarks2d, rec.code)[0, :, :2]
    crop_px = ndc_to_pixels(projected, CROP, CROP).cpu().numpy()
    photo_px = transform_points(np.linalg.inv(rec.face.matrix), crop_px)
    pic = Image.fromarray(loaded.pixels.copy())
    draw = ImageDraw.Draw(pic)
    rad = max(1.5, max(h, w) / 300)
    for (x, y), colour in [(p, (0, 230, 120)) for p in rec.face.source_landmarks] + [
        (p, (255, 60, 60)) for p in photo_px
    ]:
        draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=colour)
    return [
        save_png(np.asarray(pic), stem.with_name(stem.name + "_landmarks.png")),
        save_png(blend, stem.with_name(stem.name + "_shape_overlay.png")),
    ]


#: Faces fitted together by :func:`reconstruct_files` (photos are gathered until a batch
#: is full: a batch of 8 costs about twice one face for ``fit``).
BATCH_FACES = 8


@dataclass
class _Photo:
    index: int
    path: Path
    loaded: LoadedImage
    faces: list[AlignedFace]


def _write_photo(photo: _Photo, recs, reconstructor, root, out_dir, method_label):
    """Write one photo's reconstructions; its (path, status, reason) and per-face lines."""
    from emorig.faces.pipeline import output_stem

    stem = output_stem(photo.path, root, out_dir)
    for k, rec in enumerate(recs):
        name = stem if len(recs) == 1 else stem.with_name(f"{stem.name}_{k}")
        write_reconstruction(rec, photo.loaded, reconstructor, name, method_label)
    errors = ", ".join(f"{rec.landmark_error:.1f}" for rec in recs)
    lines = [
        (f"{photo.path}" + (f" face {k}" if len(recs) > 1 else ""), rec.quality)
        for k, rec in enumerate(recs)
        if rec.quality is not None
    ]
    reason = f"{len(recs)} face(s), landmark error {errors} px"
    return (str(photo.path), "done", reason), lines


def _run_batch(batch: list[_Photo], reconstructor, root, out_dir, method_label, results, notes):
    """Reconstruct the faces of several photos at once (each photo alone when that fails)."""
    try:
        recs = reconstructor.reconstruct_crops([f for p in batch for f in p.faces])
        groups, at = [], 0
        for p in batch:
            groups.append(recs[at : at + len(p.faces)])
            at += len(p.faces)
    except (EmorigError, RuntimeError, ValueError):
        groups = [None] * len(batch)
    for p, recs in zip(batch, groups, strict=True):
        try:
            if recs is None:
                recs = reconstructor.reconstruct_crops(p.faces)
            results[p.index], lines = _write_photo(
                p, recs, reconstructor, root, out_dir, method_label
            )
            notes.extend(lines)
        except (EmorigError, OSError, RuntimeError, ValueError) as err:
            results[p.index] = (str(p.path), "failed", short_reason(err))


def reconstruct_files(
    files: list[Path],
    root: Path,
    out_dir: Path,
    reconstructor: Reconstructor,
    method_label: str,
    all_faces: bool = False,
    progress=None,
    notes: list[tuple[str, FitQuality]] | None = None,
    batch_faces: int = BATCH_FACES,
) -> list[tuple[str, str, str]]:
    """Reconstruct every photo; returns (path, status, reason) per file, never stopping on a
    bad one.

    Faces of consecutive photos are reconstructed together, ``batch_faces`` at a time. When
    ``notes`` is given, ``(label, quality)`` is appended to it for every face written: the
    photo's path (and ``face K`` with several) and its
    :class:`~emorig.reconstruct.fitting_common.FitQuality`.
    """
    results: list[tuple[str, str, str] | None] = [None] * len(files)
    notes = [] if notes is None else notes
    batch: list[_Photo] = []
    iterator = progress(files) if progress is not None else files
    for i, path in enumerate(iterator):
        try:
            loaded = read_image(path)
        except ImageReadError as err:
            results[i] = (str(path), "unreadable", err.reason)
            continue
        try:
            faces = reconstructor.detect(loaded.pixels, all_faces)
        except (EmorigError, OSError, RuntimeError, ValueError) as err:
            results[i] = (str(path), "failed", short_reason(err))
            continue
        if not faces:
            results[i] = (str(path), "no face", "no face found")
            continue
        batch.append(_Photo(i, path, loaded, faces))
        if sum(len(p.faces) for p in batch) >= batch_faces:
            _run_batch(batch, reconstructor, root, out_dir, method_label, results, notes)
            batch = []
    if batch:
        _run_batch(batch, reconstructor, root, out_dir, method_label, results, notes)
    return [r for r in results if r is not None]


def load_model(
    method: str, weights: str | os.PathLike[str] | None, assets: str | os.PathLike[str] | None
) -> tuple[DecaModel | None, str | None]:
    """The network of the reconstructor ``method`` (see :mod:`emorig.reconstruct.encoders`)
    and the head it was trained for (None when unknown or weight-free)."""
    return encoder_spec(method).load(weights, assets)


__all__ = [
    "Reconstruction",
    "Reconstructor",
    "load_model",
    "reconstruct_files",
    "shape_overlay",
    "write_reconstruction",
]

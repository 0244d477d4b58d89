"""Photo -> detected, landmarked and aligned faces; files and folders in batch.

The detector is chosen by name (:mod:`emorig.faces.backends`: ``"auto"`` by default, dlib and
MediaPipe together when the extra is installed); each face records which detector found it
(``Detection.detector``) and which model placed its landmarks (``AlignedFace.landmarker``),
both written to its JSON. A face that the crop enlarges more than :data:`SMALL_FACE_UPSCALE`
times is aligned with a note (a :class:`SmallFaceNote` warning; :meth:`FaceAligner.align_file`
keeps it in ``AlignResult.notes``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from emorig.errors import EmorigError, short_reason
from emorig.faces.align import deca_transform, ffhq_transform, transform_points, warp
from emorig.faces.backends import AUTO, Detection, FaceBackend, load_backend
from emorig.geometry.camera import CropTransform
from emorig.io.atomic import atomic_write
from emorig.io.images import ImageReadError, LoadedImage, read_image, save_png, to_uint8

MODES = ("ffhq", "deca")
DONE, SEVERAL, NO_FACE, UNREADABLE = "done", "several faces", "no face", "unreadable"
PREVIEW_MAX_SIDE = 1024
# A crop that enlarges the face more than this shows interpolated blur, and the landmarks and
# everything fitted to the crop are about as coarse: at 2x, FFHQ's 256-pixel crop (eyes 64
# pixels apart) comes from eyes 32 pixels apart, DECA's 224-pixel crop from a face about 90
# pixels across. Such faces are aligned with a note saying so.
SMALL_FACE_UPSCALE = 2.0


class SmallFaceNote(UserWarning):
    """A face so small that its aligned crop is much enlarged (shown as ``emorig: note:``)."""


@dataclass(frozen=True)
class AlignedFace:
    """One aligned face.

    Attributes:
        image: (3, S, S) float32 RGB in [0, 1].
        landmarks: (68, 2) iBUG landmarks in aligned pixels.
        source_landmarks: (68, 2) the same in original pixels.
        matrix: (3, 3) original pixels -> aligned pixels.
        detection: the detector's box and score (original pixels).
        image_size: (height, width) of the original photo (upright).
        mode: ``"ffhq"`` or ``"deca"``.
        dense: (478, 2) MediaPipe landmarks in aligned pixels, when requested.
        landmarker: which model placed the 68 landmarks (``"dlib-68"``,
            ``"mediapipe-mesh-68"``); the detector is ``detection.detector``.
    """

    image: Tensor
    landmarks: np.ndarray
    source_landmarks: np.ndarray
    matrix: np.ndarray
    detection: Detection
    image_size: tuple[int, int]
    mode: str
    dense: np.ndarray | None = None
    landmarker: str = ""

    @property
    def size(self) -> int:
        return self.image.shape[-1]

    @property
    def upscale(self) -> float:
        """How many times the crop enlarges the face (the transform's linear scale)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    @property
    def eye_distance(self) -> float:
        """Distance between the eye centres in the original photo, pixels."""
        lm = self.source_landmarks
        return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))

    def small_face_note(self) -> str | None:
        """One line when the crop enlarges the face more than :data:`SMALL_FACE_UPSCALE`."""
        if self.upscale <= SMALL_FACE_UPSCALE:
            return None
        return (
            f"small face ({self.detection.side:.0f} px box, eyes {self.eye_distance:.0f} px "
            f"apart) enlarged {self.upscale:.1f}x into the {self.size}-px crop: results will "
            "be blurry and coarse"
        )

    def crop_transform(self, dtype: torch.dtype = torch.float32) -> CropTransform:
        """The crop as a :class:`CropTransform`, e.g. to render onto the original photo."""
        return CropTransform(
            torch.as_tensor(self.matrix, dtype=dtype)[None], self.size, self.image_size
        )

    def to_json(self, source: str, exif_rotated: bool) -> dict:
        out = {
            "source": source,
            "image_size": list(self.image_size),
            "exif_rotated": exif_rotated,
            "mode": self.mode,
            "size": self.size,
            "box": [round(v, 3) for v in self.detection.box],
            "score": round(self.detection.score, 4),
            "detector": self.detection.detector,
            "landmarker": self.landmarker,
            "upscale": round(self.upscale, 3),
            "landmarks": np.round(self.landmarks, 3).tolist(),
            "source_landmarks": np.round(self.source_landmarks, 3).tolist(),
            "transform": self.matrix.tolist(),
            "pixel_convention": "continuous: pixel i spans [i, i + 1); transform maps original "
            "(upright) pixels to aligned pixels",
        }
        if self.dense is not None:
            out["dense_landmarks"] = np.round(self.dense, 3).tolist()
        return out


@dataclass
class AlignResult:
    """What happened to one input file."""

    path: str
    status: str
    faces: list[AlignedFace] = field(default_factory=list)
    n_detected: int = 0
    reason: str = ""
    exif_rotated: bool = False
    outputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class FaceAligner:
    """Detect faces, find 68 landmarks and align each face.

    Args:
        backend: face detector / backend name (``"auto"``, default: dlib and MediaPipe when
            the extra is installed, else dlib; ``"dlib"``, ``"mediapipe"``, ``"both"``) or a
            loaded :class:`FaceBackend`; it must provide a detector and 68-point landmarks.
        size: side of the aligned images (FFHQ: 256 or 512 for DiffusionRig; DECA: 224).
        mode: ``"ffhq"`` (DiffusionRig's alignment) or ``"deca"`` (DECA's crop).
        all_faces: keep every face; by default only the largest.
        dense: also run this backend's dense landmarks (``"mediapipe"``) on each face.
        device: where warping runs.
    """

    def __init__(
        self,
        backend: str | FaceBackend = AUTO,
        size: int = 256,
        mode: str = "ffhq",
        all_faces: bool = False,
        dense: str | FaceBackend | None = None,
        device: torch.device | str = "cpu",
    ):
        if mode not in MODES:
            raise EmorigError(f"alignment mode '{mode}'; choose {' or '.join(MODES)}")
        if size < 16:
            raise EmorigError(f"--size {size}: aligned images need at least 16 pixels")
        self.backend = load_backend(backend) if isinstance(backend, str) else backend
        if self.backend.detector is None or self.backend.landmarks68 is None:
            raise EmorigError(
                f"face backend '{self.backend.name}' has no 68-point landmarks; "
                "alignment needs them (use --detector dlib)"
            )
        dense_backend = load_backend(dense) if isinstance(dense, str) else dense
        if dense_backend is not None and dense_backend.dense is None:
            raise EmorigError(f"backend '{dense_backend.name}' has no dense landmarks")
        self.dense = None if dense_backend is None else dense_backend.dense
        self.size, self.mode, self.all_faces, self.device = size, mode, all_faces, device

    def matrix(self, landmarks: np.ndarray) -> np.ndarray:
        if self.mode == "ffhq":
            return ffhq_transform(landmarks, self.size)
        return deca_transform(landmarks, self.size)

    def align(self, image: np.ndarray) -> tuple[list[AlignedFace], int]:
        """Faces of an (H, W, 3) uint8 RGB image, largest first, and how many were detected.
        A face enlarged more than :data:`SMALL_FACE_UPSCALE` times warns
        (:class:`SmallFaceNote`)."""
        detections = self.backend.detector.detect(image)
        ordered = sorted(detections, key=lambda d: -d.area)
        chosen = ordered if self.all_faces else ordered[:1]
        faces = []
        for det in chosen:
            face = self._align_one(image, det)
            note = face.small_face_note()
            if note is not None:
                warnings.warn(note, SmallFaceNote, stacklevel=2)
            faces.append(face)
        return faces, len(detections)

    def _align_one(self, image: np.ndarray, det: Detection) -> AlignedFace:
        marker = self.backend.landmarks68
        if hasattr(marker, "landmarks_and_source"):
            lm, source = marker.landmarks_and_source(image, det)
        else:
            lm, source = marker.landmarks(image, det), marker.name
        m = self.matrix(lm)
        padding = "ffhq" if self.mode == "ffhq" else "zeros"
        aligned = warp(image, m, self.size, padding, self.device)
        dense = None
        if self.dense is not None:
            dense = transform_points(m, self.dense.landmarks(image, det))
        return AlignedFace(
            aligned, transform_points(m, lm), lm, m, det, image.shape[:2], self.mode, dense, source
        )

    def align_file(self, path: str | os.PathLike[str]) -> AlignResult:
        """Read and align one file; problems become a status and a one-line reason."""
        try:
            loaded = read_image(path)
        except ImageReadError as err:
            return AlignResult(str(path), UNREADABLE, reason=err.reason)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SmallFaceNote)
            faces, n = self.align(loaded.pixels)
        notes = [str(w.message) for w in caught if issubclass(w.category, SmallFaceNote)]
        for w in caught:  # anything else goes on as it came
            if not issubclass(w.category, SmallFaceNote):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if not faces:
            return AlignResult(
                str(path), NO_FACE, reason="no face found", exif_rotated=loaded.exif_rotated
            )
        status = SEVERAL if n > 1 else DONE
        reason = ""
        if n > 1:
            x0, y0, x1, _ = faces[0].detection.box
            reason = f"{n} faces: " + (
                "kept each, largest first"
                if self.all_faces
                else f"kept the largest ({x1 - x0:.0f} px at x={x0:.0f}, y={y0:.0f}; "
                "--all-faces keeps each)"
            )
        result = AlignResult(str(path), status, faces, n, reason, loaded.exif_rotated, notes=notes)
        result._loaded = loaded  # type: ignore[attr-defined]  # for previews, not persisted
        return result


#: File-name endings of the images the readers take; a folder named like this is skipped.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".heic", ".avif"}
)


@dataclass(frozen=True)
class ImageScan:
    """What :func:`scan_images` found: the files to read (sorted) and the entries it skipped,
    each ``(path, reason)`` (symlink loops, dangling links, folders named like images,
    devices and pipes)."""

    files: list[Path]
    skipped: list[tuple[Path, str]]


def scan_images(root: Path, exclude: Path | None = None) -> ImageScan:
    """Every non-hidden file under ``root`` (or ``root`` itself), sorted; non-images are kept
    so that they are reported rather than silently skipped. Entries that cannot be read as a
    file (a symlink loop, a dangling symlink, a folder named like an image, a pipe or device)
    are skipped with their reason, and the walk goes on. ``exclude``: a folder not to enter or
    a file not to list (the output). ``root`` missing is an :class:`EmorigError`."""
    root = Path(root)
    problem = _entry_problem(root)
    if problem is not None and not root.is_dir():
        if problem == "not found":
            raise EmorigError(f"{root}: not found")
        raise EmorigError(f"{root}: {problem}")
    if not root.is_dir():
        return ImageScan([root], [])
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if exclude is not None and _inside(here, exclude):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in list(dirnames):
            if Path(d).suffix.lower() in IMAGE_SUFFIXES:
                dirnames.remove(d)
                skipped.append((here / d, "a folder named like an image (not searched)"))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = here / name
            if exclude is not None and _same(path, exclude):
                continue
            problem = _entry_problem(path)
            if problem is None:
                files.append(path)
            else:
                skipped.append((path, problem))
    return ImageScan(files, skipped)


def image_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """The files :func:`scan_images` finds under ``root`` (the skipped entries left out)."""
    return scan_images(root, exclude).files


def _entry_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (None when it can, or is a folder)."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return f"a dangling symlink to {os.readlink(path)}"
        if isinstance(err, FileNotFoundError):
            return "not found"
        return f"cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return None
    return "not a regular file (a pipe, socket or device)"


def _inside(path: Path, parent: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(parent)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _same(path: Path, other: Path) -> bool:
    return os.path.realpath(path) == os.path.realpath(other)


def output_stem(path: Path, root: Path, out_dir: Path) -> Path:
    """``out_dir/<path relative to root without suffix>`` (mirrors sub-folders)."""
    rel = path.name if root.is_file() else path.relative_to(root)
    return out_dir / Path(rel).with_suffix("")


def write_result(result: AlignResult, stem: Path, preview: bool) -> list[Path]:
    """Write aligned PNGs, their JSON and optionally a preview; every file atomically."""
    written = []
    several = len(result.faces) > 1
    for k, face in enumerate(result.faces):
        name = stem.name + (f"_{k}" if several else "")
        png = save_png(face.image, stem.with_name(name + ".png"))
        meta = stem.with_name(name + ".json")
        with atomic_write(meta, "w") as f:
            json.dump(face.to_json(result.path, result.exif_rotated), f, indent=1)
        written += [png, meta]
    if preview and result.faces:
        loaded: LoadedImage = result._loaded  # type: ignore[attr-defined]
        written.append(
            save_png(
                draw_preview(loaded.pixels, result.faces),
                stem.with_name(stem.name + ".preview.png"),
            )
        )
    return written


def draw_preview(image: np.ndarray, faces: Sequence[AlignedFace]) -> np.ndarray:
    """The photo (at most 1024 px) with each face's landmarks and aligned square drawn."""
    h, w = image.shape[:2]
    scale = min(1.0, PREVIEW_MAX_SIDE / max(h, w))
    pic = Image.fromarray(image)
    if scale < 1.0:
        pic = pic.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(pic)
    r = max(1.5, 2.5 * scale * max(h, w) / 512)
    for face in faces:
        s = face.size
        corners = (
            transform_points(
                np.linalg.inv(face.matrix),
                np.array([[0, 0], [s, 0], [s, s], [0, s], [0, 0]], dtype=float),
            )
            * scale
        )
        draw.line([tuple(p) for p in corners], fill=(255, 220, 0), width=max(1, round(r / 1.5)))
        for k, (x, y) in enumerate(face.source_landmarks * scale):
            colour = (255, 160, 0) if k < 17 else (0, 230, 120)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return np.asarray(pic)


def align_files(
    files: Iterable[Path],
    root: Path,
    out_dir: Path,
    aligner: FaceAligner,
    preview: bool = False,
    progress: Callable[[Iterable[Path]], Iterable[Path]] | None = None,
) -> list[AlignResult]:
    """Align every file; one bad file never stops the run. Returns one result per file."""
    results = []
    iterator = progress(files) if progress is not None else files
    for path in iterator:
        try:
            result = aligner.align_file(path)
            if result.faces:
                result.outputs = write_result(result, output_stem(path, root, out_dir), preview)
                result.faces = [_drop_pixels(f) for f in result.faces]  # keep memory flat
                del result._loaded  # type: ignore[attr-defined]
        except (EmorigError, OSError, RuntimeError, ValueError) as err:
            result = AlignResult(str(path), UNREADABLE, reason=short_reason(err))
        results.append(result)
    return results


def _drop_pixels(face: AlignedFace) -> AlignedFace:
    from dataclasses import replace

    return replace(face, image=face.image.new_zeros((3, 0, 0)))


def summarise(results: Sequence[AlignResult]) -> str:
    """``done 8, several faces 1, no face 1, unreadable 2``, the number of faces and which
    detector found them (``found by dlib 7, mediapipe 2``)."""
    counts = Counter(r.status for r in results)
    n_faces = sum(len(r.outputs) // 2 if r.outputs else len(r.faces) for r in results)
    parts = [f"{counts.get(k, 0)} {k}" for k in (DONE, SEVERAL, NO_FACE, UNREADABLE)]
    text = f"{len(results)} files, {n_faces} aligned faces: " + ", ".join(parts)
    by = Counter(f.detection.detector or "?" for r in results for f in r.faces)
    if by:
        text += "; found by " + ", ".join(f"{k} {n}" for k, n in sorted(by.items()))
    return text


__all__ = [
    "IMAGE_SUFFIXES",
    "MODES",
    "SMALL_FACE_UPSCALE",
    "AlignResult",
    "AlignedFace",
    "FaceAligner",
    "ImageScan",
    "SmallFaceNote",
    "align_files",
    "draw_preview",
    "image_files",
    "scan_images",
    "summarise",
    "to_uint8",
]

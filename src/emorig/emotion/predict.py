"""Photos -> per-face emotion predictions (CSV/JSON), and their evaluation against labels.

Prediction files have one row per face (or per file that gave no face, with the reason):

``path, face, neutral, happy, sad, surprise, fear, disgust, anger, contempt, expression,
valence, arousal, status, reason``

The eight columns are class probabilities (:data:`EMOTION_CLASSES` order; they sum to 1),
``expression`` is the most likely class, valence/arousal are empty for recognisers that do not
predict them, and ``status`` is ``done``, ``no face``, ``unreadable`` or ``failed``.

Label files are AffectNet-style CSVs with a ``path`` column (AffectNet's
``subDirectory_filePath`` is accepted too), ``expression`` (class index 0-7 or name) and
optionally ``valence``/``arousal``; they are joined to predictions on the path (exactly, or by
the trailing path components when prediction paths carry a longer prefix).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np
import torch

from emorig.emotion.metrics import emotion_metrics
from emorig.errors import EmorigError, short_reason
from emorig.io.atomic import atomic_write
from emorig.types import EMOTION_CLASSES

__all__ = [
    "COLUMNS",
    "DONE",
    "FAILED",
    "NO_FACE",
    "UNREADABLE",
    "Evaluation",
    "LabelRow",
    "PredictionRow",
    "evaluate_predictions",
    "parse_expression",
    "predict_files",
    "read_labels",
    "read_predictions",
    "summarise_predictions",
    "write_predictions",
]

DONE, NO_FACE, UNREADABLE, FAILED = "done", "no face", "unreadable", "failed"
COLUMNS = (
    "path",
    "face",
    *EMOTION_CLASSES,
    "expression",
    "valence",
    "arousal",
    "status",
    "reason",
)
#: Other names of the classes in label files (AffectNet's nouns, common adjectives).
_ALIASES = {
    "happiness": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
    "angry": "anger",
    "contemptuous": "contempt",
}
_PATH_COLUMNS = ("path", "subdirectory_filepath", "file", "image")


@dataclass(frozen=True)
class PredictionRow:
    """One face's prediction, or one file that gave none.

    Attributes:
        path: the photo as given.
        face: index of the face in the photo (0 = largest), None when no face was predicted.
        status: ``done``, ``no face``, ``unreadable`` or ``failed``.
        reason: one line on what happened (empty when nothing is worth saying).
        probabilities: the 8 class probabilities, or None.
        valence, arousal: predicted affect, or None.
    """

    path: str
    face: int | None
    status: str
    reason: str = ""
    probabilities: tuple[float, ...] | None = None
    valence: float | None = None
    arousal: float | None = None

    @property
    def expression(self) -> str | None:
        """The most likely class name."""
        if self.probabilities is None:
            return None
        return EMOTION_CLASSES[int(np.argmax(self.probabilities))]


def _device_of(module: torch.nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def predict_files(
    files: Iterable[Path],
    recognizer: torch.nn.Module,
    aligner,
    progress: Callable[[Iterable[Path]], Iterable[Path]] | None = None,
) -> list[PredictionRow]:
    """Detect, crop and classify the faces of every file; a bad file never stops the run.

    Args:
        files: photos.
        recognizer: an :class:`~emorig.emotion.base.EmotionRecognizer` (images (B, 3, H, W)
            in [0, 1] -> :class:`~emorig.types.EmotionOutput`); run in eval mode, no grad.
        aligner: a :class:`~emorig.faces.pipeline.FaceAligner` (for EMOCA's recognisers:
            ``FaceAligner(size=224, mode="deca")``); its ``all_faces`` decides how many faces
            per photo.
        progress: wraps the file iterable (a progress bar).

    Returns:
        One row per face, and one row per file without a prediction (with its reason).
    """
    from emorig.faces.pipeline import UNREADABLE as ALIGN_UNREADABLE

    recognizer.eval()
    device = _device_of(recognizer)
    rows: list[PredictionRow] = []
    iterator = progress(files) if progress is not None else files
    for path in iterator:
        name = str(path)
        try:
            result = aligner.align_file(path)
            if result.status == ALIGN_UNREADABLE:
                rows.append(PredictionRow(name, None, UNREADABLE, result.reason))
                continue
            if not result.faces:
                rows.append(PredictionRow(name, None, NO_FACE, result.reason or "no face found"))
                continue
            images = torch.stack([face.image for face in result.faces]).to(device)
            with torch.no_grad():
                out = recognizer(images)
            probs = out.probabilities.double().cpu().numpy()
            va = None if out.valence_arousal is None else out.valence_arousal.double().cpu()
        except (EmorigError, OSError, RuntimeError, ValueError) as err:
            rows.append(PredictionRow(name, None, FAILED, short_reason(err)))
            continue
        for k in range(len(result.faces)):
            rows.append(
                PredictionRow(
                    name,
                    k,
                    DONE,
                    result.reason if k == 0 else "",
                    tuple(float(p) for p in probs[k]),
                    None if va is None else float(va[k, 0]),
                    None if va is None else float(va[k, 1]),
                )
            )
    return rows


def summarise_predictions(rows: Sequence[PredictionRow]) -> str:
    """``5 files, 4 faces: 3 done, 1 no face, 1 unreadable, 0 failed; happy 2, neutral 2``."""
    files: dict[str, str] = {}
    for row in rows:
        if files.get(row.path) != DONE:  # a file counts as done if any face was predicted
            files[row.path] = row.status
    counts = Counter(files.values())
    faces = [r for r in rows if r.status == DONE]
    parts = [f"{counts.get(k, 0)} {k}" for k in (DONE, NO_FACE, UNREADABLE, FAILED)]
    text = f"{len(files)} files, {len(faces)} faces: " + ", ".join(parts)
    classes = Counter(r.expression for r in faces)
    if classes:
        text += "; " + ", ".join(f"{c} {n}" for c, n in classes.most_common())
    return text


# ---------------------------------------------------------------------------------------------
# Writing and reading prediction files.


def _fmt(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _row_to_record(row: PredictionRow) -> dict:
    probs = row.probabilities
    record: dict = {"path": row.path, "face": row.face}
    for k, name in enumerate(EMOTION_CLASSES):
        record[name] = None if probs is None else probs[k]
    record.update(
        expression=row.expression,
        valence=row.valence,
        arousal=row.arousal,
        status=row.status,
        reason=row.reason,
    )
    return record


def write_predictions(rows: Sequence[PredictionRow], path: str | os.PathLike[str]) -> Path:
    """Write rows as CSV (``.csv``, :data:`COLUMNS`) or JSON (``.json``), atomically.

    The JSON file is ``{"classes": [...], "columns": [...], "rows": [{column: value}, ...]}``
    with ``null`` for empty cells. Probabilities and affect have 6 decimals in CSV.

    Raises:
        EmorigError: another suffix, or the folder does not exist.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise EmorigError(f"{path}: predictions are written as .csv or .json")
    if not path.parent.is_dir():
        raise EmorigError(f"{path.parent}: folder not found")
    if suffix == ".json":
        payload = {
            "classes": list(EMOTION_CLASSES),
            "columns": list(COLUMNS),
            "rows": [_row_to_record(r) for r in rows],
        }
        with atomic_write(path, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)
            f.write("\n")
        return path
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            probs = row.probabilities or (None,) * len(EMOTION_CLASSES)
            writer.writerow(
                [
                    row.path,
                    "" if row.face is None else row.face,
                    *(_fmt(p) for p in probs),
                    row.expression or "",
                    _fmt(row.valence),
                    _fmt(row.arousal),
                    row.status,
                    row.reason,
                ]
            )
    return path


def _float_or_none(value) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    out = float(value)
    return None if math.isnan(out) else out


def _records(path: Path) -> list[dict]:
    """A CSV's rows (header keys lower-cased and stripped) or a prediction JSON's rows."""
    try:
        if path.suffix.lower() == ".json":
            payload = json.loads(path.read_text(encoding="utf-8"))
            records = payload.get("rows") if isinstance(payload, dict) else payload
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise EmorigError(f"{path}: expected a JSON list of rows (or {{'rows': [...]}})")
            return [{str(k).strip().lower(): v for k, v in r.items()} for r in records]
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise EmorigError(f"{path}: empty file")
            return [
                {(k or "").strip().lower(): v for k, v in r.items() if k is not None}
                for r in reader
            ]
    except FileNotFoundError:
        raise EmorigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise EmorigError(f"{path}: cannot be read ({short_reason(err)})") from None


def read_predictions(path: str | os.PathLike[str]) -> list[PredictionRow]:
    """Read a file written by :func:`write_predictions` (CSV or JSON).

    Raises:
        EmorigError: missing file, missing columns or unparsable values (with the line).
    """
    path = Path(path)
    records = _records(path)
    needed = {"path", *EMOTION_CLASSES}
    if records and not needed <= set(records[0]):
        missing = ", ".join(sorted(needed - set(records[0])))
        raise EmorigError(f"{path}: not an emorig prediction file (no column {missing})")
    rows = []
    for n, r in enumerate(records, start=2):
        try:
            probs = [_float_or_none(r.get(c)) for c in EMOTION_CLASSES]
            face = _float_or_none(r.get("face"))
            rows.append(
                PredictionRow(
                    path=str(r["path"]),
                    face=None if face is None else int(face),
                    status=str(r.get("status") or DONE),
                    reason=str(r.get("reason") or ""),
                    probabilities=None if None in probs else tuple(probs),  # type: ignore[arg-type]
                    valence=_float_or_none(r.get("valence")),
                    arousal=_float_or_none(r.get("arousal")),
                )
            )
        except (TypeError, ValueError) as err:
            raise EmorigError(f"{path}: row {n}: {short_reason(err)}") from None
    return rows


# ---------------------------------------------------------------------------------------------
# Labels and evaluation.


@dataclass(frozen=True)
class LabelRow:
    """One labelled image.

    Attributes:
        path: as written in the label file.
        expression: class index in :data:`EMOTION_CLASSES`, or None (no label or outside the 8
            classes, e.g. AffectNet's 8 none / 9 uncertain / 10 no-face).
        valence, arousal: in [-1, 1], or None (empty, or AffectNet's -2 "undefined").
    """

    path: str
    expression: int | None
    valence: float | None
    arousal: float | None


def parse_expression(value) -> int | None:
    """A class index from an integer (``"3"``) or a name (``"Surprise"``, ``"happiness"``).

    Returns:
        0-7, or None for an empty cell or an index outside the 8 classes (AffectNet 8-10).

    Raises:
        ValueError: an unknown name or a negative / non-integer number.
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        name = _ALIASES.get(text.lower(), text.lower())
        if name not in EMOTION_CLASSES:
            raise ValueError(
                f"unknown expression {text!r}; use 0-7 or one of {', '.join(EMOTION_CLASSES)}"
            ) from None
        return EMOTION_CLASSES.index(name)
    if number != int(number) or number < 0:
        raise ValueError(f"expression {text!r} is not a class index")
    return int(number) if number < len(EMOTION_CLASSES) else None


def _affect(value) -> float | None:
    v = _float_or_none(value)
    return v if v is not None and -1.0 <= v <= 1.0 else None


def read_labels(path: str | os.PathLike[str]) -> list[LabelRow]:
    """Read an AffectNet-style label CSV (see the module notes).

    Raises:
        EmorigError: missing file, no path column, neither expression nor valence/arousal
            columns, or an unparsable value (with the line).
    """
    path = Path(path)
    records = _records(path)
    if not records:
        raise EmorigError(f"{path}: no labels")
    columns = set(records[0])
    path_col = next((c for c in _PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise EmorigError(f"{path}: no 'path' column (columns: {', '.join(sorted(columns))})")
    has_va = {"valence", "arousal"} <= columns
    if "expression" not in columns and not has_va:
        raise EmorigError(f"{path}: needs an 'expression' column or 'valence' and 'arousal'")
    labels = []
    for n, r in enumerate(records, start=2):
        try:
            labels.append(
                LabelRow(
                    path=str(r[path_col]).strip(),
                    expression=parse_expression(r.get("expression")),
                    valence=_affect(r.get("valence")) if has_va else None,
                    arousal=_affect(r.get("arousal")) if has_va else None,
                )
            )
        except (TypeError, ValueError) as err:
            raise EmorigError(f"{path}: row {n}: {short_reason(err)}") from None
    return labels


def _key(path: str) -> tuple[str, ...]:
    parts = PurePath(path.replace("\\", "/")).parts
    return tuple(p for p in parts if p not in ("/", "."))


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one prediction file against the labels.

    Attributes:
        metrics: :func:`~emorig.emotion.metrics.emotion_metrics` keys.
        n_labels: labelled images.
        n_expression: faces in E-ACC.
        n_affect: faces in the V/A metrics.
        unmatched: label paths with no successful prediction (or an ambiguous match).
    """

    metrics: dict[str, float]
    n_labels: int
    n_expression: int
    n_affect: int
    unmatched: list[str] = field(default_factory=list)


def evaluate_predictions(
    predictions: Sequence[PredictionRow], labels: Sequence[LabelRow]
) -> Evaluation:
    """Join predictions to labels on the path and compute EMOCA's metrics over the whole set.

    A label path matches a prediction path that is equal to it or ends with the same path
    components (``in/train/0/a.jpg`` matches label ``0/a.jpg``); when a photo has several
    faces, face 0 (the largest) is used. E-ACC uses labels with a class in the 8 classes;
    V/A metrics use labels with both values in [-1, 1] and are left out entirely when the
    predictions have no valence/arousal.
    """
    done = {}
    for row in predictions:
        if row.status == DONE and row.probabilities is not None:
            key = _key(row.path)
            if key not in done or (row.face or 0) < (done[key].face or 0):
                done[key] = row
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for key in done:
        if key:
            by_name.setdefault(key[-1], []).append(key)

    def find(label_path: str) -> PredictionRow | None:
        key = _key(label_path)
        if key in done:
            return done[key]
        if not key:
            return None
        hits = [k for k in by_name.get(key[-1], []) if k[-len(key) :] == key]
        return done[hits[0]] if len(hits) == 1 else None

    pred_class, true_class, pred_va, true_va, unmatched = [], [], [], [], []
    has_va = any(r.valence is not None and r.arousal is not None for r in done.values())
    for label in labels:
        row = find(label.path)
        if row is None:
            unmatched.append(label.path)
            continue
        if label.expression is not None:
            pred_class.append(EMOTION_CLASSES.index(row.expression))  # type: ignore[arg-type]
            true_class.append(label.expression)
        if (
            has_va
            and label.valence is not None
            and label.arousal is not None
            and row.valence is not None
            and row.arousal is not None
        ):
            pred_va.append((row.valence, row.arousal))
            true_va.append((label.valence, label.arousal))
    metrics = emotion_metrics(
        np.array(pred_va) if pred_va else None,
        np.array(true_va) if true_va else None,
        np.array(pred_class) if pred_class else None,
        np.array(true_class) if true_class else None,
    )
    return Evaluation(metrics, len(labels), len(true_class), len(true_va), unmatched)

"""What the edit evaluation protocol measured (:func:`~emorig.evaluate.protocol.evaluate_model`):
one record per part, JSON-able, with its report sections."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emorig.evaluate.metrics import CodeErrors
from emorig.evaluate.report import Section, to_jsonable

__all__ = [
    "REFERENCES",
    "ConsistencyRow",
    "EmotionResult",
    "ErrorRow",
    "Evaluation",
    "Example",
    "IdentitySummary",
    "MultiviewResult",
]

#: Reference rows after the edit rows: the unedited sample and the data image itself.
REFERENCES = ("unedited", "source")


@dataclass(frozen=True)
class IdentitySummary:
    """Identity kept by the edits of one row.

    Attributes:
        method: ``"shape"`` (shape codes: cosine and L2 in coefficient units) or ``"dlib"``
            (face descriptors of source photo and edit: cosine and Euclidean distance, below
            0.6 = same person).
        cosine: mean cosine similarity in [-1, 1] (NaN when not measured).
        distance: mean L2 distance (shape) or descriptor distance (dlib).
        same_rate: dlib: share of pairs under the same-person threshold; else None.
        n: pairs measured (dlib: both faces found).
    """

    method: str
    cosine: float
    distance: float
    same_rate: float | None
    n: int


@dataclass(frozen=True)
class ErrorRow:
    """Requested vs re-reconstructed codes for one edit mode or reference.

    Attributes:
        name: the mode (``"exp"``, ``"pose"``, ``"light"``, ``"latent"``) or reference
            (``"unedited"``: the source sampled under its own buffers; ``"source"``: the data
            image itself).
        kind: ``"edit"`` or ``"reference"``.
        errors: every error, means over the pairs.
        primary: the :class:`CodeErrors` field this mode is judged by (None: references and
            ``latent``).
        per_item: (N,) the primary metric per pair (references and latent: expression L2).
        identity: identity preservation.
    """

    name: str
    kind: str
    errors: CodeErrors
    primary: str | None
    per_item: tuple[float, ...]
    identity: IdentitySummary

    @property
    def primary_value(self) -> float:
        """The mean of the primary metric (NaN without one)."""
        return math.nan if self.primary is None else float(getattr(self.errors, self.primary))


@dataclass(frozen=True)
class EmotionResult:
    """Emotion accuracy of emotion edits.

    Attributes:
        targets: the requested emotions, e.g. ``("happy 1", ...)``.
        accuracy: share of edits whose re-reconstructed code the predictor classifies as the
            requested class, in [0, 1].
        requested_accuracy: the same for the requested (searched) codes themselves: the
            ceiling the edits can reach.
        per_class: class -> recall of the edits (requested classes only).
        requested_per_class: class -> recall of the requested codes.
        confusion: (8, 8) counts, rows requested, columns predicted from the edits.
        n: edits classified.
    """

    targets: tuple[str, ...]
    accuracy: float
    requested_accuracy: float
    per_class: dict[str, float]
    requested_per_class: dict[str, float]
    confusion: tuple[tuple[int, ...], ...]
    n: int


@dataclass(frozen=True)
class ConsistencyRow:
    """Spread of expression codes (expression + jaw) over the views of each group.

    Attributes:
        name: ``"edited"`` (the same target expression on every view), ``"unedited"``
            (samples under each view's own buffers) or ``"source"`` (the data images).
        mean: mean distance of a view's code to its group mean (0 = consistent).
        max: the largest such distance.
        per_group: (G,) mean distance per group.
    """

    name: str
    mean: float
    max: float
    per_group: tuple[float, ...]


@dataclass(frozen=True)
class MultiviewResult:
    """Multi-view consistency of expression edits.

    Attributes:
        rows: edited, unedited, source.
        n_groups, n_views: G groups of K views.
        expression_l2: mean expression error of the edits vs the requested codes.
        groups: the group ids evaluated.
    """

    rows: tuple[ConsistencyRow, ...]
    n_groups: int
    n_views: int
    expression_l2: float
    groups: tuple[int, ...]

    def row(self, name: str) -> ConsistencyRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


@dataclass(frozen=True)
class Example:
    """One row of example images for the report.

    Attributes:
        part: ``"edits"``, ``"emotion"`` or ``"multiview"``.
        label: the row label (e.g. ``"src -> tgt"``).
        columns: a label per image.
        images: (H, W, 3) uint8 images.
    """

    part: str
    label: str
    columns: tuple[str, ...]
    images: tuple[np.ndarray, ...] = field(repr=False)


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_model` measured.

    Attributes:
        settings: the protocol settings and data description (JSON-able).
        synthetic: the data are renders of the built-in synthetic head.
        pairs: (source, target) names.
        errors: edit rows in mode order, then the references ``unedited`` and ``source``.
        emotion: emotion accuracy, or None when not asked for.
        multiview: multi-view consistency, or None.
        fid: FID between data images and edits, or None.
        examples: example image rows.
        seconds: wall time.
    """

    settings: dict[str, Any]
    synthetic: bool
    pairs: tuple[tuple[str, str], ...]
    errors: tuple[ErrorRow, ...]
    emotion: EmotionResult | None = None
    multiview: MultiviewResult | None = None
    fid: float | None = None
    examples: tuple[Example, ...] = ()
    seconds: float = 0.0

    def row(self, name: str) -> ErrorRow:
        """The error row of a mode or reference."""
        for r in self.errors:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """Every number (NaN as None), without the example pixels."""
        return to_jsonable(
            {
                "settings": self.settings,
                "synthetic": self.synthetic,
                "pairs": [list(p) for p in self.pairs],
                "errors": [
                    {
                        "name": r.name,
                        "kind": r.kind,
                        "primary": r.primary,
                        "primary_value": r.primary_value,
                        **{f.name: getattr(r.errors, f.name) for f in dataclasses.fields(r.errors)},
                        "identity": dataclasses.asdict(r.identity),
                        "per_item": list(r.per_item),
                    }
                    for r in self.errors
                ],
                "emotion": None if self.emotion is None else dataclasses.asdict(self.emotion),
                "multiview": None if self.multiview is None else dataclasses.asdict(self.multiview),
                "fid": self.fid,
                "examples": [
                    {"part": e.part, "label": e.label, "columns": list(e.columns)}
                    for e in self.examples
                ],
                "seconds": self.seconds,
            }
        )

    def sections(self) -> list[Section]:
        """Report sections (:mod:`emorig.evaluate.report`); parts not run are left out."""
        from emorig.evaluate.sections import evaluation_sections

        return evaluation_sections(self)

"""Whole-set emotion metrics as EmoNet and EMOCA report them, and EMOCA's table layout.

The definitions follow EmoNet's ``metrics.py`` (Toisoul et al. 2021), which EMOCA copies into
``gdl/utils/emotion_metrics.py`` and uses for its AffectNet table (Danecek et al. 2022, Tab. 2):

* ``ACC  = mean(y == ŷ)`` over integer class indices;
* ``RMSE = sqrt(mean((y − ŷ)²))``;
* ``SAGR = mean(sign(y) == sign(ŷ))`` (sign agreement);
* ``PCC  = cov(y, ŷ) / (σ_y σ_ŷ)`` (Pearson; ``np.corrcoef``);
* ``CCC  = 2 ρ σ_y σ_ŷ / (σ_y² + σ_ŷ² + (μ_y − μ_ŷ)²)`` (Lin's concordance; numpy ``std``,
  ``ddof=0``), which equals ``2 cov(y, ŷ) / (σ_y² + σ_ŷ² + (μ_y − μ_ŷ)²)`` with the population
  covariance.

Metrics are computed once over the whole set (EmoNet's convention), not averaged over batches.
Every function is symmetric in its two arguments.

Degenerate cases (where EmoNet's code divides by zero) are defined here:

* **PCC is NaN when either side is constant** (zero variance, which includes a single sample).
  The correlation is undefined there; ``np.corrcoef`` returns NaN too (with a warning), or
  rounding noise when the constant's mean is not exact (e.g. 0.1), so we match EmoNet/EMOCA
  where they are defined and test for constants exactly (``ptp == 0``), without warnings.
* **CCC is 0 when exactly one side is constant, or when both are constant but differ**: we use
  the covariance form above, whose numerator is then 0 and whose denominator is positive (a
  constant prediction has no concordance with varying labels). EmoNet's code computes CCC
  through ``ρ`` and so returns NaN there; everywhere ``ρ`` is defined the two agree.
* **CCC is NaN when both sides are the same constant** (0/0).
* **SAGR counts a zero as its own sign**, as ``np.sign`` does: a label of exactly 0 (common for
  AffectNet's neutral faces) agrees only with a prediction of exactly 0, and a prediction of
  0 agrees with no non-zero label. This is EmoNet's and EMOCA's behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "TABLE_COLUMNS",
    "accuracy",
    "ccc",
    "emotion_metrics",
    "format_table",
    "pcc",
    "rmse",
    "sagr",
]

#: EMOCA's table: (column header, metrics key), in the paper's order.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("V-PCC", "v_pcc"),
    ("V-CCC", "v_ccc"),
    ("V-RMSE", "v_rmse"),
    ("V-SAGR", "v_sagr"),
    ("A-PCC", "a_pcc"),
    ("A-CCC", "a_ccc"),
    ("A-RMSE", "a_rmse"),
    ("A-SAGR", "a_sagr"),
    ("E-ACC", "e_acc"),
)


def _pair(truth, prediction, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Two finite 1-D arrays of the same, non-zero length (a trailing axis of 1 is dropped)."""
    y, p = np.asarray(truth), np.asarray(prediction)
    for a in (y, p):
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ValueError("values must be finite (drop missing samples first)")
    y, p = y.astype(dtype), p.astype(dtype)  # astype: EmoNet's int truncation for classes
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"expected 1-D arrays, got shapes {y.shape} and {p.shape}")
    if y.shape != p.shape:
        raise ValueError(f"length mismatch: {y.shape[0]} labels, {p.shape[0]} predictions")
    if y.size == 0:
        raise ValueError("no samples")
    return y, p


def _constant(x: np.ndarray) -> bool:
    # Exact test: np.var of identical floats can be a tiny non-zero number after rounding.
    return bool(np.ptp(x) == 0.0)


def pcc(truth, prediction) -> float:
    """Pearson correlation coefficient ``cov(y, ŷ) / (σ_y σ_ŷ)`` (EmoNet's ``PCC``).

    Args:
        truth: (N,) labels.
        prediction: (N,) predictions.

    Returns:
        A value in [-1, 1]; NaN when either side is constant (including N = 1).
    """
    y, p = _pair(truth, prediction)
    if _constant(y) or _constant(p):
        return math.nan
    dy, dp = y - y.mean(), p - p.mean()
    r = float(np.sum(dy * dp) / math.sqrt(float(np.sum(dy * dy)) * float(np.sum(dp * dp))))
    return min(1.0, max(-1.0, r))  # np.corrcoef clips rounding excursions the same way


def ccc(truth, prediction) -> float:
    """Lin's concordance correlation coefficient (EmoNet's ``CCC``, numpy ``std`` with ddof 0).

    ``CCC = 2 cov(y, ŷ) / (σ_y² + σ_ŷ² + (μ_y − μ_ŷ)²)`` with population (co)variances, equal to
    EmoNet's ``2 ρ σ_y σ_ŷ / (...)`` whenever ``ρ`` is defined.

    Args:
        truth: (N,) labels.
        prediction: (N,) predictions.

    Returns:
        A value in [-1, 1]; 0 when one side is constant (or both are, at different values);
        NaN when both are the same constant.
    """
    y, p = _pair(truth, prediction)
    my, mp = y.mean(), p.mean()
    var_y = 0.0 if _constant(y) else float(np.mean((y - my) ** 2))
    var_p = 0.0 if _constant(p) else float(np.mean((p - mp) ** 2))
    cov = 0.0 if var_y == 0.0 or var_p == 0.0 else float(np.mean((y - my) * (p - mp)))
    denominator = var_y + var_p + float(my - mp) ** 2
    if denominator == 0.0:
        return math.nan
    return 2.0 * cov / denominator


def rmse(truth, prediction) -> float:
    """Root mean squared error ``sqrt(mean((y − ŷ)²))``.

    Args:
        truth: (N,) labels.
        prediction: (N,) predictions.
    """
    y, p = _pair(truth, prediction)
    return float(np.sqrt(np.mean((y - p) ** 2)))


def sagr(truth, prediction) -> float:
    """Sign agreement ``mean(sign(y) == sign(ŷ))``; 0 is its own sign (see the module notes).

    Args:
        truth: (N,) labels.
        prediction: (N,) predictions.

    Returns:
        The fraction in [0, 1].
    """
    y, p = _pair(truth, prediction)
    return float(np.mean(np.sign(y) == np.sign(p)))


def accuracy(truth, prediction) -> float:
    """Classification accuracy ``mean(y == ŷ)`` over (N,) integer class indices."""
    y, p = _pair(truth, prediction, dtype=np.int64)
    return float(np.mean(y == p))


def emotion_metrics(
    pred_va=None,
    true_va=None,
    pred_class=None,
    true_class=None,
) -> dict[str, float]:
    """EMOCA's table entries for one model over a whole test set.

    Args:
        pred_va: (N, 2) predicted valence and arousal, or None when the model predicts none.
        true_va: (N, 2) labelled valence and arousal, or None.
        pred_class: (N,) predicted class indices (:data:`emorig.types.EMOTION_CLASSES`), or None.
        true_class: (N,) labelled class indices, or None.

    Returns:
        ``v_pcc, v_ccc, v_rmse, v_sagr, a_pcc, a_ccc, a_rmse, a_sagr`` when both V/A arrays are
        given, and ``e_acc`` when both class arrays are; values are Python floats (PCC/CCC may
        be NaN in the degenerate cases of :func:`pcc` and :func:`ccc`).
    """
    out: dict[str, float] = {}
    if pred_va is not None and true_va is not None:
        p = np.asarray(pred_va, dtype=np.float64)
        y = np.asarray(true_va, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or y.shape != p.shape:
            raise ValueError(f"valence/arousal must both be (N, 2), got {p.shape} and {y.shape}")
        for k, prefix in enumerate("va"):
            out[f"{prefix}_pcc"] = pcc(y[:, k], p[:, k])
            out[f"{prefix}_ccc"] = ccc(y[:, k], p[:, k])
            out[f"{prefix}_rmse"] = rmse(y[:, k], p[:, k])
            out[f"{prefix}_sagr"] = sagr(y[:, k], p[:, k])
    if pred_class is not None and true_class is not None:
        out["e_acc"] = accuracy(true_class, pred_class)
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.2f}"


def format_table(rows: Mapping[str, Mapping[str, float]], name_header: str = "Model") -> str:
    """Metrics of several models in EMOCA's table layout.

    Columns ``V-PCC V-CCC V-RMSE V-SAGR A-PCC A-CCC A-RMSE A-SAGR E-ACC`` (higher is better
    except RMSE), two decimals, ``-`` for a metric a row does not have, ``nan`` for an
    undefined one. Names are left-aligned, numbers right-aligned, columns separated by two
    spaces; no trailing spaces and no final newline.

    Args:
        rows: model name -> :func:`emotion_metrics` result, in display order.
        name_header: header of the first column.
    """
    headers = [name_header] + [h for h, _ in TABLE_COLUMNS]
    body = [[name] + [_cell(m.get(key)) for _, key in TABLE_COLUMNS] for name, m in rows.items()]
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join(line(r) for r in [headers, *body])

"""Self-contained HTML reports: sections of text, tables, hand-written SVG plots and image grids.

A report is a list of :class:`Section` s. Each holds an optional paragraph text, tables
(:class:`Table`), plots (:class:`BarPlot` of named values, :class:`LinePlot` of (x, y) series,
e.g. a training loss) and image grids (:class:`ImageGrid`: labelled rows of images).
:func:`write_report` writes ``report.html`` and ``report.json`` into a folder:

* ``report.html`` opens offline: images are PNG (or the files' own JPEG) bytes embedded as
  base64 ``data:`` URIs, plots are inline SVG drawn here (no matplotlib), there is no
  JavaScript and no external URL;
* ``report.json`` holds the same numbers (tables, plot values, image labels; no pixels), with
  NaN and infinities written as ``null`` so that strict JSON readers accept it.

Anything with nothing to show is marked ``(empty)`` in red: a section without content, a
table without rows, a plot without finite values, a grid without images. A report of
synthetic data (``synthetic=True``) carries a banner saying so at the top.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from emorig.errors import EmorigError
from emorig.io.atomic import atomic_write

__all__ = [
    "EMPTY_MARK",
    "REPORT_FORMAT",
    "SYNTHETIC_NOTICE",
    "BarPlot",
    "ImageGrid",
    "ImageRow",
    "LinePlot",
    "Section",
    "Series",
    "Table",
    "bar_svg",
    "image_data_uri",
    "line_svg",
    "render_html",
    "to_jsonable",
    "write_report",
]

REPORT_FORMAT = "emorig-report"
REPORT_VERSION = 1
#: What an empty section, table, plot or grid shows (in red).
EMPTY_MARK = "(empty)"
SYNTHETIC_NOTICE = (
    "SYNTHETIC DATA: the faces in this report are renders of emorig's procedurally generated "
    "built-in head, not photos of people. Numbers measured on them test the pipeline; they say "
    "nothing about real faces."
)
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#555")
_MAX_LINE_POINTS = 1500
_MIN_DISPLAY = 96  # smaller images are shown upscaled (pixelated) to at least this width


# ---------------------------------------------------------------------------------------------
# content


def _tuple(value, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise EmorigError(f"{name}: expected a sequence, got {type(value).__name__}")
    return tuple(value)


@dataclass(frozen=True)
class Table:
    """A table of values.

    Attributes:
        headers: column names.
        rows: one sequence of cells per row, as long as ``headers``; cells are numbers
            (floats shown with 4 significant digits, NaN and None as a dash), strings or
            booleans.
        caption: a line under the table.
    """

    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...] = ()
    caption: str | None = None

    def __post_init__(self) -> None:
        headers = tuple(str(h) for h in _tuple(self.headers, "table headers"))
        rows = tuple(tuple(_tuple(r, "table row")) for r in _tuple(self.rows, "table rows"))
        for r in rows:
            if len(r) != len(headers):
                raise EmorigError(
                    f"table row {list(r)!r} has {len(r)} cells for {len(headers)} headers"
                )
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "rows", rows)

    @property
    def is_empty(self) -> bool:
        return not self.rows

    def to_json(self) -> dict[str, Any]:
        return {
            "headers": list(self.headers),
            "rows": [to_jsonable(list(r)) for r in self.rows],
            "caption": self.caption,
        }


@dataclass(frozen=True)
class ImageRow:
    """One labelled row of images.

    Attributes:
        label: shown left of the row.
        images: each a (3, H, W) / (1, H, W) tensor or an (H, W, 3) / (H, W) array in
            [0, 1] or uint8, or the path of an image file (PNG and JPEG are embedded as they
            are, other formats re-encoded as PNG).
    """

    label: str
    images: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", _tuple(self.images, f"images of row {self.label!r}"))


@dataclass(frozen=True)
class ImageGrid:
    """Rows of images with optional column labels.

    Attributes:
        rows: the rows.
        columns: labels above the columns (may be shorter than the longest row).
        caption: a line under the grid.
        width: display width of each image in CSS pixels (default: its own width, small
            images upscaled to at least 96 pixels, pixelated).
    """

    rows: tuple[ImageRow, ...] = ()
    columns: tuple[str, ...] = ()
    caption: str | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        rows = _tuple(self.rows, "grid rows")
        if any(not isinstance(r, ImageRow) for r in rows):
            raise EmorigError("grid rows must be ImageRow values")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "columns", tuple(str(c) for c in _tuple(self.columns, "columns")))

    @property
    def is_empty(self) -> bool:
        return not any(r.images for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "rows": [{"label": r.label, "images": len(r.images)} for r in self.rows],
            "caption": self.caption,
        }


@dataclass(frozen=True)
class BarPlot:
    """A horizontal bar chart of named values (negative values extend left of zero).

    Attributes:
        values: ``(name, value)`` pairs in display order (a mapping is accepted); a
            non-finite value is shown as "n/a" without a bar.
        title: above the chart.
        unit: appended to the value labels.
        caption: a line under the chart.
    """

    values: tuple[tuple[str, float], ...]
    title: str = ""
    unit: str = ""
    caption: str | None = None

    def __post_init__(self) -> None:
        items = self.values.items() if isinstance(self.values, Mapping) else self.values
        pairs = []
        for item in _tuple(items, "bar values"):
            if len(item) != 2:
                raise EmorigError(f"bar value {item!r}: expected (name, value)")
            pairs.append((str(item[0]), _float(item[1])))
        object.__setattr__(self, "values", tuple(pairs))

    @property
    def is_empty(self) -> bool:
        return not any(math.isfinite(v) for _, v in self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "bar",
            "title": self.title,
            "unit": self.unit,
            "values": [[n, to_jsonable(v)] for n, v in self.values],
            "caption": self.caption,
        }


@dataclass(frozen=True)
class Series:
    """One line of a :class:`LinePlot`: ``y`` against ``x`` (equal lengths)."""

    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        x = tuple(_float(v) for v in _tuple(_flat(self.x), f"x of series {self.name!r}"))
        y = tuple(_float(v) for v in _tuple(_flat(self.y), f"y of series {self.name!r}"))
        if len(x) != len(y):
            raise EmorigError(f"series {self.name!r}: {len(x)} x values but {len(y)} y values")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)


@dataclass(frozen=True)
class LinePlot:
    """Lines of (x, y) values, e.g. training losses against the step.

    Attributes:
        series: the lines (a single :class:`Series` is accepted).
        title, x_label, y_label: texts.
        log_y: logarithmic y axis (non-positive values are left out).
        caption: a line under the chart.
    """

    series: tuple[Series, ...]
    title: str = ""
    x_label: str = ""
    y_label: str = ""
    log_y: bool = False
    caption: str | None = None

    def __post_init__(self) -> None:
        series = (
            (self.series,) if isinstance(self.series, Series) else _tuple(self.series, "series")
        )
        if any(not isinstance(s, Series) for s in series):
            raise EmorigError("line plot series must be Series values")
        object.__setattr__(self, "series", series)

    def _points(self, s: Series) -> list[tuple[float, float]]:
        pts = [
            (x, y)
            for x, y in zip(s.x, s.y, strict=True)
            if math.isfinite(x) and math.isfinite(y) and (y > 0 or not self.log_y)
        ]
        if self.log_y:
            pts = [(x, math.log10(y)) for x, y in pts]
        return pts

    @property
    def is_empty(self) -> bool:
        return not any(self._points(s) for s in self.series)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "line",
            "title": self.title,
            "x_label": self.x_label,
            "y_label": self.y_label,
            "log_y": self.log_y,
            "series": [
                {"name": s.name, "x": to_jsonable(list(s.x)), "y": to_jsonable(list(s.y))}
                for s in self.series
            ],
            "caption": self.caption,
        }


Plot = BarPlot | LinePlot


@dataclass(frozen=True)
class Section:
    """One titled part of a report. Shown in the order text, tables, plots, grids.

    Attributes:
        title: the heading (also in the table of contents).
        text: paragraphs, separated by blank lines (plain text, escaped).
        tables, plots, grids: the content.
        synthetic: mark this section as synthetic data (a badge by the title).
    """

    title: str
    text: str | None = None
    tables: tuple[Table, ...] = ()
    plots: tuple[Plot, ...] = ()
    grids: tuple[ImageGrid, ...] = ()
    synthetic: bool = False

    def __post_init__(self) -> None:
        for name, kind in (("tables", Table), ("plots", (BarPlot, LinePlot)), ("grids", ImageGrid)):
            value = getattr(self, name)
            value = (value,) if isinstance(value, kind) else _tuple(value, name)
            if any(not isinstance(v, kind) for v in value):
                raise EmorigError(f"section {self.title!r}: {name} hold the wrong type")
            object.__setattr__(self, name, value)

    @property
    def is_empty(self) -> bool:
        """True when nothing would be shown under the title."""
        return not (self.text and self.text.strip()) and not (
            self.tables or self.plots or self.grids
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "text": self.text,
            "synthetic": self.synthetic,
            "empty": self.is_empty,
            "tables": [t.to_json() for t in self.tables],
            "plots": [p.to_json() for p in self.plots],
            "grids": [g.to_json() for g in self.grids],
        }


# ---------------------------------------------------------------------------------------------
# values


def _flat(values) -> Any:
    if isinstance(values, Tensor):
        return values.detach().reshape(-1).cpu().tolist()
    if isinstance(values, np.ndarray):
        return values.reshape(-1).tolist()
    return values


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise EmorigError(f"{value!r}: expected a number") from None


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dataclasses and mappings as dicts, tensors and arrays
    as (nested) lists, paths as strings; NaN and infinities become None (strict JSON)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "to_json") and callable(value.to_json):
        return to_jsonable(value.to_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [to_jsonable(v) for v in value]
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return '<span class="na">&mdash;</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating, Tensor)):
        v = float(value)
        return _number(v) if math.isfinite(v) else '<span class="na">&mdash;</span>'
    return html.escape(str(value))


def _number(v: float) -> str:
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3e}"


# ---------------------------------------------------------------------------------------------
# images


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _image_bytes(image: Any) -> tuple[bytes, str, int]:
    """(encoded bytes, mime type, pixel width)."""
    from PIL import Image, UnidentifiedImageError

    from emorig.io.images import to_uint8

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                width = im.width
                mime = _MIME.get(path.suffix.lower())
                if mime is None or im.format not in ("PNG", "JPEG"):
                    return _png_bytes(np.asarray(im.convert("RGB"))), "image/png", width
                return data, "image/png" if im.format == "PNG" else "image/jpeg", width
        except (OSError, UnidentifiedImageError) as err:
            raise EmorigError(f"{path}: not a readable image ({type(err).__name__})") from None
    if isinstance(image, Tensor):
        t = image.detach()
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or (t.shape[0] not in (1, 3) and t.shape[-1] not in (1, 3)):
            raise EmorigError(f"image tensor: expected (3, H, W), got {tuple(image.shape)}")
        if t.shape[0] not in (1, 3):
            t = t.permute(2, 0, 1)
        arr = to_uint8(t)
    else:
        arr = np.asarray(image)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
            raise EmorigError(f"image array: expected (H, W, 3), got {arr.shape}")
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]
        arr = to_uint8(arr)
    return _png_bytes(np.ascontiguousarray(arr)), "image/png", int(arr.shape[1])


def image_data_uri(image: Any) -> str:
    """A ``data:image/png;base64,...`` URI of an image (see :class:`ImageRow` for inputs)."""
    data, mime, _ = _image_bytes(image)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------------------------------------
# SVG plots


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(t) < 1e-12 * step else t)
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks (log10 values) for a log axis over [lo, hi]: the decades, plus 2 and 5 times
    them when fewer than three decades show."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    ticks = [float(k) for k in decades if lo - 1e-9 <= k <= hi + 1e-9]
    if len(ticks) < 3:
        ticks = sorted(
            t
            for k in decades
            for t in (k, k + math.log10(2), k + math.log10(5))
            if lo - 1e-9 <= t <= hi + 1e-9
        )
    return ticks or _nice_ticks(lo, hi)


def bar_svg(plot: BarPlot, width: int = 560) -> str:
    """The bar chart as an inline ``<svg>`` element (no namespace URL needed in HTML5)."""
    bar_h, gap, top = 20, 6, 8
    label_w = min(220, 12 + 7 * max((len(n) for n, _ in plot.values), default=4))
    value_w = 90
    plot_w = max(120, width - label_w - value_w)
    finite = [v for _, v in plot.values if math.isfinite(v)]
    lo, hi = min([0.0, *finite]), max([0.0, *finite])
    span = (hi - lo) or 1.0
    x0 = label_w + plot_w * (0 - lo) / span
    height = top + len(plot.values) * (bar_h + gap) + 4
    out = [
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_esc(plot.title or "bar chart")}">'
    ]
    for i, (name, v) in enumerate(plot.values):
        y = top + i * (bar_h + gap)
        color = _PALETTE[i % len(_PALETTE)]
        out.append(
            f'<text x="{label_w - 6}" y="{y + bar_h * 0.72:.1f}" text-anchor="end">'
            f"{_esc(name)}</text>"
        )
        if math.isfinite(v):
            xv = label_w + plot_w * (v - lo) / span
            left, w = min(x0, xv), abs(xv - x0)
            out.append(
                f'<rect x="{left:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar_h}" '
                f'fill="{color}"><title>{_esc(name)}: {_number(v)}{_esc(plot.unit)}</title></rect>'
            )
            text = f"{_number(v)}{(' ' + plot.unit) if plot.unit else ''}"
            tx = max(x0, xv) + 4
        else:
            text, tx = "n/a", x0 + 4
        out.append(f'<text x="{tx:.1f}" y="{y + bar_h * 0.72:.1f}">{_esc(text)}</text>')
    out.append(
        f'<line x1="{x0:.1f}" y1="{top - 4}" x2="{x0:.1f}" y2="{height - 2}" stroke="#333"/>'
    )
    out.append("</svg>")
    return "".join(out)


def _decimate(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= _MAX_LINE_POINTS:
        return points
    stride = math.ceil(len(points) / _MAX_LINE_POINTS)
    kept = points[::stride]
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def line_svg(plot: LinePlot, width: int = 560, height: int = 300) -> str:
    """The line plot as an inline ``<svg>`` element, with axes, round ticks and a legend."""
    left, right, top, bottom = 64, 16, 12, 42
    legend_h = 18 * len(plot.series)
    total_h = height + legend_h
    pw, ph = width - left - right, height - top - bottom
    series = [(s, _decimate(plot._points(s))) for s in plot.series]
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_hi == y_lo:
        pad = abs(y_lo) * 0.05 or 0.5
        y_lo, y_hi = y_lo - pad, y_hi + pad

    def sx(x: float) -> float:
        return left + pw * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return top + ph * (1 - (y - y_lo) / (y_hi - y_lo))

    out = [
        f'<svg class="plot" width="{width}" height="{total_h}" viewBox="0 0 {width} {total_h}" '
        f'role="img" aria-label="{_esc(plot.title or "line plot")}">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for t in _nice_ticks(x_lo, x_hi):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" '
                   'stroke="#333"/>')  # fmt: skip
        out.append(
            f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{_number(t)}</text>'
        )
    y_ticks = _log_ticks(y_lo, y_hi) if plot.log_y else _nice_ticks(y_lo, y_hi)
    for t in y_ticks:
        y = sy(t)
        label = _number(10**t) if plot.log_y else _number(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                   'stroke="#e4e4e4"/>')  # fmt: skip
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_esc(label)}</text>')
    if plot.x_label:
        out.append(
            f'<text x="{left + pw / 2:.1f}" y="{top + ph + 34}" text-anchor="middle">'
            f"{_esc(plot.x_label)}</text>"
        )
    if plot.y_label:
        y_text = plot.y_label + (" (log)" if plot.log_y else "")
        out.append(
            f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{_esc(y_text)}</text>'
        )
    for i, (s, pts) in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        if len(pts) == 1:
            x, y = pts[0]
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        elif pts:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}">'
                f"<title>{_esc(s.name)}</title></polyline>"
            )
        ly = height + 14 * i + 8
        out.append(f'<rect x="{left}" y="{ly - 8}" width="14" height="4" fill="{color}"/>')
        out.append(f'<text x="{left + 20}" y="{ly - 2}">{_esc(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; }
.synthetic { background: #fff3cd; border: 2px solid #e0a800; padding: 10px 14px;
             font-weight: bold; margin: 12px 0; }
.badge { background: #e0a800; color: #000; font-size: 0.6em; padding: 2px 6px;
         border-radius: 4px; vertical-align: middle; margin-left: 8px; }
.empty { color: #d00000; font-weight: bold; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.na { color: #999; } .caption { color: #555; font-size: 0.9em; margin: 2px 0 12px; }
svg.plot { font-size: 11px; font-family: system-ui, sans-serif; display: block;
           margin: 6px 0; }
.plot-title { font-weight: bold; margin-top: 14px; }
table.grid td { border: none; padding: 2px; text-align: center; vertical-align: middle; }
table.grid th { background: none; border: none; font-weight: normal; font-size: 0.85em; }
table.grid img { image-rendering: pixelated; display: block; }
.gridwrap { max-width: 100%; overflow-x: auto; }
.toc { columns: 2; }
"""


def _empty() -> str:
    return f'<p class="empty" style="color:#d00000;font-weight:bold">{EMPTY_MARK}</p>'


def _caption(text: str | None) -> str:
    return f'<p class="caption">{_esc(text)}</p>' if text else ""


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.headers)
    if table.is_empty:
        return f"<table><tr>{head}</tr></table>{_empty()}{_caption(table.caption)}"
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>"
                   for r in table.rows)  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>{_caption(table.caption)}"


def _plot_html(plot: Plot) -> str:
    title = f'<div class="plot-title">{_esc(plot.title)}</div>' if plot.title else ""
    if plot.is_empty:
        return title + _empty() + _caption(plot.caption)
    svg = bar_svg(plot) if isinstance(plot, BarPlot) else line_svg(plot)
    return title + svg + _caption(plot.caption)


def _grid_html(grid: ImageGrid) -> str:
    if grid.is_empty:
        return _empty() + _caption(grid.caption)
    parts = ['<div class="gridwrap"><table class="grid">']
    if grid.columns:
        parts.append("<tr><th></th>" + "".join(f"<th>{_esc(c)}</th>" for c in grid.columns))
        parts.append("</tr>")
    for row in grid.rows:
        parts.append(f"<tr><th>{_esc(row.label)}</th>")
        for image in row.images:
            data, mime, w = _image_bytes(image)
            shown = grid.width or (w if w >= _MIN_DISPLAY else w * math.ceil(_MIN_DISPLAY / w))
            uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            parts.append(f'<td><img src="{uri}" width="{shown}" alt="{_esc(row.label)}"></td>')
        parts.append("</tr>")
    parts.append("</table></div>")  # wide grids scroll inside the page, never widen it
    return "".join(parts) + _caption(grid.caption)


def _section_html(index: int, section: Section) -> str:
    badge = '<span class="badge">synthetic data</span>' if section.synthetic else ""
    parts = [f'<section id="s{index}"><h2>{_esc(section.title)}{badge}</h2>']
    if section.is_empty:
        parts.append(_empty())
    if section.text and section.text.strip():
        for para in section.text.strip().split("\n\n"):
            parts.append(f"<p>{_esc(para.strip())}</p>")
    parts += [_table_html(t) for t in section.tables]
    parts += [_plot_html(p) for p in section.plots]
    parts += [_grid_html(g) for g in section.grids]
    parts.append("</section>")
    return "\n".join(parts)


def render_html(
    sections: Sequence[Section],
    *,
    title: str = "emorig report",
    synthetic: bool = False,
    subtitle: str | None = None,
) -> str:
    """The report page as one self-contained HTML string (see the module docstring)."""
    toc = "".join(f'<li><a href="#s{i}">{_esc(s.title)}</a></li>' for i, s in enumerate(sections))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="caption">{_esc(subtitle)}</p>')
    if synthetic:
        parts.append(f'<div class="synthetic">{_esc(SYNTHETIC_NOTICE)}</div>')
    if not sections:
        parts.append(_empty())
    else:
        parts.append(f'<ul class="toc">{toc}</ul>')
    parts += [_section_html(i, s) for i, s in enumerate(sections)]
    if synthetic:
        parts.append(f'<div class="synthetic">{_esc(SYNTHETIC_NOTICE)}</div>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _collect(content) -> tuple[list[Section], list[Any]]:
    """Sections and the evaluations (objects with ``sections()`` and ``to_json()``)."""
    items = [content] if isinstance(content, Section) or hasattr(content, "sections") else content
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise EmorigError(f"a report needs sections, got {type(content).__name__}")
    sections, evaluations = [], []
    for item in items:
        if isinstance(item, Section):
            sections.append(item)
        elif hasattr(item, "sections") and callable(item.sections):
            evaluations.append(item)
            sections.extend(item.sections())
        else:
            raise EmorigError(f"a report holds sections or evaluations, got {type(item).__name__}")
    return sections, evaluations


def write_report(
    content,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "emorig report",
    synthetic: bool | None = None,
    subtitle: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/report.json`` (both atomically).

    Args:
        content: a :class:`Section`, an evaluation (anything with ``sections()`` and
            ``to_json()``, e.g. :class:`~emorig.evaluate.protocol.Evaluation`), or a sequence
            mixing both (an evaluation expands to its sections in place).
        out_dir: the folder (created).
        title: the page title.
        synthetic: show the synthetic-data banner; default: when any evaluation says its data
            is synthetic (``evaluation.synthetic``) or any section is marked synthetic.
        subtitle: a line under the title (e.g. the model and data).
        extra: more JSON-able values stored under ``"extra"`` in ``report.json``.

    Returns:
        The path of ``report.html``.
    """
    sections, evaluations = _collect(content)
    if synthetic is None:
        synthetic = any(bool(getattr(e, "synthetic", False)) for e in evaluations) or any(
            s.synthetic for s in sections
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EmorigError(f"{out}: is a file; the report goes into a folder")
    out.mkdir(parents=True, exist_ok=True)
    page = render_html(sections, title=title, synthetic=synthetic, subtitle=subtitle)
    record = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "title": title,
        "subtitle": subtitle,
        "synthetic": synthetic,
        "sections": [s.to_json() for s in sections],
        "evaluations": [to_jsonable(e.to_json()) for e in evaluations],
    }
    if extra:
        record["extra"] = to_jsonable(dict(extra))
    with atomic_write(out / "report.json", "w") as f:
        json.dump(record, f, indent=1, allow_nan=False)
        f.write("\n")
    path = out / "report.html"
    with atomic_write(path, "w") as f:
        f.write(page)
    return path

"""HTML/JSON reports: every section shows up, images are embedded, nothing points off-line,
empty parts are marked in red, synthetic data are flagged, JSON stays strict."""

import base64
import io
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from emorig.errors import EmorigError
from emorig.evaluate.metrics import CodeErrors
from emorig.evaluate.protocol import ErrorRow, Evaluation, Example, IdentitySummary
from emorig.evaluate.report import (
    EMPTY_MARK,
    SYNTHETIC_NOTICE,
    BarPlot,
    ImageGrid,
    ImageRow,
    LinePlot,
    Section,
    Series,
    Table,
    line_svg,
    render_html,
    write_report,
)

DATA_URI = re.compile(r'src="data:(image/(?:png|jpeg));base64,([A-Za-z0-9+/=]+)"')


def _sections(tmp_path):
    png = tmp_path / "sample.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(png)
    steps = np.arange(1, 201)
    return [
        Section(
            "Training",
            "Loss of a tiny run.\n\nSecond paragraph <escaped>.",
            plots=(
                LinePlot(
                    (Series("diffusion", steps, 1.0 / steps), Series("ema", steps, 2.0 / steps)),
                    title="loss",
                    x_label="step",
                    y_label="loss",
                    log_y=True,
                ),
            ),
        ),
        Section(
            "Metrics",
            tables=(Table(("name", "value", "ok"), [("a", 1.23456, True), ("b", math.nan, None)]),),
            plots=(BarPlot({"exp": 0.5, "pose": -0.25, "light": math.inf}, title="errors"),),
        ),
        Section(
            "Edits",
            grids=(
                ImageGrid(
                    (
                        ImageRow("tensor", (torch.rand(3, 32, 32), torch.zeros(1, 32, 32))),
                        ImageRow("array + file", (np.zeros((16, 16, 3), np.uint8), png)),
                    ),
                    columns=("a", "b"),
                ),
            ),
            synthetic=True,
        ),
        Section("Nothing yet"),
    ]


def test_report_has_every_section_embedded_images_and_no_urls(tmp_path):
    sections = _sections(tmp_path)
    path = write_report(sections, tmp_path / "out", title="Demo <report>", synthetic=True)
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text()
    for s in sections:
        assert f">{s.title}<" in page
    assert "Demo &lt;report&gt;" in page
    assert "&lt;escaped&gt;" in page
    assert not re.search(r"https?://", page)
    assert "<script" not in page
    images = DATA_URI.findall(page)
    assert len(images) == 4
    first = Image.open(io.BytesIO(base64.b64decode(images[0][1])))
    assert first.size == (32, 32)
    assert Image.open(io.BytesIO(base64.b64decode(images[3][1]))).size == (30, 20)
    assert page.count("<svg") == 2
    assert "<polyline" in page
    # only the empty section is marked
    assert page.count(EMPTY_MARK) == 1
    empty_part = page.split("<h2>Nothing yet")[1].split("</section>")[0]
    assert EMPTY_MARK in empty_part
    assert "color:#d00000" in empty_part
    assert SYNTHETIC_NOTICE.split(":")[0] in page
    assert "synthetic data</span>" in page  # the badge of the synthetic section

    record = json.loads((tmp_path / "out" / "report.json").read_text())
    assert record["synthetic"] is True
    assert [s["title"] for s in record["sections"]] == [s.title for s in sections]
    assert [s["empty"] for s in record["sections"]] == [False, False, False, True]
    metrics = record["sections"][1]
    assert metrics["tables"][0]["rows"][1] == ["b", None, None]  # NaN -> null
    assert metrics["plots"][0]["values"][2] == ["light", None]
    assert record["sections"][2]["grids"][0]["rows"][1] == {"label": "array + file", "images": 2}


def test_empty_parts_and_synthetic_banner():
    page = render_html(
        [
            Section("Empty table", tables=(Table(("a", "b")),)),
            Section("Empty plot", plots=(BarPlot([("x", math.nan)]),)),
            Section("Empty grid", grids=(ImageGrid((ImageRow("none", ()),)),)),
            Section("Blank text", text="   "),
        ],
        title="t",
    )
    assert page.count(EMPTY_MARK) == 4
    assert SYNTHETIC_NOTICE.split(":")[0] not in page
    assert render_html([], title="t").count(EMPTY_MARK) == 1
    assert Section("x", text=" ").is_empty
    assert not Section("x", tables=(Table(("a",)),)).is_empty


def test_bad_content_is_refused(tmp_path):
    with pytest.raises(EmorigError, match="3 cells"):
        Table(("a", "b"), [(1, 2, 3)])
    with pytest.raises(EmorigError, match="x values"):
        Series("s", [1, 2], [1])
    with pytest.raises(EmorigError, match="expected a number"):
        BarPlot([("a", "many")])
    with pytest.raises(EmorigError, match="sections"):
        write_report(42, tmp_path)
    with pytest.raises(EmorigError, match="readable image"):
        render_html([Section("s", grids=(ImageGrid((ImageRow("r", (tmp_path / "no.png",)),)),))])


def test_long_lines_are_thinned_and_log_axes_skip_non_positive():
    x = np.arange(5000)
    y = np.linspace(1, 2, 5000)
    y[10] = 0.0  # left out on a log axis
    svg = line_svg(LinePlot(Series("loss", x, y), log_y=True))
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert 2 <= len(points) <= 1501
    assert LinePlot(Series("s", [1, 2], [-1, 0]), log_y=True).is_empty


def _evaluation(synthetic=True):
    errors = CodeErrors(0.1, 0.01, 2.0, 1.0, 0.05, 2)
    ident = IdentitySummary("shape", 0.99, 0.1, None, 2)
    rows = (
        ErrorRow("exp", "edit", errors, "expression_l2", (0.1, 0.1), ident),
        ErrorRow("unedited", "reference", errors, None, (0.1, 0.1), ident),
        ErrorRow("source", "reference", errors, None, (0.1, 0.1), ident),
    )
    image = np.zeros((8, 8, 3), np.uint8)
    return Evaluation(
        settings={"data": "d", "modes": ["exp"]},
        synthetic=synthetic,
        pairs=(("a", "b"), ("b", "a")),
        errors=rows,
        examples=(Example("edits", "a <- b", ("source", "target", "exp"), (image,) * 3),),
    )


def test_an_evaluation_writes_its_sections_and_numbers(tmp_path):
    ev = _evaluation()
    extra = Section("Training log", text="see above")
    path = write_report([ev, extra], tmp_path, title="eval")
    page = path.read_text()
    titles = [s.title for s in ev.sections()] + ["Training log"]
    for t in titles:
        assert f">{t}<" in page
    assert SYNTHETIC_NOTICE.split(":")[0] in page  # from evaluation.synthetic
    assert EMPTY_MARK not in page
    assert len(DATA_URI.findall(page)) == 3
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["evaluations"][0]["errors"][0]["expression_l2"] == pytest.approx(0.1)
    assert record["evaluations"][0]["errors"][1]["primary_value"] is None
    plain = write_report(_evaluation(synthetic=False), tmp_path / "real").read_text()
    assert SYNTHETIC_NOTICE.split(":")[0] not in plain

"""`emorig demo --fast`: the whole pipeline on the built-in head runs with nothing downloaded
and writes a report whose every section is filled."""

import json
import math
from pathlib import Path

import pytest

from emorig.cli.main import main
from emorig.evaluate.report import EMPTY_MARK

SECTIONS = {
    "Data",
    "Personalisation (stage 2)",
    "Edits: expression, pose, light",
    "Edits: emotions",
    "Code errors (requested vs re-reconstructed)",
    "Identity preservation",
    "Emotion accuracy",
    "Multi-view consistency",
}


@pytest.mark.slow
def test_demo_fast_fills_every_section(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["synthetic"] is True
    titles = {s["title"] for s in report["sections"]}
    assert titles >= SECTIONS
    for section in report["sections"]:
        parts = sum(len(section.get(k) or []) for k in ("tables", "plots", "grids"))
        assert parts > 0, section["title"]
    html = (out / "report.html").read_text()
    assert EMPTY_MARK not in html
    assert "http://" not in html
    assert "https://" not in html
    assert html.count("data:image/png;base64,") >= 8
    # Edits of both sources and their grids, and the stage-2 model, are on disk.
    assert len(list((out / "edits").glob("*_grid.png"))) == 2
    assert (out / "stage2" / "model" / "model.safetensors").is_file()
    # The same seed gives the numbers the code reported before the package was restructured.
    assert_same_numbers(report, json.loads(EXPECTED.read_text())["numbers"])


EXPECTED = Path(__file__).parent / "data" / "demo_fast_numbers.json"


def report_numbers(report: dict) -> dict[str, list]:
    """``"section | table i | row" -> the row's non-text cells`` of a report.json."""
    out = {}
    for section in report["sections"]:
        for i, table in enumerate(section.get("tables") or []):
            for row in table["rows"]:
                key = f"{section['title']} | table {i} | {row[0]}"
                out[key] = [v for v in row[1:] if not isinstance(v, str)]
    return out


def assert_same_numbers(report: dict, expected: dict[str, list], rel: float = 1e-3) -> None:
    got = report_numbers(report)
    for key, values in expected.items():
        assert key in got, key
        assert len(got[key]) == len(values), key
        for a, b in zip(got[key], values, strict=True):
            if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
                assert (a is None or math.isnan(a)) == (b is None or math.isnan(b)), key
            else:
                assert a == pytest.approx(b, rel=rel, abs=1e-6), (key, a, b)


def test_the_number_check_sees_a_change():
    report = {"sections": [{"title": "T", "tables": [{"rows": [["exp", 1.0, "x", 3]]}]}]}
    assert_same_numbers(report, {"T | table 0 | exp": [1.0, 3]})
    with pytest.raises(AssertionError):
        assert_same_numbers(report, {"T | table 0 | exp": [1.01, 3]})
    with pytest.raises(AssertionError):
        assert_same_numbers(report, {"T | table 0 | pose": [1.0, 3]})

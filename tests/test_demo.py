"""`emorig demo --fast`: the whole pipeline on the built-in head runs with nothing downloaded
and writes a report whose every section is filled."""

import json

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

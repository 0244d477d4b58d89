from pathlib import Path

from emorig.flame.builtin import ALBEDO_COMPONENTS, EXPRESSION_COMPONENTS, SHAPE_COMPONENTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "builtin-head.md"


def test_every_named_component_is_documented_in_order():
    text = DOC.read_text()
    assert "synthetic" in text
    for table in (SHAPE_COMPONENTS, EXPRESSION_COMPONENTS, ALBEDO_COMPONENTS):
        for index, (name, effect) in enumerate(table):
            assert f"| {index} | `{name}` | {effect} |" in text, name

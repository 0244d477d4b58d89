"""DECA's 236-parameter layout: component order, light layout, exact round trips."""

from __future__ import annotations

import pytest
import torch

from emorig.reconstruct.codes import (
    DECA_LAYOUT,
    DECA_PARAM_COUNT,
    code_to_vector,
    layout_size,
    layout_slices,
    make_layout,
    vector_to_code,
)
from emorig.types import FaceCode


def _one_hot(index: int, batch: int = 1) -> torch.Tensor:
    vector = torch.zeros(batch, DECA_PARAM_COUNT)
    vector[:, index] = 1.0
    return vector


def _nonzero_fields(code: FaceCode) -> dict[str, list[tuple[int, ...]]]:
    out = {}
    for name in ("shape", "albedo", "expression", "global_pose", "jaw_pose", "camera", "light"):
        idx = torch.nonzero(getattr(code, name)[0]).tolist()
        if idx:
            out[name] = [tuple(i) for i in idx]
    return out


def test_layout_is_decas():
    assert [name for name, _ in DECA_LAYOUT] == [
        "shape",
        "albedo",
        "expression",
        "pose",
        "camera",
        "light",
    ]
    assert [n for _, n in DECA_LAYOUT] == [100, 50, 50, 6, 3, 27]
    assert layout_size() == DECA_PARAM_COUNT == 236
    assert layout_slices()["expression"] == slice(150, 200)


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, {"shape": [(0,)]}),
        (99, {"shape": [(99,)]}),
        (100, {"albedo": [(0,)]}),
        (150, {"expression": [(0,)]}),
        (199, {"expression": [(49,)]}),
        (200, {"global_pose": [(0,)]}),  # pose = global (3) then jaw (3)
        (203, {"jaw_pose": [(0,)]}),
        (205, {"jaw_pose": [(2,)]}),
        (206, {"camera": [(0,)]}),  # camera = (s, tx, ty)
        (209, {"light": [(0, 0)]}),  # light: coefficient-major, RGB minor
        (210, {"light": [(0, 1)]}),
        (212, {"light": [(1, 0)]}),
        (235, {"light": [(8, 2)]}),
    ],
)
def test_each_index_lands_in_its_component(index, expected):
    code = vector_to_code(_one_hot(index))
    assert _nonzero_fields(code) == expected


def test_vector_code_vector_round_trip_is_exact():
    vector = torch.randn(4, DECA_PARAM_COUNT, dtype=torch.float64)
    code = vector_to_code(vector)
    assert code.light.shape == (4, 9, 3)
    assert code.neck_pose.shape == (4, 3)
    assert not code.neck_pose.any()
    assert code.eye_pose.shape == (4, 6)
    assert not code.eye_pose.any()
    assert torch.equal(code_to_vector(code), vector)


def test_code_vector_code_round_trip_is_exact():
    code = vector_to_code(torch.randn(3, DECA_PARAM_COUNT), detail=torch.randn(3, 128))
    back = vector_to_code(code_to_vector(code), detail=code.detail)
    for name in ("shape", "albedo", "expression", "global_pose", "jaw_pose", "camera", "light"):
        assert torch.equal(getattr(back, name), getattr(code, name)), name
    assert back.detail is code.detail


def test_other_sizes_round_trip():
    layout = make_layout(n_shape=300, n_albedo=10, n_expression=100)
    vector = torch.randn(2, layout_size(layout))
    code = vector_to_code(vector, layout=layout)
    assert code.shape.shape == (2, 300)
    assert code.expression.shape == (2, 100)
    assert torch.equal(code_to_vector(code), vector)  # layout inferred from the code
    assert torch.equal(code_to_vector(code, layout), vector)


def test_neutral_code_packs():
    vector = code_to_vector(FaceCode.neutral(2))
    assert vector.shape == (2, 236)
    assert torch.equal(vector_to_code(vector).light, FaceCode.neutral(2).light)


def test_refusals():
    with pytest.raises(ValueError, match=r"\(B, 236\)"):
        vector_to_code(torch.zeros(2, 235))
    with pytest.raises(ValueError, match=r"\(B, 236\)"):
        vector_to_code(torch.zeros(236))
    with pytest.raises(ValueError, match="detail"):
        vector_to_code(torch.zeros(2, 236), detail=torch.zeros(3, 128))
    code = vector_to_code(torch.zeros(1, 236))
    with pytest.raises(ValueError, match="neck or eye"):
        code_to_vector(code.replace(neck_pose=torch.ones(1, 3)))
    with pytest.raises(ValueError, match="expression"):
        code_to_vector(code, make_layout(n_expression=100))
    with pytest.raises(ValueError, match="order"):
        layout_slices((("albedo", 50), ("shape", 100)))
    with pytest.raises(ValueError, match="size 6"):
        layout_slices(tuple((n, 7 if n == "pose" else s) for n, s in DECA_LAYOUT))

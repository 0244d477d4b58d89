"""DECA's flat parameter vector, as data, and its conversion to and from :class:`FaceCode`.

DECA's coarse encoder predicts one vector per image (``decalib/deca.py``,
``decompose_code``), cut in this order::

    shape 100 | albedo 50 | expression 50 | pose 6 | camera 3 | light 27     (236 in total)

* pose = global head rotation (axis-angle, 3) followed by jaw rotation (axis-angle, 3);
* camera = ``(s, tx, ty)`` of the orthographic camera;
* light = 9 second-order SH coefficients x RGB, stored coefficient-major: ``light.reshape(B,
  9, 3)`` gives ``light[:, k, c]`` for coefficient ``k`` and colour ``c``.

DECA has no neck or eye rotation: :func:`vector_to_code` sets them to zero and
:func:`code_to_vector` refuses codes where they are not zero (the vector cannot hold them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from emorig.types import FaceCode

__all__ = [
    "DECA_LAYOUT",
    "DECA_PARAM_COUNT",
    "Layout",
    "code_to_vector",
    "layout_size",
    "layout_slices",
    "make_layout",
    "vector_to_code",
]

Layout = tuple[tuple[str, int], ...]

DECA_LAYOUT: Layout = (
    ("shape", 100),
    ("albedo", 50),
    ("expression", 50),
    ("pose", 6),
    ("camera", 3),
    ("light", 27),
)
DECA_PARAM_COUNT = 236

_NAMES = tuple(name for name, _ in DECA_LAYOUT)
_FIXED = {"pose": 6, "camera": 3, "light": 27}  # sizes FaceCode's fields require


def make_layout(n_shape: int = 100, n_albedo: int = 50, n_expression: int = 50) -> Layout:
    """DECA's layout with other coefficient counts (EMOCA's ``n_shape``, ``n_tex``, ``n_exp``).

    Pose, camera and light keep their sizes 6, 3 and 27.
    """
    for name, n in (("n_shape", n_shape), ("n_albedo", n_albedo), ("n_expression", n_expression)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    return (
        ("shape", n_shape),
        ("albedo", n_albedo),
        ("expression", n_expression),
        ("pose", 6),
        ("camera", 3),
        ("light", 27),
    )


def _check_layout(layout: Sequence[tuple[str, int]]) -> None:
    names = tuple(name for name, _ in layout)
    if names != _NAMES:
        raise ValueError(f"layout must list {_NAMES} in this order, got {names}")
    for name, n in layout:
        if name in _FIXED and n != _FIXED[name]:
            raise ValueError(f"layout entry {name!r} must have size {_FIXED[name]}, got {n}")


def layout_size(layout: Sequence[tuple[str, int]] = DECA_LAYOUT) -> int:
    """Total length of a parameter vector with this layout (236 for DECA's)."""
    return sum(n for _, n in layout)


def layout_slices(layout: Sequence[tuple[str, int]] = DECA_LAYOUT) -> dict[str, slice]:
    """Where each component sits in the vector, e.g. ``{"expression": slice(150, 200), ...}``."""
    _check_layout(layout)
    slices = {}
    start = 0
    for name, n in layout:
        slices[name] = slice(start, start + n)
        start += n
    return slices


def vector_to_code(
    vector: Tensor, detail: Tensor | None = None, layout: Sequence[tuple[str, int]] = DECA_LAYOUT
) -> FaceCode:
    """Split a DECA parameter vector into a :class:`FaceCode`.

    Args:
        vector: (B, N) with N = ``layout_size(layout)`` (236 for DECA).
        detail: (B, D) detail code to attach, or None.
        layout: component names and sizes, in DECA's order (see :func:`make_layout`).

    Returns:
        FaceCode with views into ``vector`` (no copy); ``light`` is (B, 9, 3), neck and eye
        poses are zeros.

    Raises:
        ValueError: wrong rank or length, or a detail code with another batch size.
    """
    slices = layout_slices(layout)
    total = layout_size(layout)
    if vector.ndim != 2 or vector.shape[1] != total:
        raise ValueError(f"expected a (B, {total}) parameter vector, got {tuple(vector.shape)}")
    batch = vector.shape[0]
    if detail is not None and (detail.ndim != 2 or detail.shape[0] != batch):
        raise ValueError(f"detail must be (B={batch}, D), got {tuple(detail.shape)}")
    pose = vector[:, slices["pose"]]
    zeros = vector.new_zeros(batch, 9)
    return FaceCode(
        shape=vector[:, slices["shape"]],
        expression=vector[:, slices["expression"]],
        global_pose=pose[:, :3],
        jaw_pose=pose[:, 3:],
        camera=vector[:, slices["camera"]],
        light=vector[:, slices["light"]].reshape(batch, 9, 3),
        albedo=vector[:, slices["albedo"]],
        neck_pose=zeros[:, :3],
        eye_pose=zeros[:, 3:],
        detail=detail,
    )


def code_to_vector(code: FaceCode, layout: Sequence[tuple[str, int]] | None = None) -> Tensor:
    """Pack a :class:`FaceCode` into DECA's parameter vector (the inverse of
    :func:`vector_to_code`; the detail code is not part of the vector).

    Args:
        code: the face code; neck and eye poses must be zero.
        layout: expected layout; by default it is taken from the code's sizes.

    Returns:
        (B, N) tensor, components concatenated in DECA's order.

    Raises:
        ValueError: sizes that do not match ``layout``, or non-zero neck/eye poses.
    """
    if layout is None:
        layout = make_layout(code.shape.shape[1], code.albedo.shape[1], code.expression.shape[1])
    _check_layout(layout)
    if torch.any(code.neck_pose != 0) or torch.any(code.eye_pose != 0):
        raise ValueError("DECA's parameter vector has no neck or eye pose; they must be zero")
    batch = code.batch_size
    if tuple(code.light.shape) != (batch, 9, 3):
        raise ValueError(f"light must be (B, 9, 3), got {tuple(code.light.shape)}")
    parts = {
        "shape": code.shape,
        "albedo": code.albedo,
        "expression": code.expression,
        "pose": torch.cat([code.global_pose, code.jaw_pose], dim=1),
        "camera": code.camera,
        "light": code.light.reshape(batch, -1),
    }
    for name, n in layout:
        if tuple(parts[name].shape) != (batch, n):
            raise ValueError(
                f"{name} has shape {tuple(parts[name].shape)}, the layout expects ({batch}, {n})"
            )
    return torch.cat([parts[name] for name, _ in layout], dim=1)

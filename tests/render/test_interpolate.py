"""Barycentric interpolation of vertex and face-corner attributes."""

from __future__ import annotations

import pytest
import torch

from emorig.geometry import face_vertices
from emorig.render import interpolate, rasterize
from emorig.types import Fragments


def scene(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    v = torch.rand(2, 12, 3, generator=g, dtype=dtype) * 2 - 1
    f = torch.stack([torch.randperm(12, generator=g)[:3] for _ in range(10)])
    return v, f, rasterize(v, f, (9, 11))


def test_vertex_attributes_match_the_explicit_sum():
    _v, f, frags = scene()
    attr = torch.randn(2, 12, 4, dtype=torch.float64)
    out = interpolate(frags, attr, f)
    assert out.shape == (2, 4, 9, 11)
    covered = frags.pix_to_face >= 0
    assert int(covered.sum()) > 20
    for b, y, x in covered.nonzero().tolist():
        corners = f[frags.pix_to_face[b, y, x]]
        expected = (frags.bary[b, y, x, :, None] * attr[b, corners]).sum(0)
        torch.testing.assert_close(out[b, :, y, x], expected)
    assert bool((out.permute(0, 2, 3, 1)[~covered] == 0).all())


def test_face_attributes_equal_gathered_vertex_attributes():
    _v, f, frags = scene()
    attr = torch.randn(2, 12, 3, dtype=torch.float64)
    torch.testing.assert_close(
        interpolate(frags, face_vertices(attr, f)), interpolate(frags, attr, f)
    )


def test_batch_of_one_attributes_broadcast():
    _v, f, frags = scene()
    attr = torch.randn(1, f.shape[0], 3, 2, dtype=torch.float64)
    out = interpolate(frags, attr)
    torch.testing.assert_close(out, interpolate(frags, attr.expand(2, -1, -1, -1)))


def test_gradcheck_attributes_and_barycentrics():
    _v, f, frags = scene()
    attr = torch.randn(2, 12, 2, dtype=torch.float64, requires_grad=True)
    bary = frags.bary.detach().clone().requires_grad_(True)
    corner_attr = torch.randn(2, f.shape[0], 3, 2, dtype=torch.float64, requires_grad=True)

    def fn(a, w, c):
        fr = Fragments(frags.pix_to_face, w, frags.zbuf)
        return interpolate(fr, a, f), interpolate(fr, c)

    assert torch.autograd.gradcheck(fn, (attr, bary, corner_attr))


def test_dtype_follows_the_attributes():
    _v, f, frags = scene(torch.float32)
    out = interpolate(frags, torch.rand(2, 12, 3, dtype=torch.float64), f)
    assert out.dtype == torch.float64


def test_invalid_arguments():
    _v, f, frags = scene()
    with pytest.raises(ValueError, match="need faces"):
        interpolate(frags, torch.rand(2, 12, 3))
    with pytest.raises(ValueError, match="take no faces"):
        interpolate(frags, torch.rand(2, 10, 3, 2), f)
    with pytest.raises(ValueError, match="batch"):
        interpolate(frags, torch.rand(3, 12, 3), f)
    with pytest.raises(ValueError, match=r"\(B, V, C\) or"):
        interpolate(frags, torch.rand(12, 3), f)
    with pytest.raises(ValueError, match="floating"):
        interpolate(frags, torch.ones(2, 12, 3, dtype=torch.long), f)

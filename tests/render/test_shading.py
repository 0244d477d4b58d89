"""DECA's SH and directional shading."""

from __future__ import annotations

import math

import pytest
import torch

from emorig.render import SH_CONSTANTS, directional_shading, sh_basis, sh_shading


def unit_normals(shape=(2, 3, 5, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(*shape, generator=g, dtype=torch.float64)
    return n / n.norm(dim=1, keepdim=True)


def test_constants_are_decas():
    pi = math.pi
    deca = [
        1 / math.sqrt(4 * pi),
        ((2 * pi) / 3) * math.sqrt(3 / (4 * pi)),
        ((2 * pi) / 3) * math.sqrt(3 / (4 * pi)),
        ((2 * pi) / 3) * math.sqrt(3 / (4 * pi)),
        (pi / 4) * 3 * math.sqrt(5 / (12 * pi)),
        (pi / 4) * 3 * math.sqrt(5 / (12 * pi)),
        (pi / 4) * 3 * math.sqrt(5 / (12 * pi)),
        (pi / 4) * (3 / 2) * math.sqrt(5 / (12 * pi)),
        (pi / 4) * (1 / 2) * math.sqrt(5 / (4 * pi)),
    ]
    assert pytest.approx(deca, rel=1e-15) == SH_CONSTANTS
    assert SH_CONSTANTS[0] == pytest.approx(0.28209479177387814)


def test_basis_order_and_scaling():
    n = torch.tensor([0.3, -0.4, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    x, y, z = 0.3, -0.4, 0.5
    raw = [1, x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1]
    expected = torch.tensor([c * r for c, r in zip(SH_CONSTANTS, raw, strict=True)])
    torch.testing.assert_close(sh_basis(n).flatten(), expected.double())


def test_shading_is_decas_add_shlight():
    n = unit_normals()
    sh = torch.randn(2, 9, 3, dtype=torch.float64)
    # DECA: sum(sh_coeff[:, :, :, None, None] * (basis * constants)[:, :, None], 1)
    c = torch.tensor(SH_CONSTANTS, dtype=torch.float64)
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    basis = (
        torch.stack([x * 0 + 1, x, y, z, x * y, x * z, y * z, x**2 - y**2, 3 * z**2 - 1], 1)
        * c[None, :, None, None]
    )
    expected = torch.sum(sh[:, :, :, None, None] * basis[:, :, None], 1)
    torch.testing.assert_close(sh_shading(n, sh), expected)


def test_shading_in_batch_chunks_is_the_same(monkeypatch):
    import emorig.render.shading as shading_module

    n = unit_normals((5, 3, 4, 6), seed=2)
    sh = torch.randn(5, 9, 3, dtype=torch.float64)
    whole = sh_shading(n, sh)
    monkeypatch.setattr(shading_module, "_BASIS_CHUNK", 9 * 4 * 6 * 2)  # two images a chunk
    torch.testing.assert_close(sh_shading(n, sh), whole)


def test_dc_only_light_is_constant():
    n = unit_normals()
    sh = torch.zeros(2, 9, 3, dtype=torch.float64)
    sh[:, 0] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out = sh_shading(n, sh)
    expected = SH_CONSTANTS[0] * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand_as(out))


def test_sh_gradcheck():
    n = unit_normals((1, 3, 3, 2)).requires_grad_(True)
    sh = torch.randn(1, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sh_shading, (n, sh))
    assert torch.autograd.gradcheck(sh_basis, (n,))


def test_directional_is_the_mean_of_clamped_cosines():
    n = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    dirs = torch.tensor([[[0.0, 0.0, 2.0], [0.0, 0.0, -1.0], [1.0, 0.0, 1.0]]], dtype=torch.float64)
    inten = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [1.0, 1.0, 1.0]]], dtype=torch.float64)
    out = directional_shading(n, dirs, inten).flatten()
    # unit +z: 1; -z: clamped to 0; (1, 0, 1)/sqrt 2: 1/sqrt 2
    expected = (torch.tensor([1.0, 2.0, 3.0]) + 0 + 1 / math.sqrt(2)) / 3
    torch.testing.assert_close(out, expected.double())


def test_directional_gradcheck_and_dtype():
    n = unit_normals((1, 3, 2, 2), seed=4).requires_grad_(True)
    dirs = torch.randn(1, 2, 3, dtype=torch.float64)
    inten = torch.rand(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: directional_shading(a, dirs, b), (n, inten))
    assert directional_shading(n.float(), dirs, inten).dtype == torch.float32


def test_invalid_shapes():
    n = unit_normals()
    with pytest.raises(ValueError, match="normals"):
        sh_shading(n[:, :2], torch.zeros(2, 9, 3))
    with pytest.raises(ValueError, match="sh must"):
        sh_shading(n, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="intensities"):
        directional_shading(n, torch.zeros(2, 5, 3), torch.zeros(2, 4, 3))

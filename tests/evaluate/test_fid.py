"""FID: Fréchet distance by hand, statistics, and a feature network from a file."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from emorig.errors import EmorigError
from emorig.evaluate import (
    extract_features,
    feature_statistics,
    fid_from_features,
    fid_from_images,
    frechet_distance,
    sqrtm_psd,
)


def test_one_dimensional_gaussians():
    # (1 - 3)^2 + 4 + 9 - 2 sqrt(4 * 9) = 4 + 1
    value = frechet_distance(
        torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[9.0]])
    )
    assert value == pytest.approx(5.0)


def test_diagonal_covariances_closed_form():
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = 1 + 4 + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(
        float(expected)
    )


def test_non_commuting_covariances_closed_form():
    # tr sqrt(M) for a 2x2 M with non-negative eigenvalues is sqrt(tr M + 2 sqrt(det M));
    # S1 S2 = [[2, 4], [1, 8]]: trace 10, determinant 12
    s1 = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    s2 = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    expected = 4 + 5 - 2 * math.sqrt(10 + 2 * math.sqrt(12))
    assert frechet_distance(torch.zeros(2), s1, torch.zeros(2), s2) == pytest.approx(expected)
    assert frechet_distance(np.zeros(2), s2.numpy(), np.zeros(2), s1.numpy()) == pytest.approx(
        expected
    )


def test_sqrtm_psd_squares_back_and_tolerates_rounding():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    m = x @ x.T  # rank 3: half the eigenvalues are rounding noise around 0
    root = sqrtm_psd(m)
    assert torch.allclose(root @ root, m, atol=1e-10)
    assert torch.allclose(root, root.T)


def test_identical_sets_give_zero_and_shifts_give_their_square():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(200, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    assert fid_from_features(a, a.clone()) == pytest.approx(0.0, abs=1e-8)
    shift = torch.linspace(-1, 1, 16)
    assert fid_from_features(a, a + shift) == pytest.approx(float(shift.double().pow(2).sum()))


def test_fewer_samples_than_dimensions_and_symmetry():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 20, generator=gen), torch.randn(7, 20, generator=gen) + 0.5
    ab, ba = fid_from_features(a, b), fid_from_features(b, a)
    assert math.isfinite(ab)
    assert ab > 0
    assert ab == pytest.approx(ba, rel=1e-9)


def test_statistics_match_numpy():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(50, 4, generator=gen)
    mu, sigma = feature_statistics(x)
    assert np.allclose(mu.numpy(), x.double().numpy().mean(0))
    assert np.allclose(sigma.numpy(), np.cov(x.double().numpy(), rowvar=False))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(EmorigError, match="sigma1"):
        frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(EmorigError, match="at least 2"):
        feature_statistics(torch.zeros(1, 3))
    with pytest.raises(EmorigError, match="NaN"):
        feature_statistics(torch.tensor([[0.0], [math.nan]]))


class _Features(nn.Module):
    """Per-channel mean and the image height: (B, 3, H, W) -> (B, 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = torch.full_like(x[:, :1, 0, 0], float(x.shape[-2]))
        return torch.cat([x.mean((2, 3)), height], 1)


def test_extract_features_batches_resizes_and_loads_files(tmp_path):
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(7, 3, 16, 16, generator=gen)
    net = _Features()
    feats = extract_features(net, images, batch_size=3)
    assert feats.shape == (7, 4)
    assert feats.dtype == torch.float64
    assert torch.allclose(feats, net(images).double())
    resized = extract_features(net, [images[:4], images[4:]], batch_size=2, size=8)
    assert resized[:, 3].tolist() == [8.0] * 7
    path = tmp_path / "features.pt"
    # TorchScript is deprecated but still loads (.pt2 is preferred)
    with pytest.warns(DeprecationWarning, match="torch.jit.script"):
        torch.jit.script(net).save(str(path))
    assert torch.allclose(extract_features(str(path), images), feats)
    assert fid_from_images(path, images, images.clone(), batch_size=4) == pytest.approx(
        0.0, abs=1e-8
    )
    with pytest.raises(EmorigError, match="not found"):
        extract_features(tmp_path / "missing.pt", images)

import numpy as np
import pytest
import torch

from emorig.flame.albedo import AlbedoModel
from emorig.flame.data import AlbedoSpaceData


def space(size=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return AlbedoSpaceData(
        rng.random((size, size, 3)).astype(np.float32),
        rng.normal(size=(size, size, 3, k)).astype(np.float32) * 0.1,
        "BFM",
    )


def test_linear_model_and_channel_layout():
    s = space()
    m = AlbedoModel(s, output_size=8)
    code = torch.tensor([[1.0, -2.0, 0.5]])
    tex = m(code)[0].permute(1, 2, 0).numpy()
    expected = s.mean + s.basis @ np.array([1.0, -2.0, 0.5], dtype=np.float32)
    assert np.allclose(tex, expected, atol=1e-6)


def test_resize_is_decas_nearest_subsampling():
    s = space(size=8)
    tex = AlbedoModel(s, output_size=4)(torch.zeros(1, 3))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(tex, s.mean[::2, ::2])


def test_short_codes_use_leading_components_and_long_codes_are_refused():
    s = space(k=3)
    m = AlbedoModel(s, n_components=2, output_size=8)
    a = m(torch.tensor([[0.7]]))
    b = m(torch.tensor([[0.7, 0.0]]))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="T <= 2"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="has 3"):
        AlbedoModel(s, n_components=4)

"""Albedo-space readers: FLAME texture space, BFM albedo, our npz."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from emorig.errors import AssetError
from emorig.flame.data import AlbedoSpaceData
from emorig.io import albedo_files
from emorig.io.albedo_files import read_albedo_space, write_albedo_npz
from fixtures_official import write_bfm_albedo_npz, write_flame_texture_npz


def _flame_expected(arrays, k):
    mean = arrays["mean"][:, :, ::-1] / np.float32(255)
    basis = arrays["tex_dir"][:, :, ::-1, :k] / np.float32(255)
    return mean, basis


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("k", [None, 0, 2, 6])
def test_flame_texture(tmp_path, compressed, k):
    path = tmp_path / "FLAME_texture.npz"
    arrays = write_flame_texture_npz(path, size=8, n_components=6, compressed=compressed)
    albedo = read_albedo_space(path, n_components=k)
    mean, basis = _flame_expected(arrays, 6 if k is None else k)
    assert albedo.kind == "FLAME"
    assert albedo.mean.dtype == albedo.basis.dtype == np.float32
    assert albedo.mean.shape == (8, 8, 3)
    assert albedo.basis.shape == (8, 8, 3, basis.shape[-1])
    np.testing.assert_array_equal(albedo.mean, mean)
    np.testing.assert_array_equal(albedo.basis, basis)
    assert albedo.mean.flags.c_contiguous
    assert albedo.basis.flags.c_contiguous


def test_channel_order_is_flipped_to_rgb(tmp_path):
    path = tmp_path / "FLAME_texture.npz"
    mean = np.zeros((2, 2, 3), np.float32)
    mean[..., 0] = 255  # blue in DECA's stored BGR order
    np.savez(path, mean=mean, tex_dir=np.zeros((2, 2, 3, 1), np.float32))
    albedo = read_albedo_space(path)
    assert albedo.mean[0, 0].tolist() == [0.0, 0.0, 1.0]


def test_small_chunks_give_the_same_result(tmp_path, monkeypatch):
    path = tmp_path / "FLAME_texture.npz"
    arrays = write_flame_texture_npz(path, size=8, n_components=6)
    monkeypatch.setattr(albedo_files, "_CHUNK_BYTES", 50)  # a couple of rows per chunk
    albedo = read_albedo_space(path, n_components=3)
    mean, basis = _flame_expected(arrays, 3)
    np.testing.assert_array_equal(albedo.mean, mean)
    np.testing.assert_array_equal(albedo.basis, basis)


@pytest.mark.parametrize("k", [2, 6])
def test_fortran_ordered_members(tmp_path, k):
    rng = np.random.default_rng(0)
    arrays = {
        "mean": np.asfortranarray(rng.random((4, 4, 3)).astype(np.float32) * 255),
        "tex_dir": np.asfortranarray(rng.random((4, 4, 3, 6)).astype(np.float32)),
    }
    path = tmp_path / "FLAME_texture.npz"
    np.savez(path, **arrays)
    with np.load(path) as npz:
        assert np.isfortran(npz["tex_dir"])
    albedo = read_albedo_space(path, n_components=k)
    mean, basis = _flame_expected(arrays, k)
    np.testing.assert_array_equal(albedo.mean, mean)
    np.testing.assert_array_equal(albedo.basis, basis)


@pytest.mark.parametrize("k", [None, 3])
def test_bfm_albedo(tmp_path, k):
    path = tmp_path / "FLAME_albedo_from_BFM.npz"
    arrays = write_bfm_albedo_npz(path, size=8, n_components=5)
    albedo = read_albedo_space(path, n_components=k)
    kk = 5 if k is None else k
    assert albedo.kind == "BFM"
    assert albedo.basis.shape == (8, 8, 3, kk)
    mean = arrays["MU"].reshape(8, 8, 3)[:, :, ::-1].astype(np.float32)
    basis = arrays["PC"].reshape(8, 8, 3, 5)[:, :, ::-1, :kk].astype(np.float32)
    np.testing.assert_array_equal(albedo.mean, mean)
    np.testing.assert_array_equal(albedo.basis, basis)


def test_builtin_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    albedo = AlbedoSpaceData(
        mean=rng.random((4, 6, 3)).astype(np.float32),
        basis=rng.normal(size=(4, 6, 3, 5)).astype(np.float32),
        kind="builtin",
    )
    path = tmp_path / "albedo.npz"
    write_albedo_npz(albedo, path)
    back = read_albedo_space(path)
    assert back.kind == "builtin"
    np.testing.assert_array_equal(back.mean, albedo.mean)
    np.testing.assert_array_equal(back.basis, albedo.basis)
    np.testing.assert_array_equal(
        read_albedo_space(path, n_components=2).basis, albedo.basis[..., :2]
    )


def test_too_many_components(tmp_path):
    path = tmp_path / "FLAME_texture.npz"
    write_flame_texture_npz(path, n_components=6)
    with pytest.raises(AssetError, match="asked for 7 albedo components, the file has 6"):
        read_albedo_space(path, n_components=7)


def test_unknown_layout_lists_keys(tmp_path):
    path = tmp_path / "FLAME_texture.npz"
    np.savez(path, foo=np.zeros(3))
    with pytest.raises(AssetError, match=r"is not an albedo space.*found \['foo'\]") as err:
        read_albedo_space(path)
    assert "FLAME texture space" in str(err.value)


def test_wrong_shapes(tmp_path):
    path = tmp_path / "FLAME_texture.npz"
    np.savez(path, mean=np.zeros((4, 4, 3)), tex_dir=np.zeros((4, 5, 3, 2)))
    with pytest.raises(AssetError, match=r"'tex_dir' has shape \(4, 5, 3, 2\)"):
        read_albedo_space(path)
    bfm = tmp_path / "FLAME_albedo_from_BFM.npz"
    np.savez(bfm, MU=np.zeros((1, 48)), PC=np.zeros((47, 2)))
    with pytest.raises(AssetError, match="do not describe the same"):
        read_albedo_space(bfm)


def test_truncated_member(tmp_path):
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (4, 4, 3, 2)}
    )
    buf.write(np.zeros(10, np.float32).tobytes())  # far fewer than 96 values
    path = tmp_path / "FLAME_texture.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("mean.npy", "w") as f:
            np.save(f, np.zeros((4, 4, 3), np.float32))
        zf.writestr("tex_dir.npy", buf.getvalue())
    with pytest.raises(AssetError, match="'tex_dir' is truncated"):
        read_albedo_space(path)


def test_missing_and_not_npz(tmp_path):
    with pytest.raises(AssetError, match=r"FLAME_texture\.npz: not found"):
        read_albedo_space(tmp_path / "FLAME_texture.npz")
    bad = tmp_path / "FLAME_albedo_from_BFM.npz"
    bad.write_text("not a zip")
    with pytest.raises(AssetError, match=r"not a readable \.npz") as err:
        read_albedo_space(bad)
    assert "BFM_to_FLAME" in str(err.value)

"""FLAME model, DECA landmark embedding and MediaPipe embedding readers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from emorig.errors import AssetError
from emorig.flame.data import FlameData
from emorig.io.flame_files import (
    flame_name_for,
    read_flame,
    read_landmark_embedding,
    read_mediapipe_embedding,
    write_flame_npz,
    write_landmark_embedding_npz,
)
from fixtures_official import (
    N_EXPR,
    N_SHAPE,
    chumpy_expression,
    write_flame2020_pkl,
    write_flame2023_pkl,
    write_landmark_embedding_npy,
    write_mediapipe_npz,
)

REAL_LANDMARKS = Path("/work/shared/upstream-data/deca/landmark_embedding.npy")
FLAME_SITE = "flame.is.tue.mpg.de"


def _assert_flame_matches(flame: FlameData, arrays: dict, dtype=np.float32) -> None:
    assert flame.v_template.dtype == dtype
    assert flame.shapedirs.dtype == dtype
    assert flame.faces.dtype == np.int64
    assert flame.parents.dtype == np.int64
    np.testing.assert_array_equal(flame.faces, arrays["f"].astype(np.int64))
    np.testing.assert_array_equal(flame.v_template, arrays["v_template"].astype(dtype))
    np.testing.assert_array_equal(
        flame.shapedirs, arrays["shapedirs"][:, :, :N_SHAPE].astype(dtype)
    )
    np.testing.assert_array_equal(flame.exprdirs, arrays["shapedirs"][:, :, N_SHAPE:].astype(dtype))
    np.testing.assert_array_equal(flame.posedirs, arrays["posedirs"].astype(dtype))
    np.testing.assert_array_equal(flame.j_regressor, arrays["J_regressor"].astype(dtype))
    np.testing.assert_array_equal(flame.weights, arrays["weights"].astype(dtype))
    assert flame.parents.tolist() == [-1, 0, 1, 1, 1]
    assert not flame.synthetic


# ---------------------------------------------------------------------------------------------
# FLAME pickles.


def test_flame2020_pickle(tmp_path):
    path = tmp_path / "generic_model.pkl"
    arrays = write_flame2020_pkl(path, n_vertices=12, n_faces=20)
    flame = read_flame(path)
    assert flame.name == "FLAME 2020"
    assert flame.shapedirs.shape == (12, 3, N_SHAPE)
    assert flame.exprdirs.shape == (12, 3, N_EXPR)
    assert flame.posedirs.shape == (12, 3, 36)
    assert flame.j_regressor.shape == (5, 12)
    _assert_flame_matches(flame, arrays)


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_flame2020_any_python2_protocol(tmp_path, protocol):
    path = tmp_path / "generic_model.pkl"
    arrays = write_flame2020_pkl(path, protocol=protocol)
    if protocol < 2:
        assert b"copy_reg\n_reconstructor" in path.read_bytes()
    _assert_flame_matches(read_flame(path), arrays)


def test_flame2020_float64_is_exact(tmp_path):
    import scipy.sparse

    path = tmp_path / "generic_model.pkl"
    arrays = write_flame2020_pkl(path)
    flame = read_flame(path, dtype=np.float64)
    _assert_flame_matches(flame, arrays, dtype=np.float64)
    np.testing.assert_array_equal(
        flame.j_regressor, scipy.sparse.csc_matrix(arrays["J_regressor"]).toarray()
    )


@pytest.mark.parametrize(
    ("filename", "name"),
    [
        ("flame2023.pkl", "FLAME 2023"),
        ("flame2023_no_jaw.pkl", "FLAME 2023"),
        ("flame2023_Open.pkl", "FLAME 2023 Open"),
        ("my_head.pkl", "my_head"),
    ],
)
def test_flame2023_plain_arrays(tmp_path, filename, name):
    path = tmp_path / filename
    arrays = write_flame2023_pkl(path)
    flame = read_flame(path)
    assert flame.name == name == flame_name_for(path)
    _assert_flame_matches(flame, arrays)


def test_flame2023_sparse_csr_regressor(tmp_path):
    path = tmp_path / "flame2023.pkl"
    arrays = write_flame2023_pkl(path, sparse_regressor=True)
    _assert_flame_matches(read_flame(path), arrays)


def test_other_component_counts_need_n_shape(tmp_path):
    path = tmp_path / "custom.pkl"
    write_flame2023_pkl(path, n_components=60)
    with pytest.raises(AssetError, match=r"60 components.*pass n_shape"):
        read_flame(path)
    flame = read_flame(path, n_shape=50)
    assert flame.shapedirs.shape[2] == 50
    assert flame.exprdirs.shape[2] == 10


def test_unused_chumpy_expression_is_ignored_but_needed_one_fails(tmp_path):
    ok = tmp_path / "generic_model.pkl"
    write_flame2020_pkl(ok, extra={"J": chumpy_expression(np.zeros((5, 3)))})
    assert read_flame(ok).name == "FLAME 2020"
    bad = tmp_path / "flame2023.pkl"
    write_flame2020_pkl(bad, extra={"weights": chumpy_expression(np.zeros((10, 5)))})
    with pytest.raises(AssetError, match=r"'weights' is a chumpy\.reordering\.Select object"):
        read_flame(bad)


def test_missing_keys_are_listed(tmp_path):
    path = tmp_path / "generic_model.pkl"
    write_flame2023_pkl(path, drop=("weights", "kintree_table"))
    with pytest.raises(AssetError) as err:
        read_flame(path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys ['weights', 'kintree_table']" in message
    assert FLAME_SITE in message
    assert "FLAME 2020" in message


def test_wrong_shape(tmp_path):
    path = tmp_path / "flame2023.pkl"
    write_flame2023_pkl(path, replace={"posedirs": np.zeros((10, 3, 35))})
    with pytest.raises(AssetError, match=r"posedirs have shape \(10, 3, 35\)") as err:
        read_flame(path)
    assert "FLAME 2023'" in str(err.value)


def test_wrong_template_shape(tmp_path):
    path = tmp_path / "flame2023.pkl"
    write_flame2023_pkl(path, replace={"v_template": np.zeros((10, 2))})
    with pytest.raises(AssetError, match=r"'v_template' has shape \(10, 2\), expected \(V, 3\)"):
        read_flame(path)


def test_not_a_dict(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(AssetError, match="is not a FLAME model"):
        read_flame(path)


def test_missing_file_names_it_and_where_to_get_it(tmp_path):
    path = tmp_path / "generic_model.pkl"
    with pytest.raises(AssetError) as err:
        read_flame(path)
    assert str(err.value).startswith(f"{path}: not found (obtain it from https://{FLAME_SITE}")


def test_text_file_renamed_pkl(tmp_path):
    path = tmp_path / "flame2023_Open.pkl"
    path.write_text("FLAME 2023 Open\nThis is a README, not the model.\n")
    with pytest.raises(AssetError, match="not a readable pickle") as err:
        read_flame(path)
    assert str(path) in str(err.value)
    assert "FLAME 2023 Open" in str(err.value)


def test_truncated_pickle(tmp_path):
    path = tmp_path / "generic_model.pkl"
    write_flame2020_pkl(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(AssetError, match="not a readable pickle"):
        read_flame(path)


def test_forbidden_global_in_model(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00fcos\nsystem\nX\x04\x00\x00\x00true\x85Rs.")
    with pytest.raises(AssetError, match=r"refused.*os\.system"):
        read_flame(path)


def test_convert_round_trip(tmp_path):
    pkl = tmp_path / "generic_model.pkl"
    write_flame2020_pkl(pkl)
    original = read_flame(pkl)
    npz = tmp_path / "flame2020.npz"
    write_flame_npz(original, npz)
    with np.load(npz, allow_pickle=False) as archive:
        assert str(archive["format"]) == "emorig-flame/1"
        assert str(archive["name"]) == "FLAME 2020"
        assert not bool(archive["synthetic"])
    again = read_flame(npz)
    assert again.name == original.name
    assert again.synthetic == original.synthetic
    for field in (
        "v_template",
        "faces",
        "shapedirs",
        "exprdirs",
        "posedirs",
        "j_regressor",
        "weights",
        "parents",
    ):
        a, b = getattr(original, field), getattr(again, field)
        assert a.dtype == b.dtype, field
        np.testing.assert_array_equal(a, b)


def test_npz_keeps_synthetic_flag_and_float64(tmp_path):
    flame = read_flame(write_and_path(tmp_path), dtype=np.float64)
    synthetic = FlameData(**{**flame.__dict__, "name": "built-in", "synthetic": True})
    write_flame_npz(synthetic, tmp_path / "b.npz")
    back = read_flame(tmp_path / "b.npz", dtype=None)
    assert back.synthetic
    assert back.name == "built-in"
    assert back.v_template.dtype == np.float64


def write_and_path(tmp_path: Path) -> Path:
    path = tmp_path / "generic_model.pkl"
    write_flame2020_pkl(path)
    return path


def test_npz_without_format_is_refused(tmp_path):
    path = tmp_path / "flame.npz"
    np.savez(path, v_template=np.zeros((3, 3)))
    with pytest.raises(AssetError, match="not an emorig FLAME file"):
        read_flame(path)


# ---------------------------------------------------------------------------------------------
# DECA landmark embedding.


def test_landmark_embedding_fixture(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    arrays = write_landmark_embedding_npy(path, n_faces=16)
    emb = read_landmark_embedding(path, n_faces=16)
    assert emb.static_faces.dtype == emb.dynamic_faces.dtype == emb.full_faces.dtype == np.int64
    assert emb.static_bary.dtype == emb.dynamic_bary.dtype == np.float32
    assert emb.full_faces.shape == (68,)
    assert emb.full_bary.shape == (68, 3)
    np.testing.assert_array_equal(emb.dynamic_faces, arrays["dynamic_lmk_faces_idx"])
    np.testing.assert_array_equal(emb.full_faces, arrays["full_lmk_faces_idx"][0])
    np.testing.assert_array_equal(
        emb.static_bary, arrays["static_lmk_bary_coords"].astype(np.float32)
    )

    exact = read_landmark_embedding(path, dtype=None)
    assert exact.static_bary.dtype == np.float64
    np.testing.assert_array_equal(exact.static_bary, arrays["static_lmk_bary_coords"])
    np.testing.assert_array_equal(exact.dynamic_bary, arrays["dynamic_lmk_bary_coords"])
    np.testing.assert_array_equal(exact.full_bary, arrays["full_lmk_bary_coords"][0])


def test_landmark_embedding_npz_round_trip(tmp_path):
    src = tmp_path / "landmark_embedding.npy"
    write_landmark_embedding_npy(src)
    emb = read_landmark_embedding(src, dtype=None)
    write_landmark_embedding_npz(emb, tmp_path / "lmk.npz")
    back = read_landmark_embedding(tmp_path / "lmk.npz", dtype=None)
    for field in (
        "static_faces",
        "static_bary",
        "dynamic_faces",
        "dynamic_bary",
        "full_faces",
        "full_bary",
    ):
        np.testing.assert_array_equal(getattr(emb, field), getattr(back, field))
        assert getattr(emb, field).dtype == getattr(back, field).dtype


def test_landmark_faces_checked_against_mesh(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    write_landmark_embedding_npy(path, n_faces=100)
    with pytest.raises(AssetError, match="outside the mesh's 10 faces"):
        read_landmark_embedding(path, n_faces=10)


def test_landmark_missing_key_and_wrong_shape(tmp_path):
    from fixtures_official import landmark_arrays

    arrays = landmark_arrays()
    path = tmp_path / "landmark_embedding.npy"
    np.save(
        path, {k: v for k, v in arrays.items() if k != "static_lmk_faces_idx"}, allow_pickle=True
    )
    with pytest.raises(AssetError, match=r"missing keys \['static_lmk_faces_idx'\]") as err:
        read_landmark_embedding(path)
    assert "DECA" in str(err.value)
    arrays["dynamic_lmk_faces_idx"] = arrays["dynamic_lmk_faces_idx"][:78]
    np.save(path, arrays, allow_pickle=True)
    with pytest.raises(AssetError, match=r"'dynamic_lmk_faces_idx' has shape \(78, 17\)"):
        read_landmark_embedding(path)


def test_landmark_not_a_dict(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, np.arange(3))
    with pytest.raises(AssetError, match="expected a dict"):
        read_landmark_embedding(path)


@pytest.mark.needs_upstream_data
def test_real_landmark_embedding():
    if not REAL_LANDMARKS.is_file():
        pytest.skip("upstream DECA data not available")
    import torch

    emb = read_landmark_embedding(REAL_LANDMARKS, dtype=None, n_faces=9976)
    assert emb.static_faces.shape == (51,)
    assert emb.static_faces.dtype == np.int64
    assert emb.static_bary.shape == (51, 3)
    assert emb.static_bary.dtype == np.float64
    assert emb.dynamic_faces.shape == (79, 17)
    assert emb.dynamic_faces.dtype == np.int64
    assert emb.dynamic_bary.shape == (79, 17, 3)
    assert emb.dynamic_bary.dtype == np.float32
    assert emb.full_faces.shape == (68,)
    assert emb.full_bary.shape == (68, 3)
    assert emb.full_bary.dtype == np.float32
    ref = np.load(REAL_LANDMARKS, allow_pickle=True, encoding="latin1")[()]
    assert isinstance(ref["dynamic_lmk_bary_coords"], torch.Tensor)
    np.testing.assert_array_equal(emb.dynamic_faces, ref["dynamic_lmk_faces_idx"].numpy())
    np.testing.assert_array_equal(emb.dynamic_bary, ref["dynamic_lmk_bary_coords"].numpy())
    np.testing.assert_array_equal(emb.static_bary, ref["static_lmk_bary_coords"])
    np.testing.assert_array_equal(emb.full_faces, ref["full_lmk_faces_idx"][0])
    np.testing.assert_allclose(emb.dynamic_bary.sum(-1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# MediaPipe embedding.


def test_mediapipe_embedding(tmp_path):
    path = tmp_path / "mediapipe_landmark_embedding.npz"
    arrays = write_mediapipe_npz(path, n_faces=16)
    emb = read_mediapipe_embedding(path, n_faces=16)
    assert emb.faces.shape == (105,)
    assert emb.faces.dtype == np.int64
    assert emb.bary.shape == (105, 3)
    assert emb.bary.dtype == np.float32
    np.testing.assert_array_equal(emb.mediapipe_index, arrays["landmark_indices"])
    np.testing.assert_array_equal(emb.faces, arrays["lmk_face_idx"])
    exact = read_mediapipe_embedding(path, dtype=None)
    np.testing.assert_array_equal(exact.bary, arrays["lmk_b_coords"])


def test_mediapipe_missing_key_and_shape(tmp_path):
    path = tmp_path / "mediapipe_landmark_embedding.npz"
    np.savez(path, lmk_face_idx=np.zeros(105, dtype=np.int64), lmk_b_coords=np.zeros((105, 3)))
    with pytest.raises(AssetError, match=r"missing keys \['landmark_indices'\]") as err:
        read_mediapipe_embedding(path)
    assert "Mediapipe" in str(err.value)
    np.savez(
        path,
        lmk_face_idx=np.zeros(105, dtype=np.int64),
        lmk_b_coords=np.zeros((105, 2)),
        landmark_indices=np.zeros(105, dtype=np.int64),
    )
    with pytest.raises(AssetError, match=r"'lmk_b_coords' has shape \(105, 2\)"):
        read_mediapipe_embedding(path)


def test_mediapipe_not_npz(tmp_path):
    path = tmp_path / "mediapipe_landmark_embedding.npz"
    path.write_text("nope")
    with pytest.raises(AssetError, match=r"not a readable \.npz"):
        read_mediapipe_embedding(path)
    with pytest.raises(AssetError, match="not found"):
        read_mediapipe_embedding(tmp_path / "missing.npz")

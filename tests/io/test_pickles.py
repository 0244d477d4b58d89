"""The restricted unpickler: accepted data types, stand-ins, refusals, npy payloads."""

from __future__ import annotations

import pickle
import pickletools
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from emorig.errors import AssetError
from emorig.io.pickles import UnresolvedObject, load_npy_object, load_pickle, scan_pickle
from fixtures_official import (
    chumpy_expression,
    landmark_arrays,
    legacy_dumps,
    to_python2_opcodes,
    write_flame2020_pkl,
    write_landmark_embedding_npy,
)

REAL_LANDMARKS = Path("/work/shared/upstream-data/deca/landmark_embedding.npy")


def _globals(data: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def _npy_payload(path: Path) -> bytes:
    from numpy.lib import format as npy_format

    with open(path, "rb") as f:
        npy_format.read_magic(f)
        npy_format.read_array_header_1_0(f)
        return f.read()


# ---------------------------------------------------------------------------------------------
# Accepted content.


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_numpy_content_round_trips(protocol):
    obj = {
        "f64": np.arange(6, dtype=np.float64).reshape(2, 3),
        "u32": np.array([1, 2, 4294967295], dtype=np.uint32),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalar": np.float32(1.5),
        "ordered": OrderedDict(a=1),
        "set": {"x"},
        "text": "lbs",
        "nested": [np.zeros(2), (np.ones(1),)],
    }
    out = load_pickle(pickle.dumps(obj, protocol=protocol))
    for key in ("f64", "u32", "fortran"):
        assert out[key].dtype == obj[key].dtype
        np.testing.assert_array_equal(out[key], obj[key])
    assert out["scalar"] == np.float32(1.5)
    assert out["scalar"].dtype == np.float32
    assert out["ordered"] == OrderedDict(a=1)
    assert out["set"] == {"x"}
    assert out["text"] == "lbs"
    np.testing.assert_array_equal(out["nested"][1][0], np.ones(1))


def test_numpy_core_legacy_path_and_python2_strings():
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    data = to_python2_opcodes(legacy_dumps({"a": arr}, protocol=2))
    assert "numpy.core.multiarray _reconstruct" in _globals(data)
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert "BINUNICODE" not in ops
    assert "BINSTRING" in ops or "SHORT_BINSTRING" in ops
    out = load_pickle(data)
    np.testing.assert_array_equal(out["a"], arr)


def test_reads_from_path(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"a": np.arange(3)}, protocol=2))
    np.testing.assert_array_equal(load_pickle(path)["a"], np.arange(3))
    np.testing.assert_array_equal(load_pickle(str(path))["a"], np.arange(3))


def test_chumpy_objects_become_arrays(tmp_path):
    arrays = write_flame2020_pkl(tmp_path / "generic_model.pkl")
    model = load_pickle(tmp_path / "generic_model.pkl")
    for key in ("v_template", "shapedirs", "posedirs", "J"):
        assert type(model[key]) is np.ndarray
        assert model[key].dtype == np.float64
        np.testing.assert_array_equal(model[key], arrays[key])
    assert model["bs_style"] == "lbs"
    assert model["bs_type"] == "lrotmin"


def test_chumpy_expression_without_array_is_left_unresolved():
    data = to_python2_opcodes(legacy_dumps({"ok": 1, "expr": chumpy_expression([1.0])}))
    out = load_pickle(data)
    assert isinstance(out["expr"], UnresolvedObject)
    assert out["expr"].origin == "chumpy.reordering.Select"


def _sparse_cases():
    dense = np.array([[0.0, 1.5, 0.0, 0.0], [2.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 4.0]])
    yield "csc_matrix", scipy.sparse.csc_matrix(dense), dense
    yield "csr_matrix", scipy.sparse.csr_matrix(dense), dense
    yield "coo_matrix", scipy.sparse.coo_matrix(dense), dense
    yield "csc_array", scipy.sparse.csc_array(dense), dense
    yield "csr_array", scipy.sparse.csr_array(dense), dense
    dup = scipy.sparse.coo_matrix(([1.0, 2.0, 5.0], ([0, 0, 2], [1, 1, 3])), shape=(3, 4))
    yield "coo_duplicates", dup, dup.toarray()


@pytest.mark.parametrize(
    ("name", "matrix", "dense"), list(_sparse_cases()), ids=[c[0] for c in _sparse_cases()]
)
@pytest.mark.parametrize("protocol", [2, 4])
def test_scipy_sparse_densified_without_scipy(name, matrix, dense, protocol):
    data = pickle.dumps({"J_regressor": matrix}, protocol=protocol)
    out = load_pickle(data)["J_regressor"]
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, matrix.toarray())
    np.testing.assert_array_equal(out, dense)


def test_scipy_sparse_legacy_module_path_and_shape_key():
    matrix = scipy.sparse.csc_matrix(np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]))
    data = to_python2_opcodes(
        legacy_dumps({"m": matrix}), renames={"scipy.sparse._csc": "scipy.sparse.csc"}
    )
    assert "scipy.sparse.csc csc_matrix" in _globals(data)
    old = data.replace(b"U\x06_shape", b"U\x05shape")  # scipy < 0.14 kept `shape`
    assert old != data
    for payload in (data, old):
        np.testing.assert_array_equal(load_pickle(payload)["m"], matrix.toarray())


def test_torch_tensors_rebuilt_and_converted():
    tensors = {
        "long": torch.arange(12).reshape(3, 4),
        "float": torch.rand(2, 3, 3),
        "view": torch.arange(20.0).reshape(4, 5)[1:, ::2],
    }
    data = pickle.dumps(tensors, protocol=3)
    assert "torch.storage _load_from_bytes" in _globals(data)
    out = load_pickle(data)
    for key, ref in tensors.items():
        assert isinstance(out[key], torch.Tensor)
        assert out[key].dtype == ref.dtype
        assert torch.equal(out[key], ref)
    as_numpy = load_pickle(data, to_numpy=True)
    assert as_numpy["long"].dtype == np.int64
    assert as_numpy["float"].dtype == np.float32
    np.testing.assert_array_equal(as_numpy["view"], tensors["view"].numpy())


# ---------------------------------------------------------------------------------------------
# Refusals and corrupt input.


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_os_system_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps({"x": _Evil(f"touch {marker}")}, protocol=2)
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(data)
    with pytest.raises(AssetError, match=r"refused.*(os|posix)\.system") as err:
        load_pickle(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "ref",
    [
        b"builtins\neval",
        b"__builtin__\ngetattr",
        b"subprocess\nPopen",
        b"numpy\nload",
        b"scipy.sparse\nlil_matrix",
        b"torch\nload",
    ],
)
def test_other_globals_are_refused(ref):
    data = b"\x80\x02c" + ref + b"\n)R."
    module, name = ref.decode().split("\n")
    with pytest.raises(AssetError, match=rf"refused.*{module}\.{name}"):
        load_pickle(data, name="x.pkl")


def test_codecs_encode_only_for_latin1():
    ok = pickle.dumps(b"\x00\xff", protocol=2)  # Python 3 writes bytes via _codecs.encode
    assert load_pickle(ok) == b"\x00\xff"
    bad = ok.replace(b"latin1", b"rot_13")
    with pytest.raises(AssetError, match="not a readable pickle"):
        load_pickle(bad)


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_larger_than_its_storage_is_refused():
    from torch._utils import _rebuild_tensor_v2

    class Oversized:
        def __reduce__(self):
            storage = torch.arange(4, dtype=torch.float32).storage()
            return _rebuild_tensor_v2, (storage, 0, (1000,), (1,), False, OrderedDict())

    with pytest.raises(AssetError, match="does not fit its storage"):
        load_pickle(pickle.dumps(Oversized(), protocol=2))


def test_missing_file(tmp_path):
    with pytest.raises(AssetError, match="not found") as err:
        load_pickle(tmp_path / "nope.pkl")
    assert "nope.pkl" in str(err.value)


def test_truncated_pickle(tmp_path):
    data = pickle.dumps({"a": np.arange(100.0)}, protocol=2)
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetError, match=r"cut\.pkl: not a readable pickle"):
        load_pickle(path)


def test_text_file_is_not_a_pickle(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_text("<html>Please log in to download FLAME</html>\n")
    with pytest.raises(AssetError, match="not a readable pickle") as err:
        load_pickle(path, obtain="the FLAME website")
    assert str(path) in str(err.value)
    assert "obtain it from the FLAME website" in str(err.value)


# ---------------------------------------------------------------------------------------------
# npy files holding pickles.


def test_load_npy_object_fixture(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    arrays = write_landmark_embedding_npy(path)
    data = load_npy_object(path)
    assert isinstance(data, dict)
    assert set(data) == set(arrays)
    for key, ref in arrays.items():
        assert type(data[key]) is np.ndarray, key
        assert data[key].dtype == ref.dtype
        assert data[key].shape == ref.shape
        np.testing.assert_array_equal(data[key], ref)


def test_load_npy_object_plain_array(tmp_path):
    path = tmp_path / "disp.npy"
    np.save(path, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(load_npy_object(path), np.arange(6.0).reshape(2, 3))


def test_load_npy_object_modern_np_save(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, {"a": np.arange(3), "t": torch.ones(2)}, allow_pickle=True)
    data = load_npy_object(path)
    np.testing.assert_array_equal(data["a"], np.arange(3))
    np.testing.assert_array_equal(data["t"], np.ones(2, dtype=np.float32))


def test_load_npy_object_refuses_code(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_Evil("true")], dtype=object), allow_pickle=True)
    with pytest.raises(AssetError, match="refused"):
        load_npy_object(path)


def test_load_npy_object_not_npy(tmp_path):
    path = tmp_path / "landmark_embedding.npy"
    path.write_text("not numpy")
    with pytest.raises(AssetError, match=r"landmark_embedding\.npy: not a numpy \.npy file"):
        load_npy_object(path)


def test_scan_pickle_lists_keys_and_globals(tmp_path):
    write_flame2020_pkl(tmp_path / "generic_model.pkl")
    summary = scan_pickle(tmp_path / "generic_model.pkl")
    assert {"f", "v_template", "shapedirs", "J_regressor", "kintree_table"} <= summary.strings
    assert "chumpy.ch.Ch" in summary.globals
    assert "scipy.sparse.csc.csc_matrix" in summary.globals
    assert summary.forbidden == ()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([_Evil("true")], protocol=4))
    assert any(g.endswith(".system") for g in scan_pickle(evil).forbidden)


# ---------------------------------------------------------------------------------------------
# The real DECA file.


@pytest.mark.needs_upstream_data
def test_fixture_reproduces_real_landmark_file_structure(tmp_path):
    if not REAL_LANDMARKS.is_file():
        pytest.skip("upstream DECA data not available")
    fixture = tmp_path / "landmark_embedding.npy"
    write_landmark_embedding_npy(fixture)
    real_ops = {op.name for op, _, _ in pickletools.genops(_npy_payload(REAL_LANDMARKS))}
    fake_ops = {op.name for op, _, _ in pickletools.genops(_npy_payload(fixture))}
    assert _globals(_npy_payload(fixture)) == _globals(_npy_payload(REAL_LANDMARKS))
    assert "torch.storage _load_from_bytes" in _globals(_npy_payload(REAL_LANDMARKS))
    assert real_ops == fake_ops


@pytest.mark.needs_upstream_data
def test_real_landmark_file_matches_unrestricted_load():
    if not REAL_LANDMARKS.is_file():
        pytest.skip("upstream DECA data not available")
    ours = load_npy_object(REAL_LANDMARKS)
    reference = np.load(REAL_LANDMARKS, allow_pickle=True, encoding="latin1")[()]
    assert set(ours) == set(reference) == set(landmark_arrays())
    assert isinstance(reference["dynamic_lmk_faces_idx"], torch.Tensor)
    for key, ref in reference.items():
        ref_np = ref.numpy() if isinstance(ref, torch.Tensor) else ref
        assert type(ours[key]) is np.ndarray
        assert ours[key].dtype == ref_np.dtype
        assert ours[key].shape == ref_np.shape
        np.testing.assert_array_equal(ours[key], ref_np)


def test_bytes_input_is_not_modified():
    data = bytearray(pickle.dumps({"a": np.arange(3)}))
    before = bytes(data)
    load_pickle(data)
    assert bytes(data) == before
    assert load_pickle(memoryview(before))["a"].tolist() == [0, 1, 2]

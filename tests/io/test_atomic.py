"""Atomic writes: all or nothing, no temp files left behind."""

from __future__ import annotations

import numpy as np
import pytest

from emorig.io.atomic import atomic_write, save_npz_atomic


def test_atomic_write_replaces_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with atomic_write(path, "w") as f:
        f.write("new\n")
        assert path.read_text() == "old"  # not visible until the block ends
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def write_then_fail() -> None:
        with atomic_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "ab"):
        pass


@pytest.mark.parametrize("compressed", [False, True])
def test_save_npz_atomic(tmp_path, compressed):
    path = tmp_path / "arrays"  # no suffix is appended
    save_npz_atomic(path, compressed=compressed, a=np.arange(3), name=np.array("x"))
    with np.load(path, allow_pickle=False) as npz:
        assert npz["a"].tolist() == [0, 1, 2]
        assert str(npz["name"]) == "x"


def test_save_npz_atomic_refuses_objects(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_npz_atomic(tmp_path / "x.npz", a=np.array([{}], dtype=object))
    assert not list(tmp_path.iterdir())

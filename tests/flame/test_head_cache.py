"""The built-in head's disk cache (emorig.flame.builtin.cache) and `emorig render` checking its
face specs before any head is built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import emorig.flame.builtin as builtin
from emorig.flame.builtin import cache
from emorig.flame.data import (
    AlbedoSpaceData,
    FlameData,
    HeadAssets,
    LandmarkEmbedding,
    UVLayout,
)


def assert_heads_equal(a, b, where: str = "head") -> None:
    """Same record types, same field values; arrays equal with the same dtype and shape."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_heads_equal(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype, where
        assert a.shape == b.shape, where
        assert np.array_equal(a, b), where
    else:
        assert type(a) is type(b), where
        assert a == b, (where, a, b)


def tiny_head(seed: int = 0) -> HeadAssets:
    """A small head with every kind of entry (records, strings, flags, notes, masks, Nones)."""
    rng = np.random.default_rng(seed)
    v, j = 6, 3
    flame = FlameData(
        v_template=rng.normal(size=(v, 3)).astype(np.float32),
        faces=np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]], dtype=np.int64),
        shapedirs=rng.normal(size=(v, 3, 4)).astype(np.float32),
        exprdirs=rng.normal(size=(v, 3, 2)).astype(np.float32),
        posedirs=rng.normal(size=(v, 3, 9 * (j - 1))).astype(np.float32),
        j_regressor=rng.random((j, v)).astype(np.float32),
        weights=np.full((v, j), 1 / j, dtype=np.float32),
        parents=np.array([-1, 0, 0], dtype=np.int64),
        name="tiny test head",
        synthetic=True,
    )
    landmarks = LandmarkEmbedding(
        static_faces=np.zeros(51, dtype=np.int64),
        static_bary=rng.random((51, 3)),
        dynamic_faces=np.ones((79, 17), dtype=np.int64),
        dynamic_bary=rng.random((79, 17, 3)).astype(np.float32),
        full_faces=np.arange(68, dtype=np.int64) % 3,
        full_bary=rng.random((68, 3)).astype(np.float32),
    )
    return HeadAssets(
        flame=flame,
        landmarks=landmarks,
        uv=UVLayout(rng.random((5, 2)).astype(np.float32), np.zeros((3, 3), dtype=np.int64)),
        albedo=AlbedoSpaceData(
            rng.random((4, 4, 3)).astype(np.float32),
            rng.random((4, 4, 3, 2)).astype(np.float32),
            "builtin",
        ),
        notes={"synthetic": "made for a test", "version": "7"},
        uv_face_eye_mask=rng.random((4, 4)).astype(np.float32),
        uv_face_mask=None,
    )


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """EMORIG_CACHE in tmp_path; the per-process cache cleared before and after."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("EMORIG_CACHE", str(folder))
    builtin.builtin_head.cache_clear()
    yield folder
    builtin.builtin_head.cache_clear()


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """Replace the builder with one that counts its calls and returns a tiny head."""
    calls: list[int] = []

    def build():
        calls.append(1)
        return tiny_head()

    monkeypatch.setattr(builtin, "build_builtin_head", build)
    return calls


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("builtin-head-*.npz"))


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMORIG_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_folder() == tmp_path / "a"
    monkeypatch.delenv("EMORIG_CACHE")
    assert cache.cache_folder() == tmp_path / "xdg" / "emorig"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_folder() == tmp_path / "home" / ".cache" / "emorig"


def test_the_key_covers_every_source_file_of_the_builder():
    names = {p.name for p in cache._source_files()}
    package = Path(builtin.__file__).parent
    assert {p.name for p in package.glob("*.py")} <= names
    assert "data.py" in names  # emorig/flame/data.py: the records and their validate
    key = cache.head_key()
    assert len(key) == 64
    assert key == cache.head_key()


def test_a_miss_builds_and_writes_then_a_hit_loads_without_building(cache_dir, builds):
    head = builtin.builtin_head()
    assert len(builds) == 1
    files = cache_files(cache_dir)
    assert files == [cache.cache_path()]
    assert cache.is_cached()
    builtin.builtin_head.cache_clear()  # as a new process would start
    again = builtin.builtin_head()
    assert len(builds) == 1
    assert again is not head
    assert_heads_equal(head, again)
    assert builtin.builtin_head() is again  # kept per process
    assert not list(cache_dir.glob(".*.tmp"))  # written atomically, nothing left over


def test_a_changed_source_rebuilds_and_drops_the_old_file(cache_dir, builds, monkeypatch):
    builtin.builtin_head()
    old = cache_files(cache_dir)
    builtin.builtin_head.cache_clear()
    monkeypatch.setattr(cache, "head_key", lambda: "f" * 64)
    builtin.builtin_head()
    assert len(builds) == 2
    new = cache_files(cache_dir)
    assert new == [cache_dir / f"builtin-head-{'f' * 20}.npz"]
    assert new != old


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign key", "folder"])
def test_a_damaged_or_foreign_cache_file_is_rebuilt_silently(cache_dir, builds, damage, capsys):
    builtin.builtin_head()
    builtin.builtin_head.cache_clear()
    path = cache.cache_path()
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        data = bytearray(path.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign key":
        cache.write_head(tiny_head(seed=1), path, "0" * 64)
    else:
        path.unlink()
        path.mkdir()
    head = builtin.builtin_head()
    assert len(builds) == 2
    assert_heads_equal(head, tiny_head())
    assert capsys.readouterr().err == ""
    if damage != "folder":  # replaced by a good file
        builtin.builtin_head.cache_clear()
        assert_heads_equal(builtin.builtin_head(), tiny_head())
        assert len(builds) == 2


def test_an_unwritable_cache_folder_builds_in_memory(tmp_path, monkeypatch, builds):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EMORIG_CACHE", str(blocker / "cache"))
    builtin.builtin_head.cache_clear()
    try:
        head = builtin.builtin_head()
    finally:
        builtin.builtin_head.cache_clear()
    assert len(builds) == 1
    assert_heads_equal(head, tiny_head())
    assert not cache.is_cached()


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), "disk full"])
def test_a_failing_write_builds_in_memory(cache_dir, builds, monkeypatch, error):
    from emorig.io.atomic import DiskFullError

    def refuse(*args, **kwargs):
        raise DiskFullError(cache_dir / "x") if error == "disk full" else error

    monkeypatch.setattr(cache, "write_head", refuse)
    head = builtin.builtin_head()
    assert len(builds) == 1
    assert_heads_equal(head, tiny_head())
    assert cache_files(cache_dir) == []


def test_emorig_cache_is_honoured_by_load_head(cache_dir, builds):
    from emorig.flame.heads import load_head

    load_head("builtin")
    assert [p.parent for p in cache_files(cache_dir)] == [cache_dir]


def test_a_loaded_builtin_head_equals_a_built_one(tmp_path):
    """The real head through the file format: every array, name and note identical."""
    built = builtin.build_builtin_head()
    path = tmp_path / "head.npz"
    cache.write_head(built, path, "k" * 64)
    assert_heads_equal(built, cache.read_head(path, "k" * 64))
    with pytest.raises(ValueError, match="not a built-in head cache"):
        cache.read_head(path, "j" * 64)


@pytest.mark.parametrize(
    ("face", "words"),
    [
        ("smiel", ["smiel", "smile", "frown"]),
        ("smile+jaw=x", ["'x'", "not a number"]),
        ("exp100", ["expression component 100"]),
        ("shape300=1", ["shape component 300"]),
    ],
)
def test_render_checks_face_specs_before_building_the_head(
    cache_dir, monkeypatch, capsys, tmp_path, face, words
):
    import emorig.flame.heads
    from emorig.cli.main import main

    def refuse(*args, **kwargs):
        raise AssertionError("the head was loaded before the face specs were checked")

    monkeypatch.setattr(builtin, "build_builtin_head", refuse)
    monkeypatch.setattr(cache, "load_or_build", refuse)
    monkeypatch.setattr(emorig.flame.heads, "load_head", refuse)
    status = main(["render", "--face", "smile", "--face", face, "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()

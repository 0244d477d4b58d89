"""A damaged shard (truncated by a full disk or a bad copy) is one line naming the file and the
fix, and re-running ``emorig prepare`` (or ``emorig synth --prepared``) re-makes it."""

from __future__ import annotations

import os

import pytest
import torch

from emorig.data.dataset import (
    MANIFEST_NAME,
    BufferDataset,
    DamagedShardError,
    damaged_shards,
    read_header,
    read_headers,
    shard_damage,
    shard_paths,
)
from emorig.data.prepare import PrepareConfig, merge, prepare
from emorig.errors import EmorigError
from emorig.faces.pipeline import image_files
from emorig.flame.builtin import builtin_head
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from prepare_helpers import OneProcess, QuickReconstructor, render_album

SYNTH = SynthDatasetConfig(count=6, size=32, seed=5)


def _truncate(path, keep: int | None = None) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2 if keep is None else keep)


@pytest.fixture
def synth_folder(tmp_path):
    manifest = write_prepared(SYNTH, tmp_path / "synth", batch_size=2, shard_size=2)
    return manifest.root


# ---------------------------------------------------------------------------------------------
# Finding damage cheaply


def test_whole_shards_pass_and_damage_is_described(synth_folder):
    shards = shard_paths(synth_folder)
    assert len(shards) == 3
    assert all(shard_damage(p) is None for p in shards)
    assert damaged_shards(synth_folder) == []

    _truncate(shards[0])
    assert "its header describes" in shard_damage(shards[0])
    with open(shards[1], "ab") as f:  # a longer file is not whole either
        f.write(b"\0" * 10)
    assert "its header describes" in shard_damage(shards[1])
    _truncate(shards[2], keep=20)  # inside the header
    assert "header alone claims" in shard_damage(shards[2])
    assert [p for p, _ in damaged_shards(synth_folder)] == shards
    _truncate(shards[2], keep=3)
    assert "too short" in shard_damage(shards[2])
    shards[2].write_bytes((8).to_bytes(8, "little") + b"not json")
    assert "not valid JSON" in shard_damage(shards[2])
    assert shard_damage(synth_folder / "nope.safetensors") == "missing"


def test_reading_a_damaged_shard_is_one_line(synth_folder):
    shard = shard_paths(synth_folder)[1]
    _truncate(shard)
    with pytest.raises(DamagedShardError) as info:
        read_header(shard)
    message = str(info.value)
    assert isinstance(info.value, EmorigError)
    assert message.startswith(f"{shard}: damaged shard (")
    assert "re-run emorig prepare on the same folder" in message
    assert "\n" not in message
    assert len(read_headers(synth_folder, skip_damaged=True)) == 2
    with pytest.raises(DamagedShardError):
        read_headers(synth_folder)
    with pytest.raises(DamagedShardError, match="re-run emorig prepare"):
        merge(synth_folder)


# ---------------------------------------------------------------------------------------------
# Synthetic folders: the dataset's error, then emorig synth --prepared repairs


def test_the_dataset_names_a_truncated_shard_and_synth_repairs_it(synth_folder):
    clean = [BufferDataset(synth_folder)[i]["image"] for i in range(6)]
    shard = shard_paths(synth_folder)[1]
    lost = read_header(shard).sources
    _truncate(shard)
    with pytest.raises(DamagedShardError) as info:
        BufferDataset(synth_folder)
    message = str(info.value)
    assert message.startswith(f"{shard}: damaged shard (")
    assert "re-run emorig synth --prepared with the same settings and folder" in message

    told: list[str] = []
    rendered: list[int] = []
    manifest = write_prepared(
        SYNTH,
        synth_folder,
        batch_size=2,
        shard_size=2,
        progress=lambda done, total: rendered.append(done),
        say=told.append,
    )
    assert rendered == [6]  # only the two faces of the damaged shard
    assert len(told) == 1
    assert shard.name in told[0]
    assert manifest.count == 6
    assert damaged_shards(synth_folder) == []
    data = BufferDataset(synth_folder)
    assert {data[i]["source"] for i in range(6)} >= set(lost)
    by_source = {data[i]["source"]: data[i]["image"] for i in range(6)}
    for i, image in enumerate(clean):
        torch.testing.assert_close(by_source[f"synthetic/{i:06d}"], image, atol=2 / 255, rtol=0)


def test_a_missing_shard_is_reported_the_same_way(synth_folder):
    shard_paths(synth_folder)[0].unlink()
    with pytest.raises(DamagedShardError, match=r"damaged shard \(missing\)"):
        BufferDataset(synth_folder)
    assert write_prepared(SYNTH, synth_folder, batch_size=2, shard_size=2).count == 6


# ---------------------------------------------------------------------------------------------
# Photo folders: emorig prepare repairs


@pytest.fixture(scope="module")
def head():
    return builtin_head()


@pytest.fixture(scope="module")
def album(head, tmp_path_factory):
    """Four renders of the built-in head and a broken file."""
    root = render_album(head, tmp_path_factory.mktemp("album"))
    (root / "img9.png").write_bytes(b"\x89PNG broken")
    return root


@pytest.mark.parametrize("keep", [None, 12])  # in the tensor data; inside the header
def test_prepare_remakes_a_damaged_shard(head, album, tmp_path, keep):
    files = image_files(album)
    config = PrepareConfig(size=64, shard_size=2, batch_size=1)
    rec = QuickReconstructor(head)
    first = prepare(files, album, tmp_path, rec, config, state=OneProcess())
    assert first.manifest.count == 4
    shard = shard_paths(tmp_path)[0]
    lost = read_header(shard).sources
    assert len(lost) == 2
    _truncate(shard, keep)

    with pytest.raises(DamagedShardError) as info:
        BufferDataset(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{shard}: damaged shard (")
    assert "re-run emorig prepare on the same folder" in message
    assert "\n" not in message

    told: list[str] = []
    rec.calls = 0
    again = prepare(files, album, tmp_path, rec, config, state=OneProcess(), say=told.append)
    assert rec.calls == 2  # the two photos of the damaged shard, nothing else
    assert again.report.already_done == 3  # two stored items and the broken file
    assert any(shard.name in line and "damaged" in line for line in told)
    assert again.manifest.count == 4
    assert {it.source for it in again.manifest.items} == {it.source for it in first.manifest.items}
    assert [s for s, _ in again.manifest.skipped] == ["img9.png"]
    assert damaged_shards(tmp_path) == []
    assert (tmp_path / MANIFEST_NAME).exists()
    data = BufferDataset(tmp_path)
    assert len(data) == 4
    for i in range(4):
        assert data[i]["image"].shape == (3, 64, 64)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

"""A full disk (ENOSPC) or quota (EDQUOT) is one line naming the file, leaves nothing partial,
and a rerun of ``emorig prepare`` / ``emorig synth --prepared`` continues."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emorig.cli.main import main
from emorig.data.dataset import MANIFEST_NAME, BufferDataset, read_header, shard_paths
from emorig.data.prepare import PrepareConfig, prepare
from emorig.errors import EmorigError
from emorig.faces.pipeline import image_files
from emorig.flame.builtin import builtin_head
from emorig.io import atomic
from emorig.io.atomic import DiskFullError, atomic_write, save_npz_atomic
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from prepare_helpers import OneProcess, QuickReconstructor, render_album


class _Filling:
    """A temporary file on a disk that fills up: writes fail with ``err`` part-way."""

    def __init__(self, handle, disk: FullDisk):
        self._handle, self._disk = handle, disk

    def write(self, data):
        if self._disk.failing:
            half = len(data) // 2
            self._handle.write(data[:half])
            raise OSError(self._disk.err, os.strerror(self._disk.err))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


class FullDisk:
    """Patches the temp-file opener of :func:`atomic_write`: the ``fail_on``-th file opened
    (1-based; and every later one) whose name contains ``match`` runs out of space half-way
    through its first write."""

    def __init__(self, monkeypatch, fail_on: int = 1, err: int = errno.ENOSPC, match: str = ""):
        self.opened, self.fail_on, self.err = 0, fail_on, err
        self.failing = False
        real = atomic._open_temp

        def open_temp(target, mode):
            tmp, handle = real(target, mode)
            if match in target.name:
                self.opened += 1
                self.failing = self.opened >= self.fail_on
            else:
                self.failing = False
            return tmp, _Filling(handle, self)

        monkeypatch.setattr(atomic, "_open_temp", open_temp)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# atomic_write itself


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    FullDisk(monkeypatch)
    with pytest.raises(DiskFullError) as info, atomic_write(path, size=3 << 20) as f:
        f.write(b"x" * 1000)
    message = str(info.value)
    assert isinstance(info.value, EmorigError)
    assert message.startswith(f"{path}: no space left on device")
    assert "needs at least 3.0 MB" in message
    assert "free in" in message
    assert "run the same command again" in message
    assert "\n" not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def _write_text(path: Path) -> None:
    with atomic_write(path, "w") as f:
        f.write("text")
        f.flush()


def test_a_full_quota_says_so(tmp_path, monkeypatch):
    FullDisk(monkeypatch, err=errno.EDQUOT)
    with pytest.raises(DiskFullError, match="disk quota exceeded"):
        _write_text(tmp_path / "a.txt")
    assert list(tmp_path.iterdir()) == []


def test_no_room_for_the_temporary_file_itself(tmp_path, monkeypatch):
    def no_inode(target, mode):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_open_temp", no_inode)
    with pytest.raises(DiskFullError, match=r"a\.txt: no space left on device"):
        _write_text(tmp_path / "a.txt")


def test_other_os_errors_pass_through(tmp_path):
    def denied() -> None:
        with atomic_write(tmp_path / "c") as f:
            f.write(b"x")
            raise PermissionError(errno.EACCES, "denied")

    with pytest.raises(PermissionError):
        denied()
    assert list(tmp_path.iterdir()) == []


def test_save_npz_atomic_on_a_full_disk(tmp_path, monkeypatch):
    FullDisk(monkeypatch)
    with pytest.raises(DiskFullError, match=r"arrays\.npz: no space left on device"):
        save_npz_atomic(tmp_path / "arrays.npz", a=np.zeros((64, 64)))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# emorig prepare


@pytest.fixture(scope="module")
def head():
    return builtin_head()


@pytest.fixture(scope="module")
def album(head, tmp_path_factory):
    """Four renders of the built-in head."""
    return render_album(head, tmp_path_factory.mktemp("album"))


def test_prepare_stops_on_a_full_disk_and_a_rerun_continues(head, album, tmp_path, monkeypatch):
    files = image_files(album)
    config = PrepareConfig(size=64, shard_size=2, batch_size=1)
    rec = QuickReconstructor(head)
    with monkeypatch.context() as patch:
        FullDisk(patch, fail_on=2)  # the first shard fits, the second does not
        with pytest.raises(DiskFullError) as info:
            prepare(files, album, tmp_path, rec, config, state=OneProcess())
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'shard-r000-00001.safetensors'}: no space left")
    assert "needs at least" in message
    assert _leftovers(tmp_path) == []
    assert [p.name for p in shard_paths(tmp_path)] == ["shard-r000-00000.safetensors"]
    assert not (tmp_path / MANIFEST_NAME).exists()
    first = read_header(shard_paths(tmp_path)[0]).sources

    rec.calls = 0
    again = prepare(files, album, tmp_path, rec, config, state=OneProcess())
    assert again.report.already_done == len(first) == 2
    assert rec.calls == 2  # only the photos that were not in a complete shard
    assert again.manifest.count == 4
    assert len(BufferDataset(tmp_path)) == 4


def test_a_full_disk_while_writing_the_manifest(head, album, tmp_path, monkeypatch):
    files = image_files(album)
    config = PrepareConfig(size=64, shard_size=4, batch_size=2)
    rec = QuickReconstructor(head)
    with monkeypatch.context() as patch:
        FullDisk(patch, fail_on=2)  # the one shard fits, the manifest does not
        with pytest.raises(DiskFullError, match=r"manifest\.json: no space left on device"):
            prepare(files, album, tmp_path, rec, config, state=OneProcess())
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert _leftovers(tmp_path) == []
    rec.calls = 0
    again = prepare(files, album, tmp_path, rec, config, state=OneProcess())
    assert rec.calls == 0
    assert again.manifest.count == 4


# ---------------------------------------------------------------------------------------------
# emorig synth --prepared


SYNTH = SynthDatasetConfig(count=6, size=32, seed=3)


def test_synth_prepared_stops_on_a_full_disk_and_a_rerun_resumes(tmp_path, monkeypatch):
    reference = write_prepared(SYNTH, tmp_path / "clean", batch_size=2, shard_size=2)
    out = tmp_path / "full"
    with monkeypatch.context() as patch:
        FullDisk(patch, fail_on=3)  # synth.json and the first shard fit
        with pytest.raises(DiskFullError, match=r"shard-r000-00001\.safetensors: no space"):
            write_prepared(SYNTH, out, batch_size=2, shard_size=2)
    assert _leftovers(out) == []
    assert len(shard_paths(out)) == 1
    assert not (out / MANIFEST_NAME).exists()

    rendered = []
    manifest = write_prepared(
        SYNTH, out, batch_size=2, shard_size=2, progress=lambda d, t: rendered.append(d)
    )
    assert rendered == [4, 6]  # resumed after the two faces already in a shard
    assert manifest.count == reference.count == 6
    ours, clean = BufferDataset(out), BufferDataset(reference.root)
    for i in range(6):
        assert ours[i]["source"] == clean[i]["source"]
        torch.testing.assert_close(ours[i]["image"], clean[i]["image"], atol=2 / 255, rtol=0)


def test_synth_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    FullDisk(monkeypatch, fail_on=1, match="shard-")
    argv = ["synth", "--out", str(tmp_path / "s"), "--count", "2", "--size", "32", "--prepared"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("emorig: error: ")
    assert "shard-r000-00000.safetensors: no space left on device" in last
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(argv) == 0
    assert "prepared: 2 items" in capsys.readouterr().out

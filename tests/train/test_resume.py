"""Resuming a training run: exact with dropout (global RNG restored), past a damaged newest
checkpoint, and by the run's content (data path spelling, a copied run or data folder) rather
than its paths; a run with other settings is still refused."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from emorig.diffusion.pretrained import load_pretrained
from emorig.errors import EmorigError
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from emorig.train.checkpoint import (
    CheckpointFallbackWarning,
    list_checkpoints,
    load_checkpoint,
    run_identity,
)
from emorig.train.diffusion import RigTrainConfig, train_rig
from emorig.train.emotion import EmotionTrainConfig, train_emotion
from emorig.types import EMOTION_CLASSES


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A folder holding ``x/prepared`` (8 faces, 32 px)."""
    base = tmp_path_factory.mktemp("resume")
    config = SynthDatasetConfig(mode="album", count=8, size=32, album_size=8, supersample=1)
    write_prepared(config, base / "x" / "prepared")
    return base


def _cfg(data, out, **over):
    base = dict(
        stage="stage1",
        data=str(data),
        out=str(out),
        model="tiny",
        model_overrides={"dropout": 0.1},
        steps=6,
        batch_size=4,
        lr=2e-3,
        save_every=2,
        sample_every=1000,
        sample_steps="ddim5",
        log_every=1,
        cpu=True,
    )
    base.update(over)
    return RigTrainConfig(**base)


@pytest.fixture(scope="module")
def whole(root):
    """The weights of an uninterrupted 6-step run with dropout 0.1."""
    result = train_rig(_cfg(root / "x" / "prepared", root / "whole"))
    return load_pretrained(result.model_folder).state_dict()


def _assert_equal_weights(result, expected):
    assert result.step == 6
    got = load_pretrained(result.model_folder).state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_with_dropout_is_exact(root, whole):
    # Fails when resume_run does not restore the global RNG state (dropout draws from it).
    cfg = _cfg(root / "x" / "prepared", root / "split")
    assert train_rig(cfg, stop_after=3).step == 3  # a kill after step 3 loses it (saved: 2)
    (root / "split" / "checkpoint-00000003.pt").unlink()
    torch.manual_seed(12345)  # whatever the process's RNG holds, the resume restores it
    _assert_equal_weights(train_rig(cfg), whole)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(root, whole):
    cfg = _cfg(root / "x" / "prepared", root / "damaged")
    train_rig(cfg, stop_after=4)
    assert [s for s, _ in list_checkpoints(root / "damaged")] == [2, 4]
    _truncate(root / "damaged" / "checkpoint-00000004.pt")
    with pytest.warns(CheckpointFallbackWarning) as caught:
        result = train_rig(cfg)
    assert len(caught) == 1
    line = str(caught[0].message)
    assert "checkpoint-00000004.pt cannot be read" in line
    assert "resuming from checkpoint-00000002.pt" in line
    _assert_equal_weights(result, whole)
    assert (root / "damaged" / "checkpoint-00000004.pt.damaged").is_file()
    # steps 3 and 4 ran twice; the log names each step once
    logged = [json.loads(line)["step"] for line in (root / "damaged" / "losses.jsonl").open()]
    assert logged == sorted(set(logged))
    assert logged[-1] == 6


def test_no_intact_checkpoint_is_one_clear_error(root):
    cfg = _cfg(root / "x" / "prepared", root / "broken", steps=2)
    train_rig(cfg, stop_after=2)
    for _, path in list_checkpoints(root / "broken"):
        _truncate(path)
    (root / "broken" / "checkpoint-00000001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EmorigError, match="no intact checkpoint"):
        train_rig(cfg)


def test_a_run_is_recognised_by_content_not_by_paths(root, whole, monkeypatch):
    monkeypatch.chdir(root)
    train_rig(_cfg("./x/prepared", "run"), stop_after=3)
    shutil.copytree(root / "run", root / "moved")  # a copied (or renamed) run folder
    shutil.copytree(root / "x", root / "y")  # and a copy of the prepared data
    lines = len((root / "moved" / "losses.jsonl").read_text().splitlines())
    assert lines == 3
    result = train_rig(_cfg("x/prepared", "moved"))
    assert len((root / "moved" / "losses.jsonl").read_text().splitlines()) == 6  # 4..6 added
    _assert_equal_weights(result, whole)
    # the copied data folder is the same data
    identity = run_identity(_cfg(root / "y" / "prepared", "elsewhere"))
    assert identity == run_identity(_cfg("x/prepared", "run"))
    assert train_rig(_cfg("y/prepared", "run", steps=4), stop_after=1).step == 4
    with pytest.raises(EmorigError, match=r"another configuration.*differing: lr"):
        train_rig(_cfg("x/prepared", "run", lr=1e-3))


def test_checkpoints_without_a_stored_identity_still_resume(root, whole, monkeypatch):
    monkeypatch.chdir(root)
    cfg = _cfg("x/prepared", "old")
    train_rig(cfg, stop_after=2)
    path = root / "old" / "checkpoint-00000002.pt"
    state = torch.load(path, weights_only=True)
    del state["identity"]  # as written before identities were stored
    torch.save(state, path)
    assert "identity" not in load_checkpoint(path)
    _assert_equal_weights(train_rig(_cfg("./x/prepared", "old")), whole)


def _emotion_cfg(base, out, **over):
    data = base / "faces"
    if not data.exists():
        rng = np.random.default_rng(0)
        for name in EMOTION_CLASSES[:3]:
            (data / name).mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(data / name / f"img{i}.png")
    kw = dict(
        out=str(out),
        data=str(data),
        input_size=32,
        steps=6,
        batch_size=4,
        lr=1e-3,
        val_fraction=0.3,
        val_every=2,
        patience=0,
        save_every=1,
        backbone="resnet18",
        width=8,
        cpu=True,
    )
    kw.update(over)
    return EmotionTrainConfig(**kw)


def test_emotion_training_resumes_from_a_fallback_checkpoint(tmp_path):
    whole = train_emotion(_emotion_cfg(tmp_path, tmp_path / "whole"))
    cfg = _emotion_cfg(tmp_path, tmp_path / "split")
    train_emotion(cfg, stop_after=4)
    _truncate(tmp_path / "split" / "checkpoint-00000004.pt")
    with pytest.warns(CheckpointFallbackWarning, match="resuming from checkpoint-00000003.pt"):
        second = train_emotion(cfg)
    assert second.step == 6
    assert whole.best == second.best
    a = load_checkpoint(tmp_path / "whole" / "checkpoint-00000006.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint-00000006.pt")["model"]
    for key, value in a.items():
        assert torch.equal(b[key], value), key

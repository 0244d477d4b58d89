"""Diffusion training: both stages learn, stage 2 keeps the latent encoder frozen, checkpoints
carry their config, resuming equals an uninterrupted run, sample grids are written."""

import json

import pytest
import torch

from emorig.diffusion.pretrained import load_pretrained
from emorig.errors import EmorigError
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from emorig.train.checkpoint import load_checkpoint
from emorig.train.diffusion import RigTrainConfig, step_indices, train_rig


@pytest.fixture(scope="session")
def album(tmp_path_factory):
    out = tmp_path_factory.mktemp("album32")
    config = SynthDatasetConfig(mode="album", count=8, size=32, album_size=8, supersample=1)
    write_prepared(config, out)
    return out


def _cfg(data, out, **over):
    base = dict(
        stage="stage1",
        data=str(data),
        out=str(out),
        model="tiny",
        steps=40,
        batch_size=8,
        lr=2e-3,
        save_every=20,
        sample_every=1000,
        sample_steps="ddim5",
        log_every=1,
        cpu=True,
    )
    base.update(over)
    return RigTrainConfig(**base)


def _losses(folder):
    return [json.loads(x)["diffusion"] for x in (folder / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def stage1(album, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    result = train_rig(_cfg(album, out))
    return out, result


def test_stage1_loss_falls_and_model_round_trips(stage1):
    out, result = stage1
    losses = _losses(out)
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    model = load_pretrained(result.model_folder)
    state = load_checkpoint(out / "checkpoint-00000040.pt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state["model"][key], rtol=0, atol=0, msg=key)
    assert (out / "samples" / "step-00000040.png").is_file()
    info = json.loads((result.model_folder / "training.json").read_text())
    assert info["config"]["stage"] == "stage1"


def test_stage2_trains_the_unet_only(album, stage1, tmp_path):
    _, first = stage1
    before = load_pretrained(first.model_folder).state_dict()
    cfg = _cfg(album, tmp_path, stage="stage2", init=str(first.model_folder), steps=6, lr=1e-3)
    assert cfg.resolved("trainable") == ("denoisingUNet.",)
    result = train_rig(cfg)
    after = load_pretrained(result.model_folder).state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    unet = [k for k in before if k.startswith("denoisingUNet.")]
    assert encoder
    for k in encoder:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(after[k], before[k]) for k in unet)


def test_stage_defaults_follow_diffusionrig(album, tmp_path):
    cfg = RigTrainConfig(stage="stage2", data=str(album), out=str(tmp_path), init="x")
    assert (cfg.resolved("lr"), cfg.resolved("batch_size"), cfg.resolved("steps")) == (
        1e-5,
        4,
        5000,
    )
    with pytest.raises(EmorigError, match="--init"):
        RigTrainConfig(stage="stage2", data=str(album), out=str(tmp_path))


def test_resume_equals_an_uninterrupted_run(album, tmp_path):
    whole = train_rig(_cfg(album, tmp_path / "whole", steps=6, save_every=2, ema=0.9))
    cfg = _cfg(album, tmp_path / "split", steps=6, save_every=2, ema=0.9)
    first = train_rig(cfg, stop_after=3)  # a kill after step 3 loses step 3 (saved: 2)
    assert first.step == 3
    (tmp_path / "split" / "checkpoint-00000003.pt").unlink()
    second = train_rig(cfg)
    assert second.step == 6
    a = load_pretrained(whole.model_folder).state_dict()
    b = load_pretrained(second.model_folder).state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    with pytest.raises(EmorigError, match="another configuration"):
        train_rig(_cfg(album, tmp_path / "split", steps=6, save_every=2, lr=1e-4))


def test_every_item_is_seen_once_per_epoch():
    seen = []
    for step in range(5):  # 2 processes x batch 3 over 10 items: 3 epochs
        for rank in range(2):
            seen += step_indices(10, 3, step, rank, 2, seed=1)
    for epoch in range(3):
        assert sorted(seen[epoch * 10 : (epoch + 1) * 10]) == list(range(10))


def test_mismatched_size_and_missing_data_are_reported(album, stage1, tmp_path):
    with pytest.raises(EmorigError, match="manifest"):
        train_rig(_cfg(tmp_path / "nothing", tmp_path / "run"))
    _, first = stage1
    with pytest.raises(EmorigError, match="overrides"):
        train_rig(
            _cfg(
                album,
                tmp_path / "r2",
                init=str(first.model_folder),
                model_overrides={"channels": 8},
            )
        )

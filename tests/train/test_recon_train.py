"""Reconstruction training: every stage runs and learns on synthetic faces, checkpoints carry
their config and resuming equals an uninterrupted run."""

import json

import pytest
import torch

from emorig.errors import EmorigError
from emorig.flame.builtin import builtin_head
from emorig.io.networks import export_feature_network
from emorig.reconstruct.checkpoints import from_pretrained
from emorig.train.checkpoint import list_checkpoints, load_checkpoint
from emorig.train.recon import ReconTrainConfig, train_reconstruction

TINY = {"backbone": "resnet18", "backbone_width": 8, "cpu": True, "log_every": 1}


@pytest.fixture(scope="module")
def head():
    return builtin_head()


def mean(xs):
    return sum(xs) / len(xs)


def losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory, head):
    out = tmp_path_factory.mktemp("synthetic")
    cfg = ReconTrainConfig(
        stage="synthetic",
        out=str(out),
        steps=24,
        batch_size=4,
        lr=1e-3,
        save_every=10,
        sample_every=24,
        **TINY,
    )
    result = train_reconstruction(cfg, head)
    return out, result


def test_synthetic_stage_learns_and_saves(synthetic_model):
    out, result = synthetic_model
    curve = losses(out)
    assert len(curve) == 24
    assert mean(curve[-6:]) < 0.7 * mean(curve[:6])
    steps = [s for s, _ in list_checkpoints(out)]
    assert steps == [20, 24]  # keep=2 newest
    state = load_checkpoint(out / "checkpoint-00000024.pt")
    assert state["config"]["stage"] == "synthetic"
    assert state["step"] == 24
    model = from_pretrained(result.model_folder)
    images = torch.rand(2, 3, 224, 224)
    model.eval()
    assert model.encode(images).shape.shape == (2, 100)
    assert (out / "samples" / "step-00000024.png").exists()


def test_resume_equals_an_uninterrupted_run(tmp_path, head):
    kw = {
        "stage": "synthetic",
        "steps": 6,
        "batch_size": 2,
        "lr": 1e-3,
        "save_every": 3,
        "sample_every": 100,
        **TINY,
    }
    whole = ReconTrainConfig(out=str(tmp_path / "whole"), **kw)
    train_reconstruction(whole, head)
    parts = ReconTrainConfig(out=str(tmp_path / "parts"), **kw)
    first = train_reconstruction(parts, head, stop_after=3)
    assert first.step == 3
    assert first.model_folder is None
    second = train_reconstruction(parts, head)
    assert second.step == 6
    a = load_checkpoint(tmp_path / "whole" / "checkpoint-00000006.pt")["model"]
    b = load_checkpoint(tmp_path / "parts" / "checkpoint-00000006.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(EmorigError, match="another configuration"):
        train_reconstruction(
            ReconTrainConfig(out=str(tmp_path / "parts"), **{**kw, "lr": 5e-4}), head
        )


def test_coarse_stage_with_shape_consistency(tmp_path, head, synthetic_model):
    _, result = synthetic_model
    cfg = ReconTrainConfig(
        stage="coarse",
        out=str(tmp_path),
        init=str(result.model_folder),
        steps=8,
        batch_size=2,
        group_size=2,
        lr=1e-4,
        save_every=8,
        sample_every=8,
        weight_overrides={"identity": 0.0},
        **TINY,
    )
    r = train_reconstruction(cfg, head)
    assert {"landmark", "photometric", "shape_reg", "eye_closure"} <= set(r.losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in r.losses.values())
    with pytest.raises(EmorigError, match="identity loss has a non-zero weight"):
        train_reconstruction(
            ReconTrainConfig(stage="coarse", out=str(tmp_path / "x"), steps=1, **TINY), head
        )


def test_identity_network_is_used(tmp_path, head, synthetic_model):
    _, result = synthetic_model

    class Pool(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 16).flatten(1)

    net = export_feature_network(Pool(), tmp_path / "id.pt2")
    cfg = ReconTrainConfig(
        stage="coarse",
        out=str(tmp_path / "run"),
        init=str(result.model_folder),
        identity_net=str(net),
        steps=2,
        batch_size=2,
        sample_every=100,
        **TINY,
    )
    r = train_reconstruction(cfg, head)
    assert r.losses["identity"] > 0


def test_detail_stage_trains_the_detail_model_only(tmp_path, head, synthetic_model):
    _, result = synthetic_model
    cfg = ReconTrainConfig(
        stage="detail",
        out=str(tmp_path),
        init=str(result.model_folder),
        steps=6,
        batch_size=2,
        group_size=2,
        lr=1e-3,
        save_every=6,
        sample_every=100,
        weight_overrides={"detail_mrf": 0.0},
        **TINY,
    )
    r = train_reconstruction(cfg, head)
    assert {"detail_photometric", "detail_symmetry", "detail_displacement"} <= set(r.losses)
    before = from_pretrained(result.model_folder).state_dict()
    after = from_pretrained(r.model_folder).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("coarse_"))
    assert any(
        not torch.equal(before[k], after[k])
        for k in before
        if k.startswith("detail_decoder") and before[k].is_floating_point()
    )


def test_emoca_stage_with_an_emotion_network(tmp_path, head, synthetic_model):
    _, result = synthetic_model

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 5, stride=4)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    net = export_feature_network(Features(), tmp_path / "emo.pt2")
    cfg = ReconTrainConfig(
        stage="emoca",
        out=str(tmp_path / "run"),
        weights="emoca",
        init=str(result.model_folder),
        emotion_net=str(net),
        steps=4,
        batch_size=2,
        lr=1e-4,
        save_every=4,
        sample_every=100,
        **TINY,
    )
    r = train_reconstruction(cfg, head)
    assert r.losses["emotion"] >= 0
    assert "landmark" not in r.losses  # EMOCA v1 uses relative landmark losses only
    trained = from_pretrained(r.model_folder)
    before = from_pretrained(result.model_folder).state_dict()
    after = trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # DECA untouched
    assert any(k.startswith("expression_encoder") for k in after)

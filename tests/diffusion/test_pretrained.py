"""Our folder format (config.json + model.safetensors) and the configuration round trip."""

from __future__ import annotations

import json

import pytest
import torch

from emorig.diffusion import RigConfig, RigModel, load_pretrained, save_pretrained
from emorig.diffusion.pretrained import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from emorig.errors import AssetError


def _outputs(model: RigModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s = model.config.image_size
    x = torch.randn(2, 3, s, s, generator=g)
    cond = torch.rand(2, model.config.condition_channels, s, s, generator=g)
    expression = (
        torch.randn(2, model.config.expression_dim, generator=g)
        if model.config.expression_dim
        else None
    )
    with torch.no_grad():
        return model(x, torch.tensor([3, 700]), cond, x_start=x, expression=expression)


@pytest.mark.parametrize("expression_dim", [0, 5])
def test_round_trip_gives_identical_outputs(tmp_path, randomize, expression_dim):
    torch.manual_seed(0)
    model = RigModel(RigConfig.tiny(expression_dim=expression_dim)).eval()
    randomize(model, 0.05)
    with torch.no_grad():  # also move the (zero-initialised) expression FiLM off zero
        for name, p in model.named_parameters():
            if ".expr_emb_layers." in name:
                p.normal_(0, 0.1)
        model.encoder.bn1.running_mean.normal_()
    folder = save_pretrained(model, tmp_path / "rig")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temps
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["format"] == "emorig-diffusionrig"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["config"]["channel_mult"] == [1, 2]
    loaded = load_pretrained(folder)
    assert loaded.config == model.config
    assert not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(model))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_config_dict_round_trip():
    for config in (
        RigConfig.official(),
        RigConfig.official(512),
        RigConfig.tiny(expression_dim=3, head_channels=8),
    ):
        values = json.loads(json.dumps(config.to_dict()))
        assert RigConfig.from_dict(values) == config
    assert RigConfig.official(512).to_dict()["channel_mult"] == [0.5, 1, 1, 2, 2, 4, 4]
    assert RigConfig.official(128).channel_mult == (1, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="unknown RigConfig fields"):
        RigConfig.from_dict({"image_size": 32, "learn_sigma": True})


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible"):
        RigConfig(image_size=100)
    with pytest.raises(ValueError, match="not UNet levels"):
        RigConfig(attention_resolutions=(12,))
    with pytest.raises(ValueError, match="encoder_depth"):
        RigConfig(encoder_depth=34)
    with pytest.raises(ValueError, match="no default channel_mult"):
        RigConfig.official(96)
    assert "12 input channels" in RigConfig.official().describe()


def test_resnet50_encoder_option():
    config = RigConfig.tiny(encoder_depth=50)
    model = RigModel(config)
    assert model.encoder.fc.weight.shape == (config.latent_dim, config.encoder_features)
    assert "encoder.layer1.0.conv3.weight" in model.state_dict()


def _write(folder, meta) -> None:
    folder.mkdir(exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(meta))


def test_load_errors(tmp_path):
    model = RigModel(RigConfig.tiny())
    folder = save_pretrained(model, tmp_path / "ok")
    meta = json.loads((folder / CONFIG_NAME).read_text())

    with pytest.raises(AssetError, match="not found"):
        load_pretrained(tmp_path / "nowhere")
    newer = tmp_path / "newer"
    _write(newer, {**meta, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(AssetError, match="upgrade emorig"):
        load_pretrained(newer)
    other = tmp_path / "other"
    _write(other, {**meta, "format": "emorig-face-encoder"})
    with pytest.raises(AssetError, match="is not an emorig-diffusionrig"):
        load_pretrained(other)
    unknown = tmp_path / "unknown"
    _write(unknown, {**meta, "config": {**meta["config"], "learn_sigma": True}})
    with pytest.raises(AssetError, match="unknown RigConfig fields"):
        load_pretrained(unknown)
    no_weights = tmp_path / "no_weights"
    _write(no_weights, meta)
    with pytest.raises(AssetError, match=r"model\.safetensors: not found"):
        load_pretrained(no_weights)
    damaged = tmp_path / "damaged"
    _write(damaged, meta)
    (damaged / WEIGHTS_NAME).write_bytes(b"\x00" * 20)
    with pytest.raises(AssetError, match="not a readable safetensors file"):
        load_pretrained(damaged)
    mismatch = tmp_path / "mismatch"
    _write(mismatch, {**meta, "config": {**meta["config"], "latent_dim": 9}})
    (mismatch / WEIGHTS_NAME).write_bytes((folder / WEIGHTS_NAME).read_bytes())
    with pytest.raises(AssetError, match=r"mis-shaped keys: .*cond_emb_layers"):
        load_pretrained(mismatch)

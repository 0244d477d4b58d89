"""VGG19 feature extractor: torchvision-compatible keys, strict loading, named activations."""

from __future__ import annotations

import pytest
import torch

from emorig.errors import AssetError
from emorig.reconstruct.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19_LAYERS,
    VGG19Features,
    imagenet_normalize,
    load_vgg19,
    torchvision_vgg19_keys,
)

# torchvision.models.vgg19(): convs in `features` at these indices, Linear layers in
# `classifier` at 0, 3, 6 (ReLU and Dropout in between).
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
FEATURE_KEYS = [f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")]
CLASSIFIER_KEYS = [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGG19Features().eval()


def full_state(model: VGG19Features) -> dict[str, torch.Tensor]:
    """A torchvision-style state dict: the features plus (small stand-in) classifier tensors."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in CLASSIFIER_KEYS:
        state[key] = torch.zeros(2)  # classifier shapes are not checked: it is ignored
    return state


def test_keys_match_torchvision(vgg):
    assert list(vgg.state_dict()) == FEATURE_KEYS
    assert torchvision_vgg19_keys(classifier=False) == FEATURE_KEYS
    assert torchvision_vgg19_keys() == FEATURE_KEYS + CLASSIFIER_KEYS


def test_parameter_shapes(vgg):
    state = vgg.state_dict()
    c_in = 3
    for i, c_out in zip(CONV_INDICES, CONV_CHANNELS, strict=True):
        assert state[f"features.{i}.weight"].shape == (c_out, c_in, 3, 3)
        assert state[f"features.{i}.bias"].shape == (c_out,)
        c_in = c_out
    n_params = sum(p.numel() for p in vgg.parameters())
    assert n_params == 20_024_384  # torchvision vgg19 features


def test_layer_names():
    assert len(VGG19_LAYERS) == 37
    blocks = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
    conv_names = [f"conv{b}_{k}" for b, n in blocks for k in range(1, n + 1)]
    assert [VGG19_LAYERS[i] for i in CONV_INDICES] == conv_names
    assert [VGG19_LAYERS[i + 1] for i in CONV_INDICES] == [
        n.replace("conv", "relu") for n in conv_names
    ]
    assert VGG19_LAYERS[11] == "relu3_1"
    assert VGG19_LAYERS[13] == "relu3_2"
    assert VGG19_LAYERS[20] == "relu4_1"
    assert VGG19_LAYERS[22] == "relu4_2"
    assert VGG19_LAYERS[35] == "relu5_4"
    assert [VGG19_LAYERS[i] for i in (4, 9, 18, 27, 36)] == [f"pool{k}" for k in range(1, 6)]


def test_named_activation_shapes(vgg):
    x = torch.rand(2, 3, 32, 32)
    names = ("relu4_1", "relu1_1", "relu2_1", "relu3_1", "relu5_4", "pool5", "conv3_2")
    with torch.no_grad():
        out = vgg(imagenet_normalize(x), names)
    assert list(out) == list(names)
    assert out["relu1_1"].shape == (2, 64, 32, 32)
    assert out["relu2_1"].shape == (2, 128, 16, 16)
    assert out["relu3_1"].shape == (2, 256, 8, 8)
    assert out["conv3_2"].shape == (2, 256, 8, 8)
    assert out["relu4_1"].shape == (2, 512, 4, 4)
    assert out["relu5_4"].shape == (2, 512, 2, 2)
    assert out["pool5"].shape == (2, 512, 1, 1)
    assert (out["relu3_1"] >= 0).all()
    assert (out["conv3_2"] < 0).any()  # the conv output itself, before its ReLU


def test_relus_do_not_overwrite_conv_outputs(vgg):
    x = imagenet_normalize(torch.rand(1, 3, 16, 16))
    with torch.no_grad():
        out = vgg(x, ("conv1_1", "relu1_1"))
    assert torch.equal(out["relu1_1"], out["conv1_1"].clamp_min(0))


def test_stops_at_deepest_requested_layer(vgg):
    called = []
    handle = vgg.features[12].register_forward_hook(lambda *_: called.append(True))
    try:
        with torch.no_grad():
            vgg(torch.rand(1, 3, 16, 16), ("relu3_1",))
    finally:
        handle.remove()
    assert called == []


def test_unknown_layer_and_bad_input(vgg):
    with pytest.raises(ValueError, match="relu3_5"):
        vgg(torch.rand(1, 3, 16, 16), ("relu3_5",))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        vgg(torch.rand(1, 1, 16, 16), ("relu1_1",))


def test_imagenet_normalize():
    x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(imagenet_normalize(x), torch.zeros(1, 3, 2, 2))
    ones = torch.ones(1, 3, 1, 1)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(imagenet_normalize(ones).flatten(), torch.tensor(expected))


def test_load_round_trip_ignores_classifier(tmp_path, vgg):
    path = tmp_path / "vgg19.pth"
    torch.save(full_state(vgg), path)
    loaded = load_vgg19(path)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    for key, value in vgg.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = imagenet_normalize(torch.rand(1, 3, 16, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x, ("relu2_2",))["relu2_2"], vgg(x, ("relu2_2",))["relu2_2"])


def test_load_without_classifier_and_dtype(tmp_path, vgg):
    path = tmp_path / "features_only.pth"
    torch.save(vgg.state_dict(), path)
    loaded = load_vgg19(path, dtype=torch.float64)
    assert loaded.features[0].weight.dtype == torch.float64


def test_missing_key_is_listed(tmp_path, vgg):
    state = full_state(vgg)
    del state["features.21.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(AssetError, match=r"missing keys \['features\.21\.weight'\]"):
        load_vgg19(path)


def test_unexpected_key_is_listed(tmp_path, vgg):
    state = full_state(vgg)
    state["features.1.weight"] = torch.zeros(3)
    state["extra"] = torch.zeros(1)
    path = tmp_path / "unexpected.pth"
    torch.save(state, path)
    with pytest.raises(AssetError) as info:
        load_vgg19(path)
    assert "unexpected keys ['extra', 'features.1.weight']" in str(info.value)


def test_batchnorm_variant_is_rejected(tmp_path, vgg):
    # vgg19_bn numbers its layers differently: features.0 conv, features.1 BatchNorm ...
    state = full_state(vgg)
    state["features.1.running_mean"] = torch.zeros(64)
    path = tmp_path / "bn.pth"
    torch.save(state, path)
    with pytest.raises(AssetError, match="running_mean"):
        load_vgg19(path)


def test_wrong_shape(tmp_path, vgg):
    state = full_state(vgg)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(AssetError, match=r"features\.0\.weight \(64, 1, 3, 3\)"):
        load_vgg19(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(AssetError, match="not a state dict"):
        load_vgg19(path)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(AssetError, match=r"garbage\.pth"):
        load_vgg19(garbage)
    with pytest.raises(AssetError, match="not found"):
        load_vgg19(tmp_path / "absent.pth")

"""ResNet trunks: torchvision key names and shapes, pooled outputs, channels_last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emorig.reconstruct.backbones import make_backbone, resnet18, resnet50
from fixtures_official import resnet_state_shapes


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_resnet50_keys_and_shapes_are_torchvisions_without_fc():
    expected = resnet_state_shapes((3, 4, 6, 3), 64, bottleneck=True)
    got = _shapes(resnet50())
    assert list(got) == list(expected)  # same names, same order
    assert got == expected
    assert "layer1.0.downsample.0.weight" in got
    assert "bn1.num_batches_tracked" in got
    assert not any(k.startswith("fc.") for k in got)


def test_resnet18_keys_and_shapes_are_torchvisions():
    expected = resnet_state_shapes((2, 2, 2, 2), 64, bottleneck=False)
    got = _shapes(resnet18())
    assert got == expected
    assert "layer1.0.downsample.0.weight" not in got  # no projection in ResNet-18's first stage
    assert got["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)


def test_include_fc_adds_torchvisions_classifier():
    got = _shapes(resnet50(include_fc=True))
    assert got["fc.weight"] == (1000, 2048)
    assert got["fc.bias"] == (1000,)
    assert list(got)[-2:] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    ("factory", "width", "features"),
    [(resnet50, 64, 2048), (resnet50, 8, 256), (resnet18, 64, 512), (resnet18, 8, 64)],
)
def test_pooled_feature_sizes(factory, width, features):
    model = factory(width=width).eval()
    assert model.out_features == features
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, features)


def test_global_pool_equals_decas_avgpool7_at_224():
    model = resnet50(width=4).eval()
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        fmap = model.feature_map(images)
        deca_style = nn.AvgPool2d(7, stride=1)(fmap).flatten(1)
        ours = model(images)
    assert fmap.shape[2:] == (7, 7)
    torch.testing.assert_close(ours, deca_style, rtol=1e-5, atol=1e-6)


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    model = resnet50(width=8).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(images)
        model = model.to(memory_format=torch.channels_last)
        for batch in (images, images.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(model(batch), reference, rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_stem():
    model = resnet18(width=4)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert model.conv1.weight.grad is not None
    assert model.conv1.weight.grad.abs().sum() > 0


def test_logits_need_fc_and_unknown_names_are_refused():
    with pytest.raises(RuntimeError, match="include_fc"):
        resnet18(width=4).logits(torch.rand(1, 3, 32, 32))
    classifier = resnet18(width=4, include_fc=True).eval()
    assert classifier.logits(torch.rand(1, 3, 32, 32)).shape == (1, 1000)
    with pytest.raises(ValueError, match="unknown backbone"):
        make_backbone("vgg19")

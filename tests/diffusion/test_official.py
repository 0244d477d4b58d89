"""DiffusionRig's checkpoint (strict loading, config inference, errors) and mean_shape.pkl."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import pytest
import torch
from torch.storage import TypedStorage, _load_from_bytes

from emorig.diffusion import (
    RigConfig,
    config_from_official,
    convert_official,
    load_mean_shape,
    load_official,
    load_pretrained,
    read_official,
)
from emorig.errors import AssetError


def _assert_holds(model, state):
    ours = model.state_dict()
    assert set(ours) == set(state)
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_strict_load_of_the_official_layout(official_checkpoint, official_tiny_config):
    path, state = official_checkpoint
    model = load_official(path, image_size=32)
    assert not model.training
    assert model.config == official_tiny_config.replace(dropout=0.1)
    _assert_holds(model, state)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([10]), torch.rand(1, 9, 32, 32), x_start=x)
    assert out.shape == (1, 3, 32, 32)
    assert torch.isfinite(out).all()


def test_config_inference_reads_the_architecture(upstream_shapes, make_state):
    cases = [
        RigConfig(
            image_size=64, channels=32, channel_mult=(1, 2, 3), num_res_blocks=2,
            attention_resolutions=(32, 16), latent_dim=5, encoder_width=8,
        ),
        RigConfig(
            image_size=32, channels=32, channel_mult=(1, 1), num_res_blocks=1,
            attention_resolutions=(32,), resblock_updown=False, latent_dim=4, encoder_width=4,
        ),
    ]  # fmt: skip
    for config in cases:
        state = make_state(upstream_shapes(config))
        inferred = config_from_official(state, image_size=config.image_size)
        assert inferred == config.replace(dropout=0.1)


@pytest.mark.parametrize("image_size", [256, 512, 128, 64])
def test_official_architectures_are_inferred(upstream_shapes, image_size):
    config = RigConfig.official(image_size)
    layout = {k: torch.empty(s, device="meta") for k, s in upstream_shapes(config).items()}
    assert config_from_official(layout, image_size=image_size) == config


def test_official_image_size_default_is_256(official_checkpoint):
    _, state = official_checkpoint
    # The same weights read as a 256 px model put the attention level at 128 px.
    assert config_from_official(state).attention_resolutions == (128,)
    assert config_from_official(state, image_size=32).attention_resolutions == (16,)


def test_folder_and_ddp_prefix(official_checkpoint, tmp_path):
    _path, state = official_checkpoint
    _assert_holds(load_official(tmp_path), state)  # finds model*.pt in the folder
    wrapped = tmp_path / "ddp" / "model000100.pt"
    wrapped.parent.mkdir()
    torch.save(OrderedDict((f"module.{k}", v) for k, v in state.items()), wrapped)
    assert set(read_official(wrapped)) == set(state)


def test_key_mismatch_is_reported_by_name(official_checkpoint, official_tiny_config, tmp_path):
    _, state = official_checkpoint
    broken = OrderedDict(state)
    del broken["denoisingUNet.middle_block.1.qkv.weight"]
    del broken["encoder.layer4.1.bn2.running_var"]
    broken["denoisingUNet.label_emb.weight"] = torch.zeros(10, 128)
    broken["encoder.fc.bias"] = torch.zeros(7)
    path = tmp_path / "model_broken.pt"
    torch.save(broken, path)
    with pytest.raises(AssetError) as info:
        load_official(path, config=official_tiny_config)
    message = str(info.value)
    assert "\n" not in message
    assert "2 missing keys: " in message
    assert "denoisingUNet.middle_block.1.qkv.weight" in message
    assert "encoder.layer4.1.bn2.running_var" in message
    assert "1 unexpected key: denoisingUNet.label_emb.weight" in message
    assert "encoder.fc.bias (7,) (expected (8,))" in message


def test_many_missing_keys_are_counted(official_checkpoint, official_tiny_config, tmp_path):
    _, state = official_checkpoint
    only_unet = OrderedDict((k, v) for k, v in state.items() if k.startswith("denoisingUNet."))
    path = tmp_path / "model_unet_only.pt"
    torch.save(only_unet, path)
    with pytest.raises(AssetError, match=r"missing keys: encoder\.conv1\.weight, .*more\)"):
        load_official(path, config=official_tiny_config)
    with pytest.raises(AssetError, match=r"architecture: no 'encoder\.fc\.weight'"):
        load_official(path)


def test_missing_batch_counters_are_tolerated(official_checkpoint, tmp_path):
    _, state = official_checkpoint
    old = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    path = tmp_path / "model_old.pt"
    torch.save(old, path)
    model = load_official(path)
    assert model.encoder.bn1.num_batches_tracked.item() == 0
    assert torch.equal(model.encoder.bn1.running_var, state["encoder.bn1.running_var"])


def test_missing_file_says_where_to_get_it(tmp_path):
    path = tmp_path / "weights" / "model.pt"
    with pytest.raises(AssetError) as info:
        load_official(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "stage-1" in message
    assert "not found" in message
    assert "https://github.com/adobe-research/diffusion-rig" in message
    assert "Google Drive" in message
    assert "FFHQ" in message


def test_folder_without_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("weights go here")
    with pytest.raises(AssetError, match="no DiffusionRig stage-1 checkpoint") as info:
        load_official(tmp_path)
    assert "Google Drive" in str(info.value)


def test_unreadable_and_foreign_files(tmp_path):
    not_torch = tmp_path / "model_text.pt"
    not_torch.write_text("hello")
    with pytest.raises(AssetError, match="not a readable PyTorch state dict"):
        load_official(not_torch)
    a_list = tmp_path / "model_list.pt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(AssetError, match="expected a state dict, got list"):
        load_official(a_list)
    with_code = tmp_path / "model_code.pt"
    torch.save({"denoisingUNet.x": torch.zeros(1), "step": pickle.PickleError}, with_code)
    with pytest.raises(AssetError, match="not a readable PyTorch state dict"):
        load_official(with_code)  # weights_only refuses the class; nothing runs
    mixed = tmp_path / "model_mixed.pt"
    torch.save({"denoisingUNet.x": torch.zeros(1), "step": 5}, mixed)
    with pytest.raises(AssetError, match="not named tensors: step"):
        load_official(mixed)


def test_learned_sigma_checkpoints_are_refused(official_checkpoint, tmp_path):
    _, state = official_checkpoint
    state = OrderedDict(state)
    state["denoisingUNet.out.2.weight"] = torch.zeros(6, 32, 3, 3)
    state["denoisingUNet.out.2.bias"] = torch.zeros(6)
    path = tmp_path / "model_sigma.pt"
    torch.save(state, path)
    with pytest.raises(AssetError, match="predicts 6 channels"):
        load_official(path)


def test_convert_official_to_our_format(official_checkpoint, tmp_path):
    path, state = official_checkpoint
    folder = convert_official(path, tmp_path / "converted")
    model = load_pretrained(folder)
    _assert_holds(model, state)
    reference = load_official(path)
    x = torch.randn(1, 3, 32, 32)
    cond = torch.rand(1, 9, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            model(x, torch.tensor([400]), cond, x_start=x),
            reference(x, torch.tensor([400]), cond, x_start=x),
        )


# ---------------------------------------------------------------------------------------------
# mean_shape.pkl


def _pickle_as_if_from_cuda(tensor: torch.Tensor) -> bytes:
    """``pickle.dump`` of a tensor whose storage was on ``cuda:0`` (as create_data.py writes on
    a GPU machine): the storage's legacy torch.save stream records that location."""

    class CudaPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, TypedStorage):
                buf = io.BytesIO()
                torch.save(obj, buf, _use_new_zipfile_serialization=False)
                data = buf.getvalue()
                cpu = b"X\x03\x00\x00\x00cpu"
                assert data.count(cpu) == 1
                return (_load_from_bytes, (data.replace(cpu, b"X\x06\x00\x00\x00cuda:0"),))
            return NotImplemented

    out = io.BytesIO()
    CudaPickler(out).dump(tensor)
    return out.getvalue()


def test_mean_shape_saved_from_cuda_loads_on_cpu(tmp_path):
    shape = torch.randn(1, 100)
    path = tmp_path / "mean_shape.pkl"
    path.write_bytes(_pickle_as_if_from_cuda(shape))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            pickle.loads(path.read_bytes())  # what plain pickle does on a CPU machine
    loaded = load_mean_shape(path)
    assert loaded.shape == (1, 100)
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, shape)


def test_mean_shape_errors(tmp_path):
    with pytest.raises(AssetError, match="not found"):
        load_mean_shape(tmp_path / "mean_shape.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(torch.zeros(2, 100)))
    with pytest.raises(AssetError, match=r"shape \(2, 100\)"):
        load_mean_shape(bad)
    flat = tmp_path / "flat.pkl"
    flat.write_bytes(pickle.dumps(torch.ones(100)))
    assert load_mean_shape(flat).shape == (1, 100)

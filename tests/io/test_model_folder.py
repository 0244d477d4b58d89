"""One model-folder format (emorig.io.model_folder) for every family: round trips, folders
written before the format was shared, errors, and float16 packing."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

import emorig.io.model_folder as mf
from emorig.diffusion import RigConfig, RigModel
from emorig.diffusion.pretrained import load_pretrained, save_pretrained
from emorig.emotion.emodeca import EmoDecaConfig, EmoDecaMLP, load_emodeca, save_emodeca
from emorig.emotion.recognizers import (
    MiniXceptionConfig,
    MiniXceptionRecognizer,
    ResNetEmotionConfig,
    ResNetEmotionRecognizer,
    load_recognizer,
    save_recognizer,
)
from emorig.errors import AssetError, EmorigError
from emorig.io.model_folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    FolderFormat,
    config_to_dict,
    load_state_strict,
    read_folder_config,
    read_safetensors,
)
from emorig.reconstruct.checkpoints import from_pretrained
from emorig.reconstruct.checkpoints import save_pretrained as save_encoder
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.emoca import EmocaConfig, EmocaModel
from emorig.types import EMOTION_CLASSES
from emorig.weights.pack import pack

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_folders"


@dataclass(frozen=True)
class Family:
    """How one model family saves and loads its folders."""

    name: str
    format: str
    build: Callable[[], nn.Module]
    save: Callable[[nn.Module, Path], Path]
    load: Callable[[Path], nn.Module]


def _perturbed(model: nn.Module) -> nn.Module:
    """Every floating tensor (running statistics included) nudged, so nothing is a default."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "diffusion",
            "emorig-diffusionrig",
            lambda: RigModel(RigConfig.tiny(image_size=16)),
            save_pretrained,
            load_pretrained,
        ),
        Family(
            "face_encoder",
            "emorig-face-encoder",
            lambda: DecaModel(DecaConfig(backbone="resnet18", backbone_width=4, head_hidden=16)),
            save_encoder,
            from_pretrained,
        ),
        Family(
            "emoca_encoder",
            "emorig-face-encoder",
            lambda: EmocaModel(
                EmocaConfig(
                    backbone="resnet18",
                    expression_backbone="resnet18",
                    backbone_width=4,
                    head_hidden=16,
                    predicts_jaw_pose=True,
                )
            ),
            save_encoder,
            from_pretrained,
        ),
        Family(
            "recognizer",
            "emorig-emotion-recognizer",
            lambda: ResNetEmotionRecognizer(ResNetEmotionConfig(backbone="resnet18", width=4)),
            save_recognizer,
            load_recognizer,
        ),
        Family(
            "mini_xception",
            "emorig-emotion-recognizer",
            lambda: MiniXceptionRecognizer(MiniXceptionConfig(block_channels=(4, 8))),
            save_recognizer,
            load_recognizer,
        ),
        Family(
            "emodeca",
            "emorig-emodeca",
            lambda: EmoDecaMLP(EmoDecaConfig(n_shape=4, n_expression=6, hidden=32, layers=2)),
            save_emodeca,
            load_emodeca,
        ),
    )
}
#: The legacy folder of each family (tests/data/legacy_folders/<name>).
LEGACY_FAMILIES = ("diffusion", "face_encoder", "recognizer", "emodeca")


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def _same_files(a: Path, b: Path) -> None:
    """Identical ``config.json`` bytes; identical ``model.safetensors`` up to the order of the
    keys in its JSON header (safetensors writes them in no fixed order): same header entries
    (dtypes, shapes, offsets, metadata) and the same tensor bytes."""
    assert (a / CONFIG_NAME).read_bytes() == (b / CONFIG_NAME).read_bytes()
    parts = []
    for folder in (a, b):
        data = (folder / WEIGHTS_NAME).read_bytes()
        size = int.from_bytes(data[:8], "little")
        parts.append((json.loads(data[8 : 8 + size]), data[8 + size :]))
    assert parts[0][0] == parts[1][0]
    assert parts[0][1] == parts[1][1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    """Each family's model, perturbed and saved once."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    out = {}
    for name, family in FAMILIES.items():
        model = _perturbed(family.build())
        out[name] = (model, family.save(model, root / name))
    return out


# ---------------------------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize("name", list(FAMILIES))
def test_round_trip_is_bit_identical(name, saved, tmp_path):
    family = FAMILIES[name]
    model, folder = saved[name]
    loaded = family.load(folder)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.config == model.config
    _assert_same_state(loaded.state_dict(), model.state_dict())
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["format"] == family.format
    assert meta["format_version"] == 1
    assert meta["architecture"] == type(model).__name__
    assert meta["config"] == json.loads(json.dumps(config_to_dict(model.config)))
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        assert f.metadata() == {"format": family.format, "format_version": "1"}
    # saving what was loaded writes the same bytes
    again = family.save(loaded, tmp_path / "again")
    _same_files(again, folder)
    assert sorted(p.name for p in again.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temps


def test_emodeca_writes_its_classes(saved):
    meta = json.loads((saved["emodeca"][1] / CONFIG_NAME).read_text())
    assert meta["classes"] == list(EMOTION_CLASSES)


def test_device_argument(saved):
    _, folder = saved["emodeca"]
    assert next(load_emodeca(folder, device="cpu").parameters()).device.type == "cpu"
    assert next(load_pretrained(saved["diffusion"][1], device="cpu").parameters()).is_cpu


# ---------------------------------------------------------------------------------------------
# Folders written before the shared format.


@pytest.mark.parametrize("name", LEGACY_FAMILIES)
def test_legacy_folder_loads_bit_identically(name, tmp_path):
    family = FAMILIES[name]
    folder = LEGACY / name
    loaded = family.load(folder)
    assert not loaded.training
    _assert_same_state(loaded.state_dict(), load_file(str(folder / WEIGHTS_NAME)))
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["format"] == family.format
    assert json.loads(json.dumps(config_to_dict(loaded.config))) == meta["config"]
    # today's writer produces the very same files
    _same_files(family.save(loaded, tmp_path / name), folder)


# ---------------------------------------------------------------------------------------------
# Errors.


def _rewrite(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of ``src`` with top-level ``config.json`` keys changed (None removes one)."""
    dst.mkdir(parents=True)
    meta = json.loads((src / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (dst / CONFIG_NAME).write_text(json.dumps(meta))
    (dst / WEIGHTS_NAME).write_bytes((src / WEIGHTS_NAME).read_bytes())
    return dst


def _error(load: Callable[[Path], Any], folder: Path) -> str:
    with pytest.raises(AssetError) as info:
        load(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", list(FAMILIES))
def test_config_errors(name, saved, tmp_path):
    family = FAMILIES[name]
    _, folder = saved[name]
    config = tmp_path / "x" / CONFIG_NAME

    if family.load is load_recognizer:  # a spec, not only a folder: it names the choices
        with pytest.raises(EmorigError, match=r"absent': expected 'fer', 'emoca:<folder>'"):
            family.load(tmp_path / "absent")
    else:
        assert (
            _error(family.load, tmp_path / "absent")
            == f"{tmp_path / 'absent' / CONFIG_NAME}: not found"
        )

    bad = _rewrite(folder, tmp_path / "x")
    config.write_text("{not json")
    assert _error(family.load, bad).startswith(f"{config}: not valid JSON (JSONDecodeError")

    other = "emorig-something-else"
    _rewrite(folder, tmp_path / "other", format=other)
    message = _error(family.load, tmp_path / "other")
    assert f"config.json: is not an {family.format} model configuration" in message

    _rewrite(folder, tmp_path / "newer", format_version=2)
    message = _error(family.load, tmp_path / "newer")
    assert "has format version 2; this emorig reads up to 1 (upgrade emorig)" in message

    for i, version in enumerate((0, "1", None)):
        _rewrite(folder, tmp_path / f"v{i}", format_version=version)
        message = _error(family.load, tmp_path / f"v{i}")
        assert f"has an invalid format version {version!r}" in message

    _rewrite(folder, tmp_path / "noconfig", config=None)
    assert "has no 'config' section" in _error(family.load, tmp_path / "noconfig")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_settings_and_architecture_errors(name, saved, tmp_path):
    family = FAMILIES[name]
    _, folder = saved[name]
    meta = json.loads((folder / CONFIG_NAME).read_text())

    _rewrite(folder, tmp_path / "extra", config={**meta["config"], "colour": 1})
    message = _error(family.load, tmp_path / "extra")
    assert "colour" in message
    assert "unknown" in message

    if name != "diffusion":  # the diffusion loader knows one architecture and reads no other
        _rewrite(folder, tmp_path / "arch", architecture="Nope")
        assert "unknown architecture 'Nope'" in _error(family.load, tmp_path / "arch")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_weights_errors(name, saved, tmp_path):
    family = FAMILIES[name]
    _, folder = saved[name]

    missing = _rewrite(folder, tmp_path / "missing")
    (missing / WEIGHTS_NAME).unlink()
    assert _error(family.load, missing) == f"{missing / WEIGHTS_NAME}: not found"

    damaged = _rewrite(folder, tmp_path / "damaged")
    (damaged / WEIGHTS_NAME).write_bytes(b"\x00" * 20)
    message = _error(family.load, damaged)
    assert message.startswith(f"{damaged / WEIGHTS_NAME}: not a readable safetensors file (")

    truncated = _rewrite(folder, tmp_path / "truncated")
    data = (folder / WEIGHTS_NAME).read_bytes()
    (truncated / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    assert "not a readable safetensors file" in _error(family.load, truncated)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mismatched_keys_are_listed(name, saved, tmp_path):
    family = FAMILIES[name]
    model, folder = saved[name]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    dropped, reshaped = keys[0], keys[-1]
    del state[dropped]
    state[reshaped] = torch.zeros(3, 1)
    state["extra.weight"] = torch.zeros(2)
    broken = _rewrite(folder, tmp_path / "broken")
    (broken / WEIGHTS_NAME).write_bytes(save_safetensors(state))
    message = _error(family.load, broken)
    assert message.startswith(f"{broken / WEIGHTS_NAME}: does not match its config (")
    assert f"1 missing key: {dropped}" in message
    assert "1 unexpected key: extra.weight" in message
    expected = tuple(model.state_dict()[reshaped].shape)
    assert f"1 mis-shaped key: {reshaped} (3, 1) (expected {expected})" in message


# ---------------------------------------------------------------------------------------------
# The shared pieces.


class _Net(nn.Module):
    def __init__(self, n: int = 3):
        super().__init__()
        self.fc = nn.Linear(n, 2)
        self.bn = nn.BatchNorm1d(2)


def test_strict_loader_tolerates_only_a_missing_batch_counter():
    src, dst = _Net(), _Net()
    state = {k: v for k, v in src.state_dict().items() if "num_batches_tracked" not in k}
    dst.bn.num_batches_tracked.fill_(7)
    load_state_strict(dst, state, "f")
    _assert_same_state(
        {k: v for k, v in dst.state_dict().items() if k in state},
        state,
    )
    assert int(dst.bn.num_batches_tracked) == 0


def test_strict_loader_names_keys_as_the_file_does():
    state = {k: v for k, v in _Net().state_dict().items() if k != "fc.bias"}
    state["fc.weight"] = torch.zeros(2, 4)
    state["bn.weight"] = "not a tensor"
    with pytest.raises(AssetError) as info:
        load_state_strict(
            _Net(),
            state,
            "ckpt.tar",
            "the README",
            names=lambda key: "net." + key,
            unmapped=["other.x"],
        )
    assert str(info.value) == (
        "ckpt.tar: does not match the expected network (1 missing key: net.fc.bias; "
        "1 unexpected key: other.x; 2 mis-shaped keys: net.fc.weight (2, 4) (expected (2, 3)), "
        "net.bn.weight (str, expected a tensor)) (obtain it from the README)"
    )


def test_strict_loader_cuts_long_lists():
    with pytest.raises(AssetError, match=r"13 unexpected keys: k0, .*, k9, \.\.\. \(3 more\)"):
        load_state_strict(
            _Net(), {**_Net().state_dict(), **{f"k{i}": torch.zeros(1) for i in range(13)}}, "f"
        )


def test_read_folder_config_gives_extras_and_accepts_any_format(saved):
    _, folder = saved["emodeca"]
    info = read_folder_config(folder, FolderFormat("emorig-emodeca", 1))
    assert info.source == str(folder / CONFIG_NAME)
    assert (info.format, info.version, info.architecture) == ("emorig-emodeca", 1, "EmoDecaMLP")
    assert info.meta["classes"] == list(EMOTION_CLASSES)
    assert read_folder_config(folder).format == "emorig-emodeca"  # no format asked for
    with pytest.raises(AssetError, match="is not an emorig-diffusionrig model configuration"):
        read_folder_config(folder, FolderFormat("emorig-diffusionrig", 1))


def test_read_safetensors_gives_metadata(saved):
    _, folder = saved["face_encoder"]
    tensors, metadata = read_safetensors(folder / WEIGHTS_NAME)
    assert metadata == {"format": "emorig-face-encoder", "format_version": "1"}
    _assert_same_state(tensors, load_file(str(folder / WEIGHTS_NAME)))


def test_model_folder_imports_no_model_family():
    tree = ast.parse(Path(mf.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert {m for m in imported if m.startswith("emorig")} <= {"emorig.errors", "emorig.io.atomic"}


# ---------------------------------------------------------------------------------------------
# float16 packing.


@pytest.mark.parametrize("name", list(FAMILIES))
def test_packed_folder_loads(name, saved, tmp_path):
    family = FAMILIES[name]
    model, folder = saved[name]
    (folder / "training.json").write_text('{"steps": 3}\n')
    try:
        packed = pack(folder, tmp_path / "packed")
    finally:
        (folder / "training.json").unlink()
    assert (packed / CONFIG_NAME).read_bytes() == (folder / CONFIG_NAME).read_bytes()
    assert (packed / "training.json").read_text() == '{"steps": 3}\n'
    tensors, metadata = read_safetensors(packed / WEIGHTS_NAME)
    assert metadata == {"format": family.format, "format_version": "1"}
    original = model.state_dict()
    for key, value in tensors.items():
        expected_dtype = torch.float16 if original[key].is_floating_point() else original[key].dtype
        assert value.dtype == expected_dtype, key
    loaded = family.load(packed)
    assert loaded.config == model.config
    for key, value in loaded.state_dict().items():
        ref = original[key]
        assert value.dtype == ref.dtype, key
        if ref.is_floating_point():
            assert torch.equal(value, ref.half().to(ref.dtype)), key
        else:
            assert torch.equal(value, ref), key


def test_pack_refuses_what_is_not_a_model_folder(tmp_path):
    with pytest.raises(AssetError, match=r"config\.json: not found"):
        pack(tmp_path, tmp_path / "out")
    (tmp_path / CONFIG_NAME).write_text('{"format": "x", "format_version": 1, "config": {}}')
    with pytest.raises(AssetError, match=r"model\.safetensors: not found"):
        pack(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()

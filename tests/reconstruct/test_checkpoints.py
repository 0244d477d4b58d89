"""Official checkpoints: safe reading, strict key/shape checks, EMOCA folders, our format."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from emorig.errors import AssetError
from emorig.io.pickles import scan_pickle
from emorig.reconstruct.checkpoints import (
    StandIn,
    emoca_config_from_yaml,
    find_emoca_checkpoint,
    from_pretrained,
    load_deca,
    load_emoca,
    load_torch_file,
    save_pretrained,
)
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.emoca import EmocaConfig, EmocaModel
from fixtures_official import (
    EMOCA_CHECKPOINT,
    emoca_cfg,
    write_deca_tar,
    write_emoca_folder,
)

TINY = DecaConfig(backbone_width=4, head_hidden=16)
DECA_NETS = {
    "E_flame": "coarse_encoder",
    "E_detail": "detail_encoder",
    "D_detail": "detail_decoder",
}


def _assert_loaded(model: torch.nn.Module, nets: dict, mapping: dict[str, str]) -> None:
    ours = model.state_dict()
    count = 0
    for net, state in nets.items():
        for key, value in state.items():
            assert torch.equal(ours[f"{mapping[net]}.{key}"], value), f"{net}.{key}"
            count += 1
    assert count == len(ours)


# ---------------------------------------------------------------------------------------------
# Reading torch files safely.


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _EvalExploit:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("legacy", [False, True])
def test_refuses_a_checkpoint_that_calls_os_system(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.tar"
    torch.save(
        {"E_flame": OrderedDict(), "x": _Exploit(marker)},
        str(path),
        _use_new_zipfile_serialization=not legacy,
    )
    with pytest.raises(AssetError, match=r"refused to load: .*(posix|os)\.system"):
        load_torch_file(path)
    with pytest.raises(AssetError, match="system"):
        load_deca(path)
    assert not marker.exists()


def test_refuses_builtins_eval(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _EvalExploit()}, str(path))
    with pytest.raises(AssetError, match=r"(__builtin__|builtins)\.eval"):
        load_torch_file(path)


def test_refuses_torchscript_archives(tmp_path):
    path = tmp_path / "scripted.pt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
            torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    except Exception as err:  # pragma: no cover - TorchScript unavailable
        pytest.skip(f"TorchScript unavailable: {err}")
    with pytest.raises(AssetError, match="TorchScript"):
        load_torch_file(path)


def test_unreadable_files_are_asset_errors(tmp_path):
    with pytest.raises(AssetError, match="not found"):
        load_torch_file(tmp_path / "absent.tar")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    with pytest.raises(AssetError, match="not a readable PyTorch checkpoint"):
        load_torch_file(junk)


# ---------------------------------------------------------------------------------------------
# DECA.


@pytest.mark.slow
def test_real_size_deca_tar_loads_exactly(tmp_path):
    path = tmp_path / "deca_model.tar"
    nets = write_deca_tar(path, training=True)  # with opt, global_step, batch_size
    model = load_deca(path)
    assert not model.training
    _assert_loaded(model, nets, DECA_NETS)


@pytest.mark.parametrize("legacy", [False, True])
def test_tiny_deca_tar_loads_exactly_in_both_formats(tmp_path, legacy):
    path = tmp_path / "deca_model.tar"
    nets = write_deca_tar(path, width=4, hidden=16, legacy=legacy)
    _assert_loaded(load_deca(path, TINY), nets, DECA_NETS)


def test_strict_loading_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    path = tmp_path / "deca_model.tar"
    write_deca_tar(
        path,
        width=4,
        hidden=16,
        drop=("E_flame.layers.2.bias",),
        extra={"E_detail.layers.4.weight": torch.zeros(3)},
        reshape={"D_detail.l1.0.weight": (8192, 180)},
    )
    with pytest.raises(AssetError) as info:
        load_deca(path, TINY)
    message = str(info.value)
    assert "1 missing key: E_flame.layers.2.bias" in message
    assert "1 unexpected key: E_detail.layers.4.weight" in message
    assert "1 mis-shaped key: D_detail.l1.0.weight (8192, 180) (expected (8192, 181))" in message
    assert str(path) in message
    assert "DECA README" in message
    assert "\n" not in message


def test_long_lists_are_cut_after_ten(tmp_path):
    path = tmp_path / "deca_model.tar"
    dropped = tuple(f"E_detail.encoder.layer4.2.bn3.{k}" for k in ("weight", "bias"))
    dropped += tuple(
        f"E_detail.encoder.layer4.{b}.conv{c}.weight" for b in range(3) for c in (1, 2, 3)
    )
    dropped += ("E_detail.layers.0.weight", "E_detail.layers.0.bias")
    write_deca_tar(path, width=4, hidden=16, drop=dropped)
    with pytest.raises(AssetError, match=r"13 missing keys: .*\.\.\. \(3 more\)"):
        load_deca(path, TINY)


def test_wrong_config_is_a_shape_error(tmp_path):
    path = tmp_path / "deca_model.tar"
    write_deca_tar(path, width=4, hidden=16)
    with pytest.raises(AssetError, match="mis-shaped"):
        load_deca(path, DecaConfig(backbone_width=4, head_hidden=16, n_expression=40))


def test_missing_batchnorm_counters_are_tolerated(tmp_path):
    path = tmp_path / "deca_model.tar"
    write_deca_tar(path, width=4, hidden=16, drop=("E_flame.encoder.bn1.num_batches_tracked",))
    model = load_deca(path, TINY)
    assert int(model.coarse_encoder.encoder.bn1.num_batches_tracked) == 0


def test_deca_top_level_entries_are_checked(tmp_path):
    path = tmp_path / "coarse_only.tar"
    nets = write_deca_tar(path, width=4, hidden=16)
    torch.save({"E_flame": nets["E_flame"]}, str(path))
    with pytest.raises(AssetError, match="has no 'E_detail', 'D_detail' entries"):
        load_deca(path, TINY)
    write_deca_tar(path, width=4, hidden=16, top_level={"E_extra": {}})
    with pytest.raises(AssetError, match="1 unexpected top-level key: 'E_extra'"):
        load_deca(path, TINY)
    torch.save([1, 2], str(path))
    with pytest.raises(AssetError, match="dict of state dicts"):
        load_deca(path, TINY)


# ---------------------------------------------------------------------------------------------
# EMOCA.


@pytest.fixture(scope="module")
def emoca_v2(tmp_path_factory) -> dict:
    return write_emoca_folder(tmp_path_factory.mktemp("emoca") / "EMOCA_v2_lr_mse_20", "v2")


def test_emoca_checkpoint_really_pickles_omegaconf(emoca_v2, tmp_path):
    ckpt = emoca_v2["checkpoint"]
    assert ckpt.name == "dataloader_idx_0=3.27.ckpt"
    assert ckpt.parent.name == "deca-epoch=03-val_loss"
    with zipfile.ZipFile(ckpt) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    (tmp_path / "data.pkl").write_bytes(data)
    found = scan_pickle(tmp_path / "data.pkl").globals
    assert "omegaconf.dictconfig.DictConfig" in found
    assert "omegaconf.nodes.AnyNode" in found
    assert "typing.Any" in found
    if importlib.util.find_spec("omegaconf") is None:  # plain torch.load would need it
        with pytest.raises(ModuleNotFoundError, match="omegaconf"):
            torch.load(ckpt, map_location="cpu", weights_only=False)


def test_lightning_objects_become_inert_stand_ins(emoca_v2):
    checkpoint = load_torch_file(emoca_v2["checkpoint"])
    assert checkpoint["epoch"] == 3
    params = checkpoint["hyper_parameters"]["model_params"]
    assert isinstance(params, StandIn)
    assert params.origin == "omegaconf.dictconfig.DictConfig"
    node = params.state["_content"]["n_exp"]
    assert node.origin == "omegaconf.nodes.AnyNode"
    assert node.state["_val"] == 50
    assert node.state["_parent"] is params  # references survive
    meta = params.state["_metadata"].state
    assert meta["object_type"] is dict
    assert meta["key_type"].origin == "typing.Any"
    with pytest.raises(AttributeError):
        params.anything = 1
    with pytest.raises(TypeError):
        type(params).origin = "changed"


@pytest.mark.slow
def test_real_size_emoca_v2_loads_exactly(emoca_v2):
    model = load_emoca(emoca_v2["checkpoint"].parents[3])
    assert isinstance(model, EmocaModel)
    assert not model.training
    assert model.config.variant == "emoca-v2"
    assert model.config.n_expression_outputs == 50
    ours = model.state_dict()
    names = {
        "deca.E_flame.": "coarse_encoder.",
        "deca.E_detail.": "detail_encoder.",
        "deca.D_detail.": "detail_decoder.",
        "deca.E_expression.": "expression_encoder.",
    }
    loaded = 0
    for key, value in emoca_v2["state_dict"].items():
        prefix = next((p for p in names if key.startswith(p)), None)
        if prefix is None:
            continue  # FLAME/renderer buffers and loss networks
        assert torch.equal(ours[names[prefix] + key[len(prefix) :]], value), key
        loaded += 1
    assert loaded == len(ours)


@pytest.mark.slow
def test_emoca_strict_errors_use_the_files_names(tmp_path):
    folder = tmp_path / "DECA"
    write_emoca_folder(
        folder,
        "v1",
        deca_class="DECA",  # EMOCA's re-packaged DECA: E_expression keys are unexpected
        drop=("deca.E_detail.layers.2.bias",),
        extra={
            "deca.E_expression.layers.2.weight": torch.zeros(50, 1024),
            "deca.new_network.weight": torch.zeros(2),
        },
    )
    with pytest.raises(AssetError) as info:
        load_emoca(folder)
    message = str(info.value)
    assert "1 missing key: deca.E_detail.layers.2.bias" in message
    assert "2 unexpected keys: deca.E_expression.layers.2.weight, deca.new_network.weight" in (
        message
    )
    assert "deca.flame" not in message
    assert "lipread" not in message


def _write_cfg(folder: Path, cfg: dict) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("variant", "options", "expected"),
    [
        ("v1", {}, {"variant": "emoca-v1", "predicts_jaw_pose": False}),
        ("v2", {}, {"variant": "emoca-v2", "predicts_global_pose": False}),
        ("v2", {"jaw": True}, {"predicts_jaw_pose": True, "n_expression_outputs": 53}),
        ("v1", {"jaw": True, "global_pose": True}, {"n_expression_outputs": 56}),
    ],
)
def test_emoca_config_from_yaml(tmp_path, variant, options, expected):
    config = emoca_config_from_yaml(_write_cfg(tmp_path, emoca_cfg(variant, **options)))
    assert isinstance(config, EmocaConfig)
    assert (config.n_shape, config.n_albedo, config.n_expression, config.n_detail) == (
        100,
        50,
        50,
        128,
    )
    for key, value in expected.items():
        assert getattr(config, key) == value


def test_emoca_config_reads_the_detail_stage(tmp_path):
    cfg = emoca_cfg("v1")
    cfg["detail"]["model"]["exp_deca_jaw_pose"] = True  # the stage EMOCA's loader uses
    assert emoca_config_from_yaml(_write_cfg(tmp_path, cfg)).predicts_jaw_pose
    cfg = emoca_cfg("v1", deca_class="DECA")
    config = emoca_config_from_yaml(_write_cfg(tmp_path, cfg))
    assert type(config) is DecaConfig
    assert config.variant == "deca"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"expression_backbone": "deca_parallel"}, "expression_backbone='deca_parallel'"),
        ({"deca_class": "EMICA"}, "deca_class='EMICA'"),
        ({"n_pose": 3}, "n_pose=3"),
        ({"e_flame_type": "swin_base_patch4_window7_224"}, "e_flame_type"),
        ({"detail_conditioning": ["jawpose", "identity", "detail"]}, "detail_conditioning"),
        ({"n_exp": None}, "model.n_exp is None"),
    ],
)
def test_emoca_config_refusals(tmp_path, edit, message):
    cfg = emoca_cfg("v2")
    cfg["detail"]["model"].update(edit)
    with pytest.raises(AssetError, match=message):
        emoca_config_from_yaml(_write_cfg(tmp_path, cfg))


def test_emoca_config_refuses_other_files(tmp_path):
    with pytest.raises(AssetError, match=r"detail\.model"):
        emoca_config_from_yaml(_write_cfg(tmp_path, {"coarse": {"data": {}}}))
    (tmp_path / "cfg.yaml").write_text("coarse: [unclosed")
    with pytest.raises(AssetError, match="YAML"):
        emoca_config_from_yaml(tmp_path / "cfg.yaml")
    with pytest.raises(AssetError, match=r"no cfg\.yaml"):
        load_emoca(tmp_path / "nothing")


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / "detail" / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_checkpoint_choice_follows_emoca(tmp_path):
    _touch(
        tmp_path,
        "deca-epoch=01-val_loss/dataloader_idx_0=4.10.ckpt",
        "deca-epoch=03-val_loss/dataloader_idx_0=3.27.ckpt",
        "deca-epoch=05-val_loss/dataloader_idx_0=3.60.ckpt",
        "last.ckpt",
    )
    assert find_emoca_checkpoint(tmp_path) == tmp_path / EMOCA_CHECKPOINT


def test_checkpoint_choice_edge_cases(tmp_path):
    with pytest.raises(AssetError, match="no checkpoint"):
        find_emoca_checkpoint(tmp_path)
    _touch(tmp_path, "last.ckpt")
    assert find_emoca_checkpoint(tmp_path).name == "last.ckpt"  # the only one
    _touch(tmp_path, "other.ckpt")
    with pytest.raises(AssetError, match="none is named"):
        find_emoca_checkpoint(tmp_path)


def test_lightning_checkpoint_without_state_dict(tmp_path):
    _write_cfg(tmp_path, emoca_cfg("v1"))
    ckpt = tmp_path / EMOCA_CHECKPOINT
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 1}, str(ckpt))
    with pytest.raises(AssetError, match="no 'state_dict'"):
        load_emoca(tmp_path)


# ---------------------------------------------------------------------------------------------
# Our format.


@pytest.mark.parametrize(
    "model",
    [
        DecaModel(TINY),
        EmocaModel(EmocaConfig(backbone_width=4, head_hidden=16, predicts_jaw_pose=True)),
    ],
    ids=["deca", "emoca-jaw"],
)
def test_save_and_load_give_identical_outputs(tmp_path, model):
    model = model.eval()
    folder = save_pretrained(model, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "emorig-face-encoder"
    assert meta["format_version"] == 1
    assert meta["architecture"] == type(model).__name__
    loaded = from_pretrained(folder)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert not loaded.training
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = model.encode(images), loaded.encode(images)
        for name in ("shape", "expression", "jaw_pose", "global_pose", "light", "detail"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(model.displacement(a), loaded.displacement(b))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_from_pretrained_refusals(tmp_path):
    folder = save_pretrained(DecaModel(TINY), tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())

    def rewrite(**changes):
        (folder / "config.json").write_text(json.dumps({**meta, **changes}))

    rewrite(format_version=2)
    with pytest.raises(AssetError, match="format version 2"):
        from_pretrained(folder)
    rewrite(format="something-else")
    with pytest.raises(AssetError, match="is not an emorig-face-encoder"):
        from_pretrained(folder)
    rewrite(config={**meta["config"], "n_layers": 3})
    with pytest.raises(AssetError, match="n_layers"):
        from_pretrained(folder)
    rewrite(config={**meta["config"], "n_expression": 40})
    with pytest.raises(AssetError, match="mis-shaped"):
        from_pretrained(folder)
    rewrite()
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AssetError, match="safetensors"):
        from_pretrained(folder)
    with pytest.raises(AssetError, match="not found"):
        from_pretrained(tmp_path / "absent")

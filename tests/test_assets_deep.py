"""``emorig assets check`` reads contents with the loaders the commands use: a checkpoint a
command would refuse (code-executing pickle, wrong keys) is BROKEN with the loader's reason and
a non-zero exit status; a missing asset folder is one line and exit status 2."""

from __future__ import annotations

import os
import shlex
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from emorig.assets import check_assets
from emorig.cli.main import main
from emorig.diffusion import RigConfig, RigModel
from fixtures_official import write_deca_tar, write_emoca_recognizer_folder

# A DiffusionRig-layout model small enough to write in a test, whose architecture can be
# inferred from its tensor shapes (as tests/diffusion/conftest.py's OFFICIAL_TINY).
TINY_RIG = RigConfig(
    image_size=32,
    channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(16,),
    latent_dim=8,
    encoder_width=4,
)


class _RunsAShellCommand:
    """Unpickled by a plain ``pickle.load``, this would call ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil(marker: Path) -> _RunsAShellCommand:
    return _RunsAShellCommand(f"touch {shlex.quote(str(marker))}")


def _status(home: Path, key: str):
    return {s.key: s for s in check_assets(home)}[key]


def _cli(home: Path, capsys) -> tuple[int, str, str]:
    rc = main(["assets", "check", "--assets", str(home)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _line(out: str, key: str) -> str:
    return next(line for line in out.splitlines() if f" {key} " in line)


def test_a_code_executing_deca_pickle_is_broken_and_never_runs(tmp_path, capsys):
    home = tmp_path / "assets"
    home.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"E_flame": {}, "E_detail": {}, "D_detail": _evil(marker)}, home / "deca_model.tar")

    status = _status(home, "deca_model")
    assert not status.ok
    assert "refused" in status.message
    assert "system" in status.message
    assert str(home / "deca_model.tar") in status.message
    assert "\n" not in status.message

    rc, out, _ = _cli(home, capsys)
    assert rc == 1
    assert _line(out, "deca_model").startswith("BROKEN")
    assert not marker.exists()


def test_a_legacy_format_code_executing_pickle_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(
        {"E_flame": _evil(marker)},
        tmp_path / "deca_model.tar",
        _use_new_zipfile_serialization=False,
    )
    status = _status(tmp_path, "deca_model")
    assert not status.ok
    assert "refused" in status.message
    assert not marker.exists()


def test_a_deca_tar_with_wrong_keys_is_broken_with_the_loaders_reason(tmp_path, capsys):
    path = tmp_path / "deca_model.tar"
    write_deca_tar(path, width=4, hidden=16, top_level={"E_extra": {}})
    status = _status(tmp_path, "deca_model")
    assert not status.ok
    assert "1 unexpected top-level key: 'E_extra'" in status.message

    write_deca_tar(path, width=4, hidden=16, drop=("E_flame.layers.2.bias",))
    status = _status(tmp_path, "deca_model")
    assert not status.ok
    assert "missing key" in status.message  # the strict loader's key list
    assert "mis-shaped" in status.message  # a tiny network is not DECA's
    assert "DECA README" in status.message  # where to obtain it
    rc, out, _ = _cli(tmp_path, capsys)
    assert rc == 1
    assert "mis-shaped" in _line(out, "deca_model")


@pytest.mark.slow
def test_a_real_size_deca_tar_is_ok_and_checked_in_seconds(tmp_path):
    write_deca_tar(tmp_path / "deca_model.tar", training=True)
    start = time.perf_counter()
    status = _status(tmp_path, "deca_model")
    seconds = time.perf_counter() - start
    assert status.ok, status.message
    assert "every key and shape" in status.message
    assert seconds < 30  # about a second on a laptop; never minutes


def test_a_malicious_diffusionrig_model_is_broken(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"denoisingUNet.x": torch.zeros(1), "y": _evil(marker)}, tmp_path / "model.pt")
    status = _status(tmp_path, "diffusionrig")
    assert not status.ok
    assert "not a readable PyTorch state dict" in status.message
    rc, out, _ = _cli(tmp_path, capsys)
    assert rc == 1
    assert _line(out, "diffusionrig").startswith("BROKEN")
    assert not marker.exists()


def test_diffusionrig_models_are_loaded_strictly(tmp_path):
    state = OrderedDict(RigModel(TINY_RIG).state_dict())
    torch.save(state, tmp_path / "model050000.pt")
    status = _status(tmp_path, "diffusionrig")
    assert status.ok, status.message
    assert "DiffusionRig weights" in status.message

    del state["encoder.fc.bias"]
    torch.save(state, tmp_path / "model050000.pt")
    status = _status(tmp_path, "diffusionrig")
    assert not status.ok
    assert "encoder.fc.bias" in status.message


def test_emotion_recogniser_and_emoca_folders_are_loaded(tmp_path):
    recogniser = tmp_path / "EmotionRecognition" / "ResNet50"
    # flat checkpoints/*.ckpt: the catalogue's folder match does not look deeper (yet)
    write_emoca_recognizer_folder(
        recogniser, width=4, n_identities=3, checkpoint="checkpoints/deca-epoch=05.ckpt"
    )
    status = _status(tmp_path, "emotion_recognizer")
    assert status.ok, status.message
    assert "emotion recogniser" in status.message

    emoca = tmp_path / "EMOCA" / "EMOCA_v2_lr_mse_20"
    ckpt = emoca / "detail" / "checkpoints" / "deca-epoch=03-val_loss=0.1.ckpt"
    ckpt.parent.mkdir(parents=True)
    (emoca / "cfg.yaml").write_text("model: {}\n")
    ckpt.write_bytes(b"<html>quota exceeded</html>")
    status = _status(tmp_path, "emoca_model")
    assert not status.ok
    assert str(emoca / "cfg.yaml") in status.message or str(emoca) in status.message


def test_a_missing_asset_folder_is_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    rc, out, err = _cli(tmp_path / "missing_dir", capsys)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "missing_dir" in err
    assert "does not exist" in err

    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("EMORIG_HOME", str(tmp_path / "a_file"))
    assert main(["assets", "check"]) == 2
    assert "EMORIG_HOME" in capsys.readouterr().err


def test_help_says_what_is_checked(capsys):
    with pytest.raises(SystemExit):
        main(["assets", "check", "--help"])
    text = capsys.readouterr().out
    for word in ("deca_model.tar", "weights_only", "Exit status", "does not exist"):
        assert word in text

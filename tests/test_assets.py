"""Asset registry: finding files by name, EMORIG_HOME, cheap checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from emorig import assets
from emorig.assets import (
    ASSETS,
    ENV_VAR,
    AssetSpec,
    asset_home,
    asset_spec,
    check_assets,
    find_asset,
    obtain_text,
    spec_for_file,
)
from emorig.errors import AssetError
from fixtures_official import (
    write_flame2020_pkl,
    write_flame_texture_npz,
    write_head_template_obj,
    write_landmark_embedding_npy,
)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_registry_entries():
    keys = [spec.key for spec in ASSETS]
    assert len(keys) == len(set(keys))
    for spec in ASSETS:
        assert isinstance(spec, AssetSpec)
        assert spec.filenames
        assert spec.obtain
        assert spec.terms
        assert spec.kind in ("file", "folder")
        assert spec.required_for
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.key = "x"  # type: ignore[misc]
    expected = {
        "generic_model.pkl",
        "flame2023.pkl",
        "flame2023_no_jaw.pkl",
        "flame2023_Open.pkl",
        "landmark_embedding.npy",
        "mediapipe_landmark_embedding.npz",
        "head_template.obj",
        "FLAME_texture.npz",
        "FLAME_albedo_from_BFM.npz",
        "uv_face_eye_mask.png",
        "uv_face_mask.png",
        "fixed_displacement_256.npy",
        "deca_model.tar",
        "model*.pt",
        "cfg.yaml",
    }
    assert expected == {name for spec in ASSETS for name in spec.filenames}
    assert asset_spec("flame2023_open").terms == "CC BY 4.0"
    with pytest.raises(KeyError, match="unknown asset"):
        asset_spec("nope")


def test_spec_for_file_and_obtain_text():
    assert spec_for_file("/x/generic_model.pkl").key == "flame2020"
    assert spec_for_file("FLAME_TEXTURE.NPZ").key == "flame_texture"
    assert spec_for_file("model050000.pt").key == "diffusionrig"
    assert spec_for_file("other.pkl") is None
    assert "FLAME 2020" in obtain_text("other.pkl", default_key="flame2020")
    assert obtain_text("other.pkl") is None


def test_asset_home_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert asset_home(None) is None
    assert asset_home("") is None
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert asset_home(None) == tmp_path / "env"
    assert asset_home(tmp_path / "cli") == tmp_path / "cli"
    monkeypatch.setenv(ENV_VAR, "~/assets")
    assert asset_home(None) == Path.home() / "assets"


def test_find_in_nested_folders(tmp_path):
    deep = _touch(tmp_path / "FLAME2020" / "a" / "b" / "generic_model.pkl")
    assert find_asset("flame2020", tmp_path) == deep
    _touch(tmp_path / "DECA" / "data" / "head_template.obj")
    assert find_asset("head_template", tmp_path).parent.name == "data"


def test_depth_limit_and_hidden_folders(tmp_path):
    _touch(tmp_path / "1" / "2" / "3" / "4" / "5" / "generic_model.pkl")  # 5 levels: too deep
    _touch(tmp_path / ".cache" / "generic_model.pkl")
    with pytest.raises(AssetError, match="not found under"):
        find_asset("flame2020", tmp_path)
    ok = _touch(tmp_path / "1" / "2" / "3" / "4" / "generic_model.pkl")
    assert find_asset("flame2020", tmp_path) == ok


def test_deterministic_choice(tmp_path):
    _touch(tmp_path / "b" / "generic_model.pkl")
    _touch(tmp_path / "a" / "generic_model.pkl")
    _touch(tmp_path / "a" / "z" / "generic_model.pkl")
    assert find_asset("flame2020", tmp_path) == tmp_path / "a" / "generic_model.pkl"
    shallow = _touch(tmp_path / "generic_model.pkl")
    assert find_asset("flame2020", tmp_path) == shallow
    # earlier accepted names win over later ones
    _touch(tmp_path / "flame2023_no_jaw.pkl")
    preferred = _touch(tmp_path / "x" / "flame2023.pkl")
    assert find_asset("flame2023", tmp_path) == preferred


def test_case_insensitive_names(tmp_path):
    path = _touch(tmp_path / "flame_texture.NPZ")
    assert find_asset("flame_texture", tmp_path) == path


def test_env_var_is_honoured(tmp_path, monkeypatch):
    path = _touch(tmp_path / "deca" / "deca_model.tar")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert find_asset("deca_model", asset_home(None)) == path


def test_no_home_message(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(AssetError) as err:
        find_asset("flame2020", asset_home(None))
    message = str(err.value)
    assert "generic_model.pkl" in message
    assert "--assets DIR" in message
    assert ENV_VAR in message


def test_missing_asset_message(tmp_path):
    with pytest.raises(AssetError) as err:
        find_asset("flame_texture", tmp_path)
    message = str(err.value)
    assert f"not found under {tmp_path}" in message
    assert "expected a file named FLAME_texture.npz" in message
    assert "obtain it from https://flame.is.tue.mpg.de" in message
    assert "texture space" in message
    with pytest.raises(AssetError, match="asset folder does not exist"):
        find_asset("flame2020", tmp_path / "nope")


def test_folder_assets(tmp_path):
    emoca = tmp_path / "EMOCA" / "models" / "EMOCA_v2_lr_mse_20"
    _touch(emoca / "cfg.yaml")
    with pytest.raises(AssetError, match="detail/checkpoints"):
        find_asset("emoca_model", tmp_path)  # cfg.yaml alone is not a model
    _touch(emoca / "detail" / "checkpoints" / "deca-epoch=03-val_loss=0.1.ckpt")
    assert find_asset("emoca_model", tmp_path) == emoca
    other = tmp_path / "EMOCA" / "models" / "AAA_custom"
    _touch(other / "cfg.yaml")
    _touch(other / "detail" / "checkpoints" / "x.ckpt")
    assert find_asset("emoca_model", tmp_path) == emoca  # the default model name is preferred

    with pytest.raises(AssetError):
        find_asset("emotion_recognizer", tmp_path)  # EMOCA folders are not recognisers
    recog = tmp_path / "EmotionRecognition" / "image_based_networks" / "ResNet50"
    _touch(recog / "cfg.yaml")
    _touch(recog / "checkpoints" / "deca-epoch=01.ckpt")
    assert find_asset("emotion_recognizer", tmp_path) == recog
    assert find_asset("emoca_model", tmp_path) == emoca
    # EMOCA's own layout nests checkpoints one folder down (deca-epoch=.../...=loss.ckpt)
    nested = tmp_path / "more" / "SWIN-B"
    _touch(nested / "cfg.yaml")
    _touch(nested / "checkpoints" / "deca-epoch=01-val_loss" / "dataloader_idx_0=1.2.ckpt")
    (recog / "checkpoints" / "deca-epoch=01.ckpt").unlink()
    assert find_asset("emotion_recognizer", tmp_path) == nested


def test_diffusionrig_pattern(tmp_path):
    _touch(tmp_path / "ckpt" / "opt050000.pt")
    path = _touch(tmp_path / "ckpt" / "model050000.pt")
    assert find_asset("diffusionrig", tmp_path) == path


def test_check_assets(tmp_path):
    (tmp_path / "FLAME2020").mkdir()
    write_flame2020_pkl(tmp_path / "FLAME2020" / "generic_model.pkl")
    (tmp_path / "deca").mkdir()
    write_landmark_embedding_npy(tmp_path / "deca" / "landmark_embedding.npy")
    write_head_template_obj(tmp_path / "deca" / "head_template.obj")
    write_flame_texture_npz(tmp_path / "FLAME_texture.npz")
    _touch(tmp_path / "mediapipe_landmark_embedding.npz", b"this is not a zip")
    _touch(tmp_path / "flame2023.pkl", b"<html>login</html>")

    statuses = check_assets(tmp_path)
    assert [s.key for s in statuses] == [spec.key for spec in ASSETS]
    by_key = {s.key: s for s in statuses}
    for key in ("flame2020", "landmark_embedding", "head_template", "flame_texture"):
        assert by_key[key].ok, by_key[key].message
        assert by_key[key].path is not None
        assert by_key[key].path.is_file()
    assert "6 components" in by_key["flame_texture"].message
    for key in ("mediapipe_embedding", "flame2023"):
        assert not by_key[key].ok
        assert by_key[key].path is not None
        assert str(by_key[key].path) in by_key[key].message
    for key in ("flame2023_open", "bfm_albedo", "deca_model", "emoca_model", "diffusionrig"):
        assert not by_key[key].ok
        assert by_key[key].path is None
        assert "not found under" in by_key[key].message
    assert "flame2023_Open.pkl" in by_key["flame2023_open"].message


def test_check_assets_is_cheap_for_flame(tmp_path, monkeypatch):
    write_flame2020_pkl(tmp_path / "generic_model.pkl")

    def no_full_load(*args, **kwargs):
        raise AssertionError("check_assets must not unpickle the model")

    monkeypatch.setattr("emorig.io.pickles.load_pickle", no_full_load)
    monkeypatch.setattr("emorig.io.flame_files.load_pickle", no_full_load)
    status = check_assets(tmp_path)[0]
    assert status.key == "flame2020"
    assert status.ok, status.message


def test_check_assets_flags_wrong_keys(tmp_path):
    import numpy as np

    np.savez(tmp_path / "FLAME_texture.npz", mean=np.zeros((4, 4, 3)))
    write_dir = tmp_path / "x"
    write_dir.mkdir()
    (write_dir / "generic_model.pkl").write_bytes(
        b"\x80\x02}q\x00X\x01\x00\x00\x00fK\x01s."
    )  # a dict with only key 'f'
    by_key = {s.key: s for s in check_assets(tmp_path)}
    assert not by_key["flame_texture"].ok
    assert "tex_dir" in by_key["flame_texture"].message
    assert not by_key["flame2020"].ok
    assert "missing keys" in by_key["flame2020"].message
    assert "obtain it from" in by_key["flame2020"].message
    evil = tmp_path / "x" / "generic_model.pkl"
    evil.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    status = {s.key: s for s in check_assets(tmp_path)}["flame2020"]
    assert not status.ok
    assert "os.system" in status.message


def test_check_assets_without_home(monkeypatch):
    statuses = check_assets(None)
    assert len(statuses) == len(ASSETS)
    assert all(not s.ok and s.path is None and ENV_VAR in s.message for s in statuses)


def test_readers_need_neither_scipy_nor_chumpy(tmp_path):
    """Importing and using the readers never imports scipy or chumpy (fresh interpreter)."""
    import subprocess
    import sys

    write_flame2020_pkl(tmp_path / "generic_model.pkl")
    code = (
        "import sys, emorig.assets, emorig.io\n"
        f"emorig.io.read_flame({str(tmp_path / 'generic_model.pkl')!r})\n"
        "emorig.assets.check_assets(sys.argv[1])\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('scipy', 'chumpy')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert assets.MAX_DEPTH == 4


def test_deca_detail_files_are_checked(tmp_path):
    from pathlib import Path

    import numpy as np
    from PIL import Image

    upstream = Path(__file__).resolve().parents[2] / "shared" / "upstream-data" / "deca"
    if (upstream / "uv_face_eye_mask.png").exists():
        import shutil

        shutil.copy(upstream / "uv_face_eye_mask.png", tmp_path)
    else:
        Image.fromarray(np.zeros((256, 256, 4), np.uint8)).save(tmp_path / "uv_face_eye_mask.png")
    np.save(tmp_path / "fixed_displacement_256.npy", np.zeros((256, 256)))
    (tmp_path / "uv_face_mask.png").write_text("not a png")
    status = {s.key: s for s in check_assets(tmp_path)}
    assert status["uv_face_eye_mask"].ok
    assert "UV mask" in status["uv_face_eye_mask"].message
    assert status["fixed_displacement"].ok
    assert not status["uv_face_mask"].ok
    assert "uv_face_mask.png" in status["uv_face_mask"].message

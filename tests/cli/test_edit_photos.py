"""``emorig edit`` on a real photo (scikit-image's astronaut, offline): warp edits at the photo's
own resolution, emotion edits checked on the pixels, the guard for synthetic-trained models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emorig.cli.main import main


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.fixture
def small_predictor(monkeypatch):
    """A small code-space emotion predictor (what is tested here is the edit, not it)."""
    import emorig.edit.emotion as emotion

    small = {"steps": 150, "batch_size": 128, "seed": 0, "hidden": 128}
    monkeypatch.setattr(emotion, "CODE_PREDICTOR_SETTINGS", small)


def test_warp_edit_writes_the_photo_at_its_own_size(photo, tmp_path, capsys):
    out = tmp_path / "jaw"
    assert main(["edit", "--source", str(photo), "--face", "jaw=14", "--out", str(out)]) == 0
    edited = np.asarray(Image.open(out / "astronaut_jaw=14.png"))
    original = np.asarray(Image.open(photo))
    assert edited.shape == original.shape
    changed = np.abs(edited.astype(int) - original.astype(int)).max(-1) > 8
    assert 0.002 < changed.mean() < 0.2  # the lower face moved, not the whole photo
    ys, _ = np.nonzero(changed)
    assert ys.mean() > 150  # below the eyes (the face spans about y 60..260)
    record = json.loads((out / "edits.json").read_text())
    assert record["method"] == "warp"
    assert record["model"] is None
    assert record["photos"][0]["faces_in_photo"] == 1
    assert (out / "astronaut_grid.png").is_file()
    assert "(warp)" in capsys.readouterr().out


def test_emotion_edit_on_a_real_photo_raises_the_recogniser(photo, tmp_path, small_predictor):
    pytest.importorskip("fer")
    out = tmp_path / "sad"
    code = main(
        ["edit", "--source", str(photo), "--emotion", "sad", "--sweep", "3", "--out", str(out)]
    )
    record = json.loads((out / "edits.json").read_text())
    check = record["emotion_checks"]["astronaut"]
    assert code == 0, check["problems"]
    assert check["moved"] is True
    assert check["probabilities_after"]["sad"] > check["probabilities_before"]["sad"]
    assert check["code_change"] > 0.05
    assert min(check["sweep_frame_change"]) > 0.25
    assert len(check["found_code"]["expression"]) > 0
    for suffix in ("sad.png", "sad_sweep.png", "grid.png"):
        assert (out / f"astronaut_{suffix}").is_file(), suffix


def test_methods_that_need_a_model_say_so(photo, tmp_path, capsys):
    for method in ("diffusion", "warp+diffusion"):
        code = main(
            ["edit", "--source", str(photo), "--method", method, "--face", "smile",
             "--out", str(tmp_path / method)]
        )  # fmt: skip
        assert code != 0
        err = capsys.readouterr().err
        assert "needs a diffusion model" in err
        assert "Traceback" not in err
    code = main(["edit", "--source", str(photo), "--out", str(tmp_path / "none")])
    assert code != 0
    assert "give one kind of change" in capsys.readouterr().err


def test_a_synthetic_trained_model_on_a_photo_warns_once(photo, tmp_path, capsys):
    from emorig.weights import STAGE1_NAME, packaged_weights

    model = packaged_weights(STAGE1_NAME)
    out = tmp_path / "refined"
    code = main(
        ["edit", "--source", str(photo), "--method", "warp+diffusion", "--model", str(model),
         "--face", "jaw=10", "--strength", "0.3", "--steps", "ddim5", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "trained on synthetic renders" in line]
    assert len(warnings) == 1
    assert "--method warp" in warnings[0]
    edited = np.asarray(Image.open(out / "astronaut_jaw=10.png"))
    assert edited.shape == np.asarray(Image.open(photo)).shape


def test_bad_photos_say_one_line_each(photo, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), (120, 140, 160)).save(blank)
    code = main(["edit", "--source", str(blank), "--face", "smile", "--out", str(tmp_path / "a")])
    assert code != 0
    err = capsys.readouterr().err
    assert "blank.png: no face found" in err
    assert "no usable face" in err
    assert "Traceback" not in err
    # two people: the largest is edited, and the command says so
    face = np.asarray(Image.open(photo))[:300, 100:400]
    pair = np.ascontiguousarray(np.concatenate([face, face[:, ::-1]], 1))  # her and her mirror
    two = tmp_path / "two.png"
    Image.fromarray(pair).save(two)
    code = main(["edit", "--source", str(two), "--face", "jaw=10", "--out", str(tmp_path / "b")])
    assert code == 0
    err = capsys.readouterr().err
    assert "2 faces; editing the largest" in err

"""The code-space emotion predictor is trained once and then loaded from the user's cache
(``$EMORIG_CACHE`` here points at tmp_path); ``edits.json`` of an emotion edit says what ran;
a mistyped ``--model`` gets a one-line "does not exist"."""

import json
from pathlib import Path

import pytest
import torch

import emorig.edit.emotion as emotion
from emorig.edit.predictor_cache import cache_root, cached_emodeca
from emorig.flame.builtin import builtin_head
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

TINY = {"steps": 3, "batch_size": 8, "seed": 0, "hidden": 16}


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """``EMORIG_CACHE`` in tmp_path, tiny training settings, and a count of trainings."""
    monkeypatch.setenv("EMORIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(emotion, "CODE_PREDICTOR_SETTINGS", dict(TINY))
    calls = []
    real = emotion.train_code_predictor

    def train_code_predictor(renderer, **settings):
        calls.append(settings)
        return real(renderer, **settings)

    monkeypatch.setattr(emotion, "train_code_predictor", train_code_predictor)
    return calls


def _codes(b=3):
    g = torch.Generator().manual_seed(1)
    code = FaceCode.neutral(batch_size=b)
    return code.replace(
        expression=torch.randn(code.expression.shape, generator=g),
        jaw_pose=0.1 * torch.rand(b, 3, generator=g),
    )


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMORIG_CACHE", str(tmp_path / "a"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("EMORIG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "emorig"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "emorig"


def test_second_call_loads_and_predicts_the_same(renderer, counted, tmp_path):
    said = []
    first = emotion.emotion_predictor("auto", renderer, "builtin", None, "cpu", said.append)
    assert len(counted) == 1
    assert first.info["trained_now"] is True
    second = emotion.emotion_predictor("codes", renderer, "builtin", None, "cpu", said.append)
    assert len(counted) == 1, "the second call retrained"
    assert second.info["trained_now"] is False
    assert second.info["cache"] == first.info["cache"]
    assert str(tmp_path / "cache") in first.info["cache"]
    assert any("cached" in s for s in said)
    code = _codes()
    a, b = first(code), second(code)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.valence_arousal, b.valence_arousal)
    # other settings are another entry; no temporary folders are left behind
    emotion.cached_code_predictor(renderer, "builtin", settings={**TINY, "seed": 1})
    assert len(counted) == 2
    entries = list((tmp_path / "cache" / "code-predictor").iterdir())
    assert len(entries) == 2
    assert not [e for e in entries if e.name.startswith(".")]


@pytest.mark.parametrize("damage", ["weights", "config", "key", "empty"])
def test_a_damaged_entry_is_retrained(renderer, counted, damage):
    first = emotion.emotion_predictor("codes", renderer, "builtin", None, "cpu")
    folder = Path(first.info["cache"])
    if damage == "weights":
        (folder / "model.safetensors").write_bytes(b"not safetensors")
    elif damage == "config":
        (folder / "config.json").write_text("{")
    elif damage == "key":
        (folder / "key.json").write_text(json.dumps({"head": "other"}))
    else:
        for f in folder.iterdir():
            f.unlink()
    said = []
    again = emotion.emotion_predictor("codes", renderer, "builtin", None, "cpu", said.append)
    assert len(counted) == 2
    assert any("unusable" in s for s in said)
    assert torch.equal(again(_codes()).logits, first(_codes()).logits)  # same seed, same MLP
    emotion.emotion_predictor("codes", renderer, "builtin", None, "cpu")
    assert len(counted) == 2  # the repaired entry is used


def test_an_unwritable_cache_still_gives_a_predictor(renderer, counted, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EMORIG_CACHE", str(blocker))
    said = []
    mlp = cached_emodeca("x", {"a": 1}, lambda: emotion.train_code_predictor(renderer, **TINY).mlp,
                         say=said.append)  # fmt: skip
    assert mlp is not None
    assert any("could not cache" in s for s in said)


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model on a tiny album."""
    from rig_helpers import album, tiny_model

    root = tmp_path_factory.mktemp("edit")
    data = album(root / "album", 4)
    return data, tiny_model(data, root / "run", steps=2, batch_size=4)


def test_edits_json_records_the_emotion_edit(trained, counted, tmp_path):
    from emorig.cli.main import main

    data, folder = trained
    out = tmp_path / "emotion"
    args = ["edit", "--model", str(folder), "--source", str(data), "--indices", "1",
            "--emotion", "sad", "--intensity", "0.5", "--sweep", "3", "--steps", "ddim2",
            "--out", str(out)]  # fmt: skip
    # a 2-step model barely moves the face: the status follows the pixel check (1: not moved)
    statuses = [main(args), main(args)]
    assert len(counted) == 1  # the second edit loaded the predictor
    record = json.loads((out / "edits.json").read_text())
    moved = all(c["moved"] for c in record["emotion_checks"].values())
    assert statuses == [0 if moved else 1] * 2
    assert record["modes"] == ["emotion"]
    edit = record["emotion_edit"]
    assert edit["emotion"] == "sad"
    assert edit["intensity"] == 0.5
    assert edit["valence"] is None
    assert edit["sweep"] == [0.0, 0.25, 0.5]
    assert edit["predictor"]["kind"] == "codes"
    assert edit["predictor"]["trained_now"] is False
    assert edit["predictor"]["settings"] == TINY


def test_a_missing_model_path_says_so(tmp_path, capsys):
    from emorig.cli.main import main

    code = main(["edit", "--model", str(tmp_path / "nosuch"), "--source", str(tmp_path),
                 "--emotion", "sad", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "nosuch: the path does not exist" in err
    assert "config.json + model.safetensors" in err
    assert "model*.pt" in err
    assert "Google Drive" not in err

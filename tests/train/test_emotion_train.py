"""Emotion-recogniser training: learns synthetic emotions above chance, reads CSV and folder
layouts, balances classes, early-stops, and resuming equals an uninterrupted run."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from emorig.emotion.recognizers import load_recognizer
from emorig.errors import EmorigError
from emorig.train.checkpoint import load_checkpoint
from emorig.train.emotion import (
    EmotionTrainConfig,
    augment,
    balanced_indices,
    read_csv_set,
    read_folder_set,
    train_emotion,
)
from emorig.types import EMOTION_CLASSES

TINY = {"backbone": "resnet18", "width": 8, "cpu": True}


@pytest.mark.slow
def test_synthetic_training_beats_chance(tmp_path):
    cfg = EmotionTrainConfig(
        out=str(tmp_path / "run"),
        input_size=64,
        steps=300,
        batch_size=32,
        lr=2e-3,
        val_every=100,
        patience=0,
        synthetic_count=384,
        synthetic_val=128,
        save_every=300,
        **TINY,
    )
    result = train_emotion(cfg)
    chance = 1 / len(EMOTION_CLASSES)
    # 128 validation faces: chance accuracy has a standard deviation of ~0.03.
    assert result.best["e_acc"] > chance + 0.075, result.best
    model = load_recognizer(result.model_folder)
    assert model.config.width == 8
    info = json.loads((result.model_folder / "training.json").read_text())
    assert info["synthetic_data"] is True
    assert info["best_step"] == result.best_step


def _photos(folder, n, seed):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_csv_set_follows_affectnet_conventions(tmp_path):
    photos = _photos(tmp_path, 5, 0)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subDirectory_filePath", "expression", "valence", "arousal"])
        w.writerow([photos[0].name, 1, 0.5, 0.2])
        w.writerow([photos[1].name, "sad", -0.5, -0.1])
        w.writerow([photos[2].name, 9, 0.1, 0.1])  # uncertain: dropped
        w.writerow([photos[3].name, 10, -2, -2])  # no face: dropped
        w.writerow([photos[4].name, 6, -2, -2])  # V/A invalid: class kept, V/A off
    data = read_csv_set(tmp_path / "labels.csv")
    assert data.labels.tolist() == [1, 2, 6]
    assert data.has_va.tolist() == [True, True, False]
    assert data.valence_arousal[0].tolist() == pytest.approx([0.5, 0.2])
    assert data.load([0, 2], 32).shape == (2, 3, 32, 32)


def test_csv_errors_name_the_problem(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.png,1\n")
    with pytest.raises(EmorigError, match="needs columns"):
        read_csv_set(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,expression\nmissing.png,1\n")
    with pytest.raises(EmorigError, match="do not exist"):
        read_csv_set(tmp_path / "b.csv")
    _photos(tmp_path, 1, 0)
    (tmp_path / "c.csv").write_text("path,expression\nimg000.png,joyful\n")
    with pytest.raises(EmorigError, match="line 2"):
        read_csv_set(tmp_path / "c.csv")


def test_folder_set_maps_class_names(tmp_path):
    for name in ("happy", "Angry", "neutral"):
        (tmp_path / name).mkdir()
        _photos(tmp_path / name, 2, 1)
    data = read_folder_set(tmp_path)
    assert sorted(set(data.labels.tolist())) == [0, 1, 6]
    assert not data.has_va.any()
    (tmp_path / "cats").mkdir()
    with pytest.raises(EmorigError, match="not emotion classes"):
        read_folder_set(tmp_path)


def test_balanced_sampling_evens_out_a_skewed_set():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2])
    idx = balanced_indices(labels, 3000, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[idx], minlength=3).float() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.04)


def test_augmentation_keeps_range_and_changes_pixels():
    images = torch.rand(4, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert out.min() >= 0
    assert out.max() <= 1
    assert (out - images).abs().mean() > 0.05


def _folder_run(tmp_path, **over):
    root = tmp_path / "data"
    if not root.exists():
        for name in EMOTION_CLASSES[:3]:
            (root / name).mkdir(parents=True)
            _photos(root / name, 6, EMOTION_CLASSES.index(name))
    base = dict(
        out=str(tmp_path / "run"),
        data=str(root),
        input_size=32,
        steps=6,
        batch_size=4,
        lr=1e-3,
        val_fraction=0.3,
        val_every=2,
        patience=0,
        save_every=1,
        **TINY,
    )
    base.update(over)
    return EmotionTrainConfig(**base)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    whole = train_emotion(_folder_run(tmp_path, out=str(tmp_path / "whole")))
    cfg = _folder_run(tmp_path, out=str(tmp_path / "split"))
    first = train_emotion(cfg, stop_after=3)
    assert first.step == 3
    assert first.model_folder is None
    second = train_emotion(cfg)
    assert second.step == 6
    a = load_checkpoint(tmp_path / "whole" / "checkpoint-00000006.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint-00000006.pt")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    assert whole.best == second.best
    with pytest.raises(EmorigError, match="another configuration"):
        train_emotion(_folder_run(tmp_path, out=str(tmp_path / "split"), lr=5e-4))


def test_early_stopping_saves_the_best_model(tmp_path):
    # Random-noise images carry no emotion: the validation loss stops improving quickly.
    cfg = _folder_run(tmp_path, steps=200, val_every=1, patience=2, lr=1e-2)
    result = train_emotion(cfg)
    assert result.stopped_early
    assert result.step < 200
    assert result.step - result.best_step == 2
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == result.step
    assert load_recognizer(result.model_folder) is not None


def test_cli_trains_and_reports(tmp_path, capsys):
    from emorig.cli.main import main

    cfg = _folder_run(tmp_path)
    code = main(
        [
            "train",
            "emotion",
            "--data",
            cfg.data,
            "--out",
            str(tmp_path / "cli"),
            "--backbone",
            "resnet18",
            "--width",
            "8",
            "--input-size",
            "32",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--val-every",
            "1",
            "--val-fraction",
            "0.3",
            "--cpu",
        ]
    )
    assert code == 0
    assert "model:" in capsys.readouterr().out
    assert main(["train", "emotion", "--data", str(tmp_path / "nope"), "--out", "x"]) == 2

"""``emorig synth`` flags -> config -> files (parser built here; the lead wires it in)."""

import argparse
import json

import pytest

from emorig.cli import synth as synth_cli
from emorig.errors import EmorigError


def _parse(argv):
    parser = argparse.ArgumentParser(prog="emorig")
    synth_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_flags_make_the_config():
    args = _parse(["synth", "--out", "x", "--mode", "multiview", "--views", "3", "--emotions"])
    cfg = synth_cli.config_from_args(args)
    assert (cfg.mode, cfg.count, cfg.views, cfg.emotion_fraction) == ("multiview", 24, 3, 1.0)
    cfg = synth_cli.config_from_args(_parse(["synth", "--out", "x", "--mode", "album"]))
    assert (cfg.count, cfg.album_size, cfg.emotion_fraction, cfg.size) == (20, 20, 0.5, 256)
    with pytest.raises(EmorigError, match="not a multiple"):
        synth_cli.config_from_args(
            _parse(["synth", "--out", "x", "--mode", "multiview", "--count", "7"])
        )


def test_help_says_synthetic(capsys):
    with pytest.raises(SystemExit):
        _parse(["synth", "--help"])
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text
    assert "not photos of people" in text


def test_command_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    args = _parse(
        [
            "synth",
            "--out",
            str(out),
            "--count",
            "3",
            "--size",
            "32",
            "--seed",
            "2",
            "--supersample",
            "1",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "3 SYNTHETIC images" in printed
    labels = json.loads((out / "labels.json").read_text())
    assert labels["config"]["seed"] == 2
    assert len(labels["images"]) == 3
    assert (out / "codes.npz").is_file()
    assert (out / "contact_sheet.png").is_file()

"""The CLI's shared pieces: flags -> config dataclasses, NAME=VALUE lists, every command's
``--help``, and the command modules' import graph."""

import argparse
import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emorig.cli import options
from emorig.cli.main import build_parser, main
from emorig.errors import EmorigError

CLI = Path(__file__).resolve().parents[2] / "src" / "emorig" / "cli"


@dataclass(frozen=True)
class Config:
    out: str
    steps: int = 10
    backbone_width: int = 64
    overrides: dict = field(default_factory=dict)


def test_config_from_args_takes_the_fields_the_namespace_holds():
    args = argparse.Namespace(out="o", steps=3, func=print, command="train", unrelated=1)
    assert options.config_from_args(Config, args) == Config("o", 3)
    # fields missing from the namespace keep their defaults; overrides win
    cfg = options.config_from_args(Config, argparse.Namespace(out="o"), overrides={"a": 1})
    assert cfg == Config("o", 10, 64, {"a": 1})
    assert options.config_from_args(Config, args, steps=5).steps == 5
    with pytest.raises(TypeError, match="no field nope"):
        options.config_from_args(Config, args, nope=1)


def test_config_from_args_with_renamed_dests():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    options.add_backbone(parser, width_dest="backbone_width")
    args = parser.parse_args(["--out", "o", "--width", "8"])
    assert options.config_from_args(Config, args).backbone_width == 8
    assert "--width WIDTH" in parser.format_help()


def test_training_flags_fill_the_training_configs():
    from emorig.train.diffusion import RigTrainConfig
    from emorig.train.recon import ReconTrainConfig

    parser = build_parser()
    args = parser.parse_args(
        ["train", "reconstruct", "--stage", "coarse", "--out", "o", "--width", "8",
         "--loss-weights", "emoca", "--seed", "3", "--cpu"]
    )  # fmt: skip
    cfg = options.config_from_args(ReconTrainConfig, args)
    assert (cfg.backbone_width, cfg.weights, cfg.seed, cfg.cpu) == (8, "emoca", 3, True)
    args = parser.parse_args(
        ["train", "diffusion", "--stage", "stage1", "--data", "d", "--out", "o", "--model",
         "tiny", "--ema", "0.5"]
    )  # fmt: skip
    cfg = options.config_from_args(RigTrainConfig, args)
    assert (cfg.model, cfg.ema, cfg.sample_every, cfg.mixed_precision) == ("tiny", 0.5, 1000, "no")


def test_parse_assignments():
    assert options.parse_assignments(None, "--set", json.loads, "NAME=VALUE") == {}
    values = options.parse_assignments(["a=1", "b=[1, 2]"], "--set", json.loads, "NAME=VALUE")
    assert values == {"a": 1, "b": [1, 2]}
    with pytest.raises(EmorigError, match="--weight a=x: expected NAME=NUMBER"):
        options.parse_assignments(["a=x"], "--weight", float, "NAME=NUMBER")


def test_choices_come_from_the_registries():
    from emorig.flame.heads import HEADS
    from emorig.reconstruct.encoders import encoder_names

    parser = argparse.ArgumentParser()
    options.add_reconstructor(parser)
    options.add_head(parser)
    text = parser.format_help()
    assert "{" + ",".join(encoder_names()) + "}" in text
    assert "{" + ",".join(HEADS) + "}" in text
    assert "builtin" in encoder_names()


def commands(parser: argparse.ArgumentParser, path=()):
    """Every command and sub-command path of ``parser``."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL_COMMANDS = list(commands(build_parser()))


def test_every_command_is_listed():
    names = {" ".join(c) for c in ALL_COMMANDS}
    assert {"demo", "align", "reconstruct", "render", "edit", "evaluate now", "prepare"} <= names
    assert {"train reconstruct", "train emotion", "train diffusion", "assets check"} <= names
    assert {"emotion predict", "emotion evaluate", "synth", "ablation"} <= names


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "emorig")
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: emorig" in capsys.readouterr().out


def cli_imports() -> dict[str, set[str]]:
    """For every module of ``emorig.cli``, the ``emorig.cli`` modules it imports (at the top or
    inside functions)."""
    graph = {}
    for path in CLI.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "emorig.cli":
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emorig.cli."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found |= {
                    a.name.split(".")[2] for a in node.names if a.name.startswith("emorig.cli.")
                }
        graph[path.stem] = found - {path.stem}
    return graph


def test_the_cli_modules_import_no_cycle():
    graph = cli_imports()
    assert graph["output"] == set()
    assert graph["options"] == set()
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, " -> ".join((*stack, name))
        if name not in done:
            for target in graph.get(name, ()):
                visit(target, (*stack, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_top_level_help_builds_no_command_flags(capsys):
    """``emorig --help`` lists every command without building their flags (whose choices
    import torch); a command's own flags are all there when it runs."""
    from emorig.cli.main import COMMANDS, build_parser, command_in

    assert command_in(["render", "--size", "8"]) == "render"
    assert command_in(["--help"]) is None
    light = build_parser("")
    names = {c.NAME for c in COMMANDS}
    sub = next(a for a in light._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == names
    assert all(len(p._actions) == 0 for p in sub.choices.values())  # stubs: no flags at all
    full = build_parser("render")
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for a in sub.choices["render"]._actions for o in a.option_strings}
    assert {"--head", "--face", "--size", "--device"} <= flags


def test_emorig_warnings_become_one_note_line(capsys):
    from emorig.cli.main import _show_warning
    from emorig.train.checkpoint import CheckpointFallbackWarning

    warning = CheckpointFallbackWarning("checkpoint-4.pt cannot be read; resuming from 2")
    _show_warning(warning, CheckpointFallbackWarning, "loop.py", 1)
    assert (
        capsys.readouterr().err == "emorig: note: checkpoint-4.pt cannot be read; resuming from 2\n"
    )
    _show_warning(UserWarning("elsewhere"), UserWarning, "lib.py", 7)
    assert "lib.py:7: UserWarning: elsewhere" in capsys.readouterr().err

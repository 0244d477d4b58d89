"""``emorig ablation``: DiffusionRig vs each DiffusionRig-EMO addition on built-in-head data.
Thin: flags -> :class:`~emorig.demo.ablation.AblationConfig` ->
:func:`~emorig.demo.ablation.run_ablation`."""

from __future__ import annotations

import argparse

from emorig.cli import options
from emorig.cli.output import say

#: The command's name and its line in ``emorig --help``.
NAME = "ablation"
HELP = "DiffusionRig vs each EMO addition on built-in-head data (a Markdown table)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``ablation`` command to ``emorig``'s sub-commands; returns its parser."""
    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description="Fine-tune the demo's stage-1 model the same way with and without the "
        "expression encoder and the emotion loss, score each variant with the evaluation "
        "protocol (expression error by re-reconstruction, identity, emotion accuracy of "
        "emotion edits) and write OUT/ablation.md and OUT/ablation.json. SYNTHETIC data.",
    )
    p.add_argument(
        "--out", default="emorig-out/ablation", type=options.out_dir, help="output folder"
    )
    p.add_argument(
        "--steps", type=options.positive_int, default=200, help="fine-tuning steps per variant"
    )
    p.add_argument(
        "--pairs", type=options.positive_int, default=8, help="edit pairs scored per variant"
    )
    options.add_seed(p)
    p.add_argument(
        "--recognizer", default="fer", help="emotion recogniser of the emotion loss (fer)"
    )
    p.add_argument(
        "--init",
        help="stage-1 model folder every variant starts from (default: the demo's 64 px pixel "
        "model); a latent model (trained with --autoencoder) runs the ablation in its latent "
        "space on faces of its size",
    )
    options.add_device(p)
    p.set_defaults(func=cmd_ablation)
    return p


def cmd_ablation(args: argparse.Namespace) -> int:
    from emorig.demo.ablation import AblationConfig, run_ablation

    path = run_ablation(options.config_from_args(AblationConfig, args), say)
    print(path.read_text())
    return 0


__all__ = ["add_parser", "cmd_ablation"]

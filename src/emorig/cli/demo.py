"""``emorig demo``: the whole pipeline on the built-in synthetic head, nothing downloaded.
Thin: flags -> :class:`~emorig.demo.DemoConfig` -> :func:`~emorig.demo.run_demo`."""

from __future__ import annotations

import argparse

from emorig.cli import options
from emorig.cli.output import say

#: The command's name and its line in ``emorig --help``.
NAME = "demo"
HELP = "the whole pipeline on the built-in synthetic head, with an HTML report"


DESCRIPTION = """\
Run emorig end to end with nothing downloaded: synthesise a personal album, target faces and
a multi-view set from the built-in SYNTHETIC head; load the small stage-1 diffusion model this
project trained on synthetic faces (shipped with emorig; or --train-stage1 STEPS to train one
here); personalise it on the album (stage 2); edit expression, pose and light from target
faces and ask for emotions (with an intensity sweep); evaluate the edits by re-reconstructing
them; write OUT/report.html (self-contained, opens offline) and OUT/report.json.

About 10 minutes on 2 CPU cores; --fast does a smaller version in about 2 minutes."""

EPILOG = """\
All faces are renders of a procedurally generated head, not people; the numbers in the report
say how the pipeline behaves on that head, nothing about real photos."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` command to ``emorig``'s sub-commands; returns its parser."""
    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        default="emorig-out/demo",
        type=options.out_dir,
        help="output folder (emorig-out/demo)",
    )
    p.add_argument("--fast", action="store_true", help="a smaller run (about 2 minutes)")
    options.add_seed(p, "seed of the data and noise")
    p.add_argument("--stage1", metavar="DIR", help="stage-1 model folder (default: shipped)")
    p.add_argument(
        "--train-stage1",
        type=options.non_negative_int,
        default=0,
        metavar="STEPS",
        help="train the stage-1 model here for STEPS steps instead of loading it (slow)",
    )
    options.add_device(p)
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    from emorig.demo import DemoConfig, run_demo

    result = run_demo(options.config_from_args(DemoConfig, args), say)
    print(f"report: {result.report} ({result.seconds:.0f} s)")
    return 0


__all__ = ["add_parser", "cmd_demo"]

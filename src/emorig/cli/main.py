"""The ``emorig`` command: builds the parser from each command module's ``add_parser`` and
dispatches; an :class:`~emorig.errors.EmorigError` becomes one line on stderr (exit status 2).
Each command lives in its own module of :mod:`emorig.cli`."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from emorig import __version__
from emorig.cli import (
    ablation,
    align,
    assets,
    demo,
    edit,
    emotion,
    evaluate,
    prepare,
    reconstruct,
    render,
    studio,
    synth,
    train,
)
from emorig.errors import EmorigError

EPILOG = """\
Licensed files (FLAME, DECA, EMOCA, DiffusionRig) are never downloaded: put them in one folder
and pass --assets DIR or set EMORIG_HOME. Without them every command runs on the built-in
synthetic head (--head builtin), which is procedurally generated and not a model of real faces.
"""

#: The commands in the order ``emorig --help`` lists them.
COMMANDS = (
    demo,
    assets,
    align,
    reconstruct,
    train,
    prepare,
    synth,
    edit,
    evaluate,
    ablation,
    emotion,
    render,
    studio,
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``emorig`` parser with every command, or with all of ``only``'s flags and the other
    commands as names and help lines (their flags read the library's registries, which
    imports torch: ``emorig --help`` and a command's start need not pay for the others)."""
    parser = argparse.ArgumentParser(
        prog="emorig",
        description="Edit the expression, pose and lighting of portrait photos with "
        "DiffusionRig-EMO.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"emorig {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        if only is None or only == command.NAME:
            command.add_parser(subparsers)
        else:
            subparsers.add_parser(command.NAME, help=command.HELP, add_help=False)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs (its first word, when that names one), else None."""
    names = {command.NAME for command in COMMANDS}
    return argv[0] if argv and argv[0] in names else None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """emorig's own warnings (e.g. a damaged checkpoint skipped on resume) as one ``note:``
    line; other libraries' as Python prints them."""
    if category.__module__.startswith("emorig."):
        print(f"emorig: note: {message}", file=sys.stderr, flush=True)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``emorig`` with ``argv`` (default: the process's); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    only = command_in(argv)
    parser = build_parser(only if only is not None else "")
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:  # no command, or a group (assets, train) without its action
        parser.parse_args([args.command, "--help"] if args.command else ["--help"])
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(func(args) or 0)
    except EmorigError as err:
        print(f"emorig: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emorig: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``emorig assets check`` and ``emorig assets convert-flame``: the licensed files emorig can
use, which are present, and FLAME .pkl -> .npz. Thin: flags -> :mod:`emorig.assets` and
:mod:`emorig.io.flame_files`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import say
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "assets"
HELP = "find, check and convert licensed files"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``assets`` (``check``, ``convert-flame``) to ``emorig``'s sub-commands."""
    assets = subparsers.add_parser(NAME, help=HELP)
    sub = assets.add_subparsers(dest="assets_command", metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="list the official files emorig can use, which are present and valid, and where "
        "to obtain the missing ones",
    )
    options.add_assets(check)
    check.set_defaults(func=cmd_check)
    convert = sub.add_parser(
        "convert-flame",
        help="convert a FLAME .pkl (2020, 2023, 2023 Open; chumpy inside) to a clean .npz once",
    )
    convert.add_argument("input", metavar="IN", help="generic_model.pkl, flame2023*.pkl, ...")
    convert.add_argument("output", metavar="OUT", help="the .npz to write")
    convert.set_defaults(func=cmd_convert_flame)
    return assets


def cmd_check(args: argparse.Namespace) -> int:
    from emorig.assets import asset_home, asset_spec, check_assets

    home = asset_home(args.assets)
    if home is None:
        say(
            "no asset folder given (--assets DIR or EMORIG_HOME); listing what emorig can use. "
            "The built-in synthetic head needs none of these."
        )
    else:
        print(f"asset folder: {home}")
    statuses = check_assets(home)
    width = max(len(s.key) for s in statuses)
    pad = " " * (width + 10)
    for s in statuses:
        spec = asset_spec(s.key)
        if s.path is None and home is None:
            print(f"-       {s.key:<{width}}  {spec.display_name}: {spec.what}")
            print(f"{pad}obtain it from {spec.obtain}")
            continue
        mark = "ok     " if s.ok else ("BROKEN " if s.path is not None else "missing")
        print(f"{mark} {s.key:<{width}}  {s.message}")
        if s.path is None:
            print(f"{pad}needed for: {', '.join(spec.required_for)}")
    broken = [s for s in statuses if s.path is not None and not s.ok]
    return 1 if broken else 0


def cmd_convert_flame(args: argparse.Namespace) -> int:
    from emorig.io.flame_files import read_flame, write_flame_npz

    t = time.perf_counter()
    flame = read_flame(args.input)
    out = Path(args.output)
    if out.suffix != ".npz":
        raise EmorigError(
            f"{out}: the converted model is written as .npz; name it e.g. "
            f"{out.with_suffix('.npz').name}"
        )
    write_flame_npz(flame, out)
    print(
        f"wrote {out} ({flame.name}: {flame.n_vertices} vertices, "
        f"{flame.shapedirs.shape[2]} identity + {flame.exprdirs.shape[2]} expression "
        f"components) in {time.perf_counter() - t:.1f} s; load it anywhere a FLAME file is accepted"
    )
    return 0


__all__ = ["add_parser", "cmd_check", "cmd_convert_flame"]

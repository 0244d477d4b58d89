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


CHECK_DESCRIPTION = """\
List the official files emorig can use, check the ones present, and say where to obtain
the missing ones. Each file is checked with the reader the commands use, so a file a command
would refuse is reported BROKEN with that reader's reason:

  FLAME .pkl          scanned without unpickling: no code references, the model's keys
  other DECA files    read with their readers (embeddings, template, UV masks, displacement)
  texture, BFM albedo the npy headers inside the .npz (shapes; the arrays are not read)
  deca_model.tar      loaded as reconstruct loads it: the safe unpickler (a pickle that
                      references code is refused; nothing from it runs), every key and shape
  EMOCA, recogniser   cfg.yaml settings, then the checkpoint as for deca_model.tar
  DiffusionRig .pt    torch.load(weights_only=True), every key and shape

Checkpoints are read once (about a second for DECA's 400 MB). Exit status: 0 when every
file present is valid, 1 when one is broken, 2 when the asset folder does not exist."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``assets`` (``check``, ``convert-flame``) to ``emorig``'s sub-commands."""
    assets = subparsers.add_parser(NAME, help=HELP)
    sub = assets.add_subparsers(dest="assets_command", metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="list the official files emorig can use, which are present and valid, and where "
        "to obtain the missing ones",
        description=CHECK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    if home is not None and not home.is_dir():
        given = "--assets" if args.assets else "EMORIG_HOME"
        what = "is not a folder" if home.exists() else "does not exist"
        raise EmorigError(f"{home}: the asset folder ({given}) {what}")
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

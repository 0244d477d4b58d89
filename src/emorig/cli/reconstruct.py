"""``emorig reconstruct``: photos -> FLAME codes, meshes, buffers and overlays. Thin: flags ->
:class:`~emorig.reconstruct.pipeline.Reconstructor` ->
:func:`~emorig.reconstruct.pipeline.reconstruct_files`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import progress, say
from emorig.cli.shared import input_files, load_head, resolve_head

#: The command's name and its line in ``emorig --help``.
NAME = "reconstruct"
HELP = "photos -> FLAME codes, meshes, buffers and overlays (DECA, EMOCA or fitting)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reconstruct`` command to ``emorig``'s sub-commands; returns its parser."""
    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description="Detect and crop each face as DECA does, then reconstruct it: 'deca' and "
        "'emoca' run those networks (official weights from --assets, or --weights), 'fit' "
        "needs no weights and fits the head to the 68 landmarks, then albedo and light to the "
        "pixels. Every face gets a quality record (landmark error, prior scores, ok or "
        "doubtful), printed one line per face and written in NAME.json. Writes NAME.npz/.json "
        "(codes and crop), NAME_coarse.obj (with UVs), "
        "NAME_detail.obj (networks with a detail model), buffer PNGs of the crop and "
        "NAME_landmarks.png / NAME_shape_overlay.png on the photo.",
    )
    p.add_argument("images", metavar="IMAGES", help="a photo or a folder of photos")
    options.add_reconstructor(p, required=True)
    p.add_argument("--out", required=True, type=options.out_dir, help="output folder")
    options.add_weights(p)
    options.add_head(p, follow_weights=True)
    options.add_assets(p)
    options.add_all_faces(p)
    options.add_photometric(p)
    options.add_device(p)
    p.set_defaults(func=cmd_reconstruct)
    return p


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from emorig.reconstruct.pipeline import Reconstructor, load_model, reconstruct_files

    model, trained_for = load_model(args.model, args.weights, args.assets)
    src, out = Path(args.images), Path(args.out)
    files, skipped = input_files(src, out, "reconstruct")
    head = load_head(resolve_head(args.head, trained_for), args.assets)
    rec = Reconstructor(args.model, head, model, photometric=args.photometric, device=args.device)
    label = args.model if args.weights is None else f"{args.model} ({args.weights})"
    notes: list = []
    results = reconstruct_files(
        files, src, out, rec, label, args.all_faces, progress("reconstructing"), notes
    )
    for where, quality in notes:
        print(f"{where}: {quality.summary()}")
        if not quality.ok:
            say(f"emorig: warning: {where}: doubtful fit ({'; '.join(quality.reasons)})")
    counts: dict[str, int] = {}
    for path, status, reason in results:
        counts[status] = counts.get(status, 0) + 1
        if status != "done":
            print(f"{status}: {path}: {reason}", file=sys.stderr)
    if skipped:
        counts["skipped"] = skipped
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(results)} files ({summary}) with {label} on {head.flame.name} -> {out}")
    return 0 if counts.get("done", 0) == len(results) and not skipped else 1


__all__ = ["add_parser", "cmd_reconstruct"]

"""``emorig align``: detect faces, find 68 landmarks and write FFHQ- or DECA-aligned crops.
Thin: flags -> :class:`~emorig.faces.pipeline.FaceAligner` ->
:func:`~emorig.faces.pipeline.align_files`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import progress
from emorig.cli.shared import entries_skipped, input_files
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "align"
HELP = "detect faces, find 68 landmarks and write FFHQ- or DECA-aligned crops"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``align`` command to ``emorig``'s sub-commands; returns its parser."""
    from emorig.faces.pipeline import MODES

    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description="Align every face photo in IN (a file, or a folder searched recursively) "
        "into OUT: one PNG per face, a JSON beside it (landmarks in the aligned and the "
        "original image, the 3x3 transform back to the original, detector box, score and name) "
        "and, with --preview, the photo with landmarks and crop drawn. Faces are found offline "
        "with dlib (HOG detector: frontal faces; iBUG 68-point predictor) and, when the "
        "MediaPipe extra is installed, MediaPipe's full-range detector for the turned, tilted "
        "and covered faces dlib misses (pip install 'emorig[mediapipe]').",
        epilog="Exit status: 0 when every file gave a face, 1 when some had no face or could "
        "not be read (each is listed with its reason), 2 on a usage error.",
    )
    p.add_argument("input", metavar="IN", help="a photo or a folder of photos")
    p.add_argument(
        "output",
        metavar="OUT",
        type=options.out_dir,
        help="output folder (mirrors IN's sub-folders)",
    )
    p.add_argument("--size", type=options.image_size, default=256, help="aligned image size (256)")
    p.add_argument(
        "--mode",
        default="ffhq",
        choices=MODES,
        help="ffhq: DiffusionRig's oriented crop (default); deca: DECA's landmark-box crop",
    )
    options.add_all_faces(p)
    p.add_argument("--preview", action="store_true", help="also write NAME.preview.png")
    p.add_argument(
        "--detector",
        "--backend",
        dest="detector",
        default="auto",
        metavar="{auto,dlib,mediapipe,both}",
        help="face detector: dlib (frontal faces), mediapipe (turned and covered faces too), "
        "both (dlib's faces plus MediaPipe's others); auto (default): both when MediaPipe is "
        "installed, else dlib",
    )
    p.add_argument(
        "--min-score",
        type=options.finite_float,
        default=None,
        help="dlib detector score a face needs (default 0.3; portraits score 0.5 to 2, "
        "clutter below 0.2); with --detector mediapipe, MediaPipe's probability (default 0.5)",
    )
    p.add_argument(
        "--dense",
        default=None,
        choices=("mediapipe",),
        help="also store MediaPipe's 478 dense landmarks (pip install 'emorig[mediapipe]')",
    )
    options.add_device(p)
    p.set_defaults(func=cmd_align)
    return p


def cmd_align(args: argparse.Namespace) -> int:
    from emorig.faces.backends import load_backend
    from emorig.faces.pipeline import (
        DONE,
        SEVERAL,
        FaceAligner,
        align_files,
        summarise,
    )

    src, out = Path(args.input), Path(args.output)
    if src.is_file() and out.suffix:
        raise EmorigError(f"{out}: OUT is a folder (aligned images are written inside it)")
    backend_options = {} if args.min_score is None else {"min_score": args.min_score}
    aligner = FaceAligner(
        backend=load_backend(args.detector, **backend_options),
        size=args.size,
        mode=args.mode,
        all_faces=args.all_faces,
        dense=args.dense,
        device=args.device,
    )
    files, skipped = input_files(src, out, "align")
    results = align_files(
        files, src, out, aligner, preview=args.preview, progress=progress("aligning")
    )
    for r in results:
        if r.status != DONE:
            level = "note" if r.status == SEVERAL else r.status
            print(f"{level}: {r.path}: {r.reason}", file=sys.stderr)
        for note in r.notes:
            print(f"note: {r.path}: {note}", file=sys.stderr)
    more = f" ({entries_skipped(skipped)})" if skipped else ""
    print(summarise(results) + f"{more} -> {out}")
    failed = [r for r in results if r.status not in (DONE, SEVERAL)]
    return 1 if failed or skipped else 0


__all__ = ["add_parser", "cmd_align"]

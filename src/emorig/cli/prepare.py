"""``emorig prepare``: photos -> DiffusionRig training shards (aligned images, FLAME codes,
condition buffers). Thin: flags -> :class:`~emorig.data.prepare.PrepareConfig` ->
:func:`~emorig.cli.shared.prepare_images` (or :func:`~emorig.data.prepare.merge`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import say
from emorig.cli.shared import prepare_images
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "prepare"
HELP = "photos -> training shards: FFHQ-aligned images, FLAME codes, condition buffers"


DESCRIPTION = """\
FFHQ-align every photo in IMAGES (a file or a folder, searched recursively) to --size, as
DiffusionRig's align.py does; reconstruct its FLAME code on DECA's 224 crop of the aligned image
('deca'/'emoca' networks, or 'fit': weight-free landmark + photometric fitting); render the
three condition buffers at the full aligned size (rendered = albedo x SH shading, world
normals, albedo; background 0). Writes shard-rNNN-NNNNN.safetensors (uint8 images, float16
buffers, float32 codes and the crop transforms) and manifest.json into DATA.

An interrupted run resumes where it stopped when started again with the same settings: shards
are written atomically and list the inputs they hold. For several GPUs, machines or CPU
processes use 'accelerate launch --multi_gpu --num_processes N -m emorig prepare ...': each
process takes every N-th file and writes its own shards; rank 0 writes the manifest.
'emorig prepare --merge DATA' writes the manifest from the shards alone (e.g. after processes
were started separately)."""

EPILOG = """\
Exit status: 0 when every file gave an item, 1 when some were skipped (unreadable, no face;
each is listed with its reason, in manifest.json too), 2 on a usage error."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prepare`` command to ``emorig``'s sub-commands; returns its parser."""
    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", metavar="IMAGES", nargs="?", help="a photo or a folder of photos")
    options.add_reconstructor(p, help="how codes are made")
    p.add_argument(
        "--out", metavar="DATA", type=options.out_dir, help="the prepared folder (created; resumed)"
    )
    p.add_argument(
        "--merge",
        metavar="DATA",
        help="only merge DATA's shards into manifest.json (applying --mean-shape if given)",
    )
    p.add_argument("--size", type=options.image_size, default=256, help="aligned image size (256)")
    p.add_argument(
        "--mean-shape",
        action="store_true",
        help="render every image with the album's mean identity (DiffusionRig stage 2); "
        "saved as DATA/mean_shape.safetensors",
    )
    p.add_argument(
        "--album",
        action="store_true",
        help="the photos show one person: fit one identity to all of them at once (with "
        "--model fit; each photo keeps its own expression, pose, camera and light) and render "
        "every image with it, as --mean-shape does with the average of the per-photo "
        "identities; saved as DATA/album_shape.safetensors and DATA/mean_shape.safetensors",
    )
    options.add_weights(p)
    options.add_head(p, follow_weights=True)
    options.add_assets(p)
    options.add_photometric(p)
    p.add_argument(
        "--shard-size", type=options.positive_int, default=64, help="items per shard (64)"
    )
    p.add_argument(
        "--batch-size", type=options.positive_int, default=8, help="faces reconstructed at once (8)"
    )
    p.add_argument(
        "--buffer-dtype",
        default="float16",
        choices=("float16", "float32"),
        help="storage of the buffers (float16: half the size, error < 5e-4)",
    )
    options.add_device(
        p, default=None, help="torch device (default: this process's accelerate device)"
    )
    p.set_defaults(func=cmd_prepare)
    return p


def _report(manifest, started: float, skipped: int = 0) -> int:
    from emorig.data.prepare import ALBUM_SHAPE

    for source, reason in manifest.skipped:
        say(f"skipped: {source}: {reason}")
    s = manifest.settings
    print(
        f"{manifest.count} items ({len(manifest.skipped)} skipped) in {len(manifest.shards)} "
        f"shards, {s.size}px, {s.reconstructor} on {s.head}"
        + (", album mean shape" if manifest.mean_shape is not None else "")
        + (" (fitted jointly)" if (Path(manifest.root) / ALBUM_SHAPE).is_file() else "")
        + f" -> {manifest.root} in {time.perf_counter() - started:.1f} s"
    )
    return 1 if manifest.skipped or skipped else 0


def _merge(args: argparse.Namespace, started: float) -> int:
    from emorig.data.prepare import merge

    if args.images or args.out or args.model:
        raise EmorigError("--merge DATA takes no IMAGES, --out or --model")
    if args.album:
        raise EmorigError("--album fits while preparing; --merge keeps the identity DATA holds")
    manifest, again = merge(
        Path(args.merge),
        True if args.mean_shape else None,
        assets=args.assets,
        device=args.device or "cpu",
    )
    if again:
        say(f"re-rendered {again} shards with the new identity")
    return _report(manifest, started)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run ``emorig prepare`` (or ``--merge``); returns the exit status."""
    from emorig.data.prepare import PrepareConfig

    started = time.perf_counter()
    if args.merge is not None:
        return _merge(args, started)
    needed = (("IMAGES", args.images), ("--out", args.out), ("--model", args.model))
    missing = [name for name, value in needed if not value]
    if missing:
        raise EmorigError(f"prepare needs {', '.join(missing)} (or --merge DATA)")
    if args.album and args.model != "fit":
        raise EmorigError(
            f"--album fits one identity to every photo's landmarks and needs --model fit; "
            f"with --model {args.model} use --mean-shape (the average of the per-photo "
            "identities)"
        )
    manifest, skipped = prepare_images(
        Path(args.images),
        Path(args.out),
        args.model,
        options.config_from_args(PrepareConfig, args),
        weights=args.weights,
        head=args.head,
        assets=args.assets,
        device=args.device,
        photometric=args.photometric,
    )
    if manifest is None:  # not the main process: that one reports
        return 0
    return _report(manifest, started, skipped)


__all__ = ["add_parser", "cmd_prepare"]

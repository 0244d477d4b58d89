"""``emorig synth``: synthetic face datasets with known codes, from the built-in head."""

from __future__ import annotations

import argparse

from emorig.cli import options
from emorig.cli.output import progress, say_building_head
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "synth"
HELP = (
    "render a SYNTHETIC dataset (built-in head, not real people) with ground-truth "
    "codes and emotion labels"
)


DEFAULT_COUNTS = {"random": 100, "album": 20}
MULTIVIEW_GROUPS = 8

DESCRIPTION = """\
Render SYNTHETIC faces of emorig's procedurally generated built-in head (not photos of people,
nothing downloaded) with their exact ground truth: random identities, expressions (the eight
emotion presets with their labels, or free mixtures), poses, gaze, SH lighting, albedo and
backdrops, framed like FFHQ-aligned photos (face centred, about 60% of the frame).

Modes: random (every image a new face), album (one identity per --album-size images, varied
expression, pose and light, like a personal photo album), multiview (one identity and
expression seen from --views yaw angles spread over -max-yaw..+max-yaw; --count / --views
groups).

Writes OUT/images/NNNNNN.png, OUT/codes.npz (FaceCode fields per image, landmarks, labels,
valence/arousal, group ids), OUT/labels.json (the same, readable, plus the settings) and
OUT/contact_sheet.png. The same --seed gives the same files."""

EPILOG = """\
These images are synthetic renders for testing and pre-training; results measured on them say
nothing about real faces."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``synth`` sub-command to an ``add_subparsers()`` object; returns its parser."""
    from emorig.synth.datasets import MODES

    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", type=options.out_dir, help="output folder"
    )
    p.add_argument("--mode", default=MODES[0], choices=MODES, help=f"({MODES[0]})")
    p.add_argument(
        "--count",
        type=options.positive_int,
        default=None,
        metavar="N",
        help="images in total (default: random 100, album 20, multiview 8 groups x --views)",
    )
    p.add_argument(
        "--size", type=options.image_size, default=256, help="image size in pixels (256)"
    )
    options.add_seed(p)
    p.add_argument(
        "--views",
        type=options.int_in(1, 360, "a number of views"),
        default=5,
        metavar="K",
        help="multiview: views (5)",
    )
    p.add_argument(
        "--max-yaw",
        type=options.float_in(0, 90),
        default=30.0,
        metavar="DEG",
        help="multiview: yaw span (30)",
    )
    p.add_argument(
        "--album-size",
        type=options.positive_int,
        default=20,
        help="album: images per identity (20)",
    )
    p.add_argument(
        "--emotions",
        action="store_true",
        help="every face shows a labelled emotion preset (default: half of them, the rest "
        "free expressions without a label)",
    )
    p.add_argument(
        "--supersample",
        type=options.int_in(1, 8, "a factor"),
        default=2,
        metavar="F",
        help="render at F x the size and average down for smooth edges (2; 1 is 3-4x faster)",
    )
    p.add_argument(
        "--prepared",
        action="store_true",
        help="also write OUT/prepared: the images with their exact codes and condition buffers, "
        "ready for 'emorig train diffusion --data OUT/prepared' (no reconstruction needed)",
    )
    p.add_argument(
        "--batch-size", type=options.positive_int, default=16, help="images rendered at once (16)"
    )
    options.add_device(p)
    p.set_defaults(func=cmd_synth)
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~emorig.synth.datasets.SynthDatasetConfig` the flags describe."""
    from emorig.synth.datasets import SynthDatasetConfig

    count = args.count
    if count is None:
        count = DEFAULT_COUNTS.get(args.mode, MULTIVIEW_GROUPS * max(args.views, 1))
    return options.config_from_args(
        SynthDatasetConfig,
        args,
        count=count,
        emotion_fraction=1.0 if args.emotions else 0.5,
    ).validate()


def cmd_synth(args: argparse.Namespace) -> int:
    from emorig.synth.datasets import write_dataset

    config = config_from_args(args)
    if args.batch_size < 1:
        raise EmorigError(f"--batch-size {args.batch_size}: must be at least 1")
    say_building_head()
    result = write_dataset(
        config,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        progress=progress("synthesising"),
    )
    n = config.n_groups
    groups = "" if config.mode == "random" else f" in {n} group{'s' if n != 1 else ''}"
    print(
        f"{len(result.images)} SYNTHETIC images ({config.mode}{groups}, {config.size} px, seed "
        f"{config.seed}) in {result.seconds:.1f} s -> {result.folder}",
    )
    print(f"truth: {result.codes.name}, {result.labels.name}; contact sheet: {result.sheet}")
    if args.prepared:
        from emorig.synth.prepared import write_prepared

        manifest = write_prepared(
            config, result.folder / "prepared", batch_size=args.batch_size, device=args.device
        )
        print(f"prepared: {manifest.count} items -> {manifest.root}")
    return 0

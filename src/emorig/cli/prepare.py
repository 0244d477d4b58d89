"""``emorig prepare``: photos -> DiffusionRig training shards (aligned images, FLAME codes,
condition buffers). Thin: flags -> :mod:`emorig.data.prepare`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from emorig.errors import EmorigError

HEADS = ("builtin", "flame2020", "flame2023", "flame2023_open")

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
        "prepare",
        help="photos -> training shards: FFHQ-aligned images, FLAME codes, condition buffers",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", metavar="IMAGES", nargs="?", help="a photo or a folder of photos")
    p.add_argument("--model", choices=("deca", "emoca", "fit"), help="how codes are made")
    p.add_argument("--out", metavar="DATA", help="the prepared folder (created; resumed)")
    p.add_argument(
        "--merge",
        metavar="DATA",
        help="only merge DATA's shards into manifest.json (applying --mean-shape if given)",
    )
    p.add_argument("--size", type=int, default=256, help="aligned image size (256)")
    p.add_argument(
        "--mean-shape",
        action="store_true",
        help="render every image with the album's mean identity (DiffusionRig stage 2); "
        "saved as DATA/mean_shape.safetensors",
    )
    p.add_argument("--weights", help="model folder/file instead of the official asset")
    p.add_argument(
        "--head", choices=HEADS, help="head of the codes (default: the weights' head, else builtin)"
    )
    p.add_argument("--assets", metavar="DIR", help="asset folder (default: $EMORIG_HOME)")
    p.add_argument(
        "--no-photometric", action="store_true", help="fit: landmarks only (no albedo/light fit)"
    )
    p.add_argument("--shard-size", type=int, default=64, help="items per shard (64)")
    p.add_argument("--batch-size", type=int, default=8, help="faces reconstructed at once (8)")
    p.add_argument(
        "--buffer-dtype",
        default="float16",
        choices=("float16", "float32"),
        help="storage of the buffers (float16: half the size, error < 5e-4)",
    )
    p.add_argument(
        "--device", default=None, help="torch device (default: this process's accelerate device)"
    )
    p.set_defaults(func=cmd_prepare)
    return p


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(desc: str, enabled: bool):
    from tqdm import tqdm

    def wrap(items):
        return tqdm(
            items, unit="img", desc=desc, disable=None if enabled else True, file=sys.stderr
        )

    return wrap


def _report(manifest, started: float) -> int:
    for source, reason in manifest.skipped:
        _say(f"skipped: {source}: {reason}")
    s = manifest.settings
    print(
        f"{manifest.count} items ({len(manifest.skipped)} skipped) in {len(manifest.shards)} "
        f"shards, {s.size}px, {s.reconstructor} on {s.head}"
        + (", album mean shape" if manifest.mean_shape is not None else "")
        + f" -> {manifest.root} in {time.perf_counter() - started:.1f} s"
    )
    return 1 if manifest.skipped else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run ``emorig prepare`` (or ``--merge``); returns the exit status."""
    started = time.perf_counter()
    if args.merge is not None:
        if args.images or args.out or args.model:
            raise EmorigError("--merge DATA takes no IMAGES, --out or --model")
        from emorig.data.prepare import merge

        manifest, again = merge(
            Path(args.merge),
            True if args.mean_shape else None,
            assets=args.assets,
            device=args.device or "cpu",
        )
        if again:
            _say(f"re-rendered {again} shards with the new identity")
        return _report(manifest, started)
    missing = [
        n
        for n, v in (("IMAGES", args.images), ("--out", args.out), ("--model", args.model))
        if not v
    ]
    if missing:
        raise EmorigError(f"prepare needs {', '.join(missing)} (or --merge DATA)")

    manifest = prepare_images(
        Path(args.images),
        Path(args.out),
        args.model,
        size=args.size,
        weights=args.weights,
        head=args.head,
        assets=args.assets,
        device=args.device,
        mean_shape=args.mean_shape,
        photometric=not args.no_photometric,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        buffer_dtype=args.buffer_dtype,
    )
    if manifest is None:  # not rank 0: the main process reports
        return 0
    return _report(manifest, started)


def prepare_images(
    src: Path,
    out: Path,
    method: str,
    *,
    size: int = 256,
    weights: str | None = None,
    head: str | None = None,
    assets: str | None = None,
    device: str | None = None,
    mean_shape: bool = False,
    photometric: bool = True,
    shard_size: int = 64,
    batch_size: int = 8,
    buffer_dtype: str = "float16",
):
    """Prepare the photos under ``src`` into ``out`` (what ``emorig prepare`` runs; also used
    by ``emorig edit`` for photo inputs). Returns the manifest (None on ranks other than 0)."""
    from emorig.data.prepare import PrepareConfig, prepare, process_state
    from emorig.faces.pipeline import image_files
    from emorig.flame.heads import load_head
    from emorig.reconstruct.pipeline import Reconstructor, load_model

    config = PrepareConfig(
        size=size,
        shard_size=shard_size,
        batch_size=batch_size,
        buffer_dtype=buffer_dtype,
        mean_shape=mean_shape,
    )
    src, out = Path(src), Path(out)
    if not src.exists():
        raise EmorigError(f"{src}: not found")
    if out.exists() and not out.is_dir():
        raise EmorigError(f"--out {out}: is a file; DATA is a folder")
    files = image_files(src, exclude=out)
    if not files:
        raise EmorigError(f"{src}: no files to prepare")
    state = process_state(device)
    device = device or state.device
    model, trained_for = load_model(method, weights, assets)
    head_name = resolve_head(head, trained_for)
    if head_name == "builtin" and state.is_main_process:
        _say("building the built-in synthetic head (procedural, about 5 s)...")
    rec = Reconstructor(method, load_head(head_name, assets), model, photometric=photometric,
                        device=device)  # fmt: skip
    label = method if weights is None else f"{method} ({Path(weights).name})"
    desc = "preparing" if state.num_processes == 1 else f"preparing [{state.process_index}]"
    result = prepare(
        files,
        src,
        out,
        rec,
        config,
        head_name=head_name,
        label=label,
        state=state,
        progress=_progress(desc, state.is_local_main_process),
    )
    return result.manifest


def resolve_head(head: str | None, trained_for: str | None) -> str:
    """The head codes belong to: the one asked for, else the weights', else the built-in
    one; weights trained for another head are refused (FLAME 2020 weights fit every FLAME)."""
    name = head or trained_for or "builtin"
    if (
        trained_for is not None
        and name != trained_for
        and not (trained_for == "flame2020" and name.startswith("flame"))
    ):
        raise EmorigError(
            f"these weights were trained for the {trained_for} head; --head {name} does not match"
        )
    return name


__all__ = ["add_parser", "cmd_prepare", "prepare_images", "resolve_head"]

"""``emorig edit``: edit expression, pose, light (or latent) of faces with a trained
DiffusionRig(-EMO) model, or give them an emotion. Thin: flags -> the inputs (prepared
folders, photos prepared here) -> :class:`~emorig.edit.pipeline.Editor` -> PNGs, grids and
``edits.json``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import progress_bar, say
from emorig.cli.shared import load_head, prepare_images
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "edit"
HELP = "edit expression, pose, light (or latent) of faces with a diffusion model"


EDIT_DESCRIPTION = """\
Edit faces with a trained DiffusionRig(-EMO) model. Sources and the target are photos (aligned
and reconstructed here, with --source-reconstructor / --target-reconstructor, which may differ)
or folders made by 'emorig prepare' / 'emorig synth --prepared'. For every source and mode the
source's FLAME code takes the target's pose (head rotation), exp (expression and jaw) or light
(SH), the buffers are re-rendered and the model samples the edited photo with DDIM (20 steps,
eta 0) from one fixed noise, as DiffusionRig does; 'latent' keeps the buffers and takes the
target's global latent. --invert starts every edit from the DDIM inversion of the source, so
what the edit does not touch stays closer to the photo.

Writes OUT/NAME_MODE.png for every edit, OUT/NAME_grid.png (source | target | edits, with the
buffers below) and OUT/edits.json."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``edit`` command to ``emorig``'s sub-commands; returns its parser."""
    from emorig.edit.modes import face_mode_names

    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description=EDIT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="an emorig model folder (emorig train diffusion) or DiffusionRig's model*.pt",
    )
    p.add_argument("--source", required=True, help="photo, folder of photos or prepared folder")
    p.add_argument("--target", help="photo or prepared folder (not with --emotion)")
    p.add_argument(
        "--target-index",
        type=options.non_negative_int,
        default=0,
        help="item of a prepared target (0)",
    )
    p.add_argument(
        "--indices", type=options.non_negative_int, nargs="+", help="only these source items"
    )
    p.add_argument(
        "--modes", default="pose,exp,light", help=f"comma list of {','.join(face_mode_names())}"
    )
    p.add_argument("--out", required=True, type=options.out_dir, help="output folder")
    options.add_reconstructor(
        p,
        "--source-reconstructor",
        default="fit",
        help="codes of source photos (fit: no weights needed)",
    )
    options.add_reconstructor(
        p, "--target-reconstructor", default="fit", help="codes of the target photo"
    )
    options.add_weights(
        p, "--source-weights", help="model folder/file for the source reconstructor"
    )
    options.add_weights(
        p, "--target-weights", help="model folder/file for the target reconstructor"
    )
    p.add_argument(
        "--mean-shape",
        help="album mean identity (mean_shape.safetensors of a prepared album, or "
        "DiffusionRig's mean_shape.pkl); default: the source folder's, if prepared with one",
    )
    _add_emotion_flags(p)
    p.add_argument("--invert", action="store_true", help="start from the source's DDIM inversion")
    options.add_ddim_steps(p)
    options.add_seed(p, "seed of the fixed noise")
    p.add_argument(
        "--batch-size", type=options.positive_int, default=8, help="sources edited at once (8)"
    )
    p.add_argument(
        "--recognizer", default="fer", help="emotion recogniser for DiffusionRig-EMO models"
    )
    options.add_head(p, follow_weights=True)
    options.add_assets(p)
    options.add_device(p)
    p.set_defaults(func=cmd_edit)
    return p


def _add_emotion_flags(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group(
        "emotion edits",
        "Instead of a target photo: find the expression that shows an emotion (identity, "
        "pose and light untouched) and sample it.",
    )
    e.add_argument("--emotion", help=options.emotion_names())
    e.add_argument(
        "--intensity", type=options.float_in(0, 1.5), default=1.0, help="0 (as is) .. 1 (clear) (1)"
    )
    e.add_argument(
        "--valence", type=options.float_in(-1, 1), help="target valence in [-1, 1] (with --arousal)"
    )
    e.add_argument("--arousal", type=options.float_in(-1, 1), help="target arousal in [-1, 1]")
    e.add_argument(
        "--sweep",
        type=options.int_in(1, 100, "a number of intensities"),
        metavar="N",
        help="also write a strip of N intensities 0..intensity",
    )
    options.add_emotion_predictor(
        e,
        "codes: an EmoDECA MLP on FLAME codes (trained once on synthetic built-in-head codes, "
        "then loaded from $EMORIG_CACHE, else $XDG_CACHE_HOME/emorig or ~/.cache/emorig); "
        "rendered: --recognizer on renders of the code; auto: codes on the built-in head, "
        "rendered otherwise",
    )


def cmd_edit(args: argparse.Namespace) -> int:
    from emorig.diffusion.loading import load_rig
    from emorig.edit.modes import parse_modes
    from emorig.edit.pipeline import items_from_dataset, write_edits

    started = time.perf_counter()
    modes = parse_modes(args.modes)
    out = Path(args.out)
    emotion = _emotion_target(args)  # every request is checked before the model loads
    if (emotion is None) == (args.target is None):
        raise EmorigError("give either --target or an emotion (--emotion / --valence --arousal)")
    model = load_rig(args.model, device=args.device)
    sources, targets = _inputs(args, out, model.config.image_size, emotion is not None)
    if not 0 <= args.target_index < len(targets):
        raise EmorigError(f"--target-index {args.target_index}: the target has {len(targets)}")
    mean = _mean_shape(args.mean_shape, sources)
    head = sources.manifest.settings.head
    editor, renderer = _editor(args, model, head, mean)
    target = items_from_dataset(targets, [args.target_index])
    predictor = None
    if emotion is not None:
        from emorig.edit.emotion import emotion_predictor

        predictor = emotion_predictor(
            args.emotion_predictor, renderer, head, args.recognizer, args.device, say
        )
    indices = list(range(len(sources))) if args.indices is None else args.indices
    bad = [i for i in indices if not 0 <= i < len(sources)]
    if bad:
        raise EmorigError(f"--indices {bad}: the source has {len(sources)} faces")

    def edit(source) -> list[Path]:
        if emotion is not None:
            return _emotion_edit(editor, predictor, source, emotion, args, out)
        result = editor.edit(source, target, modes)
        return write_edits(result, source, target, out, with_reconstruction=args.invert)

    grids = _in_batches(sources, indices, args.batch_size, edit)
    _write_record(args, out, emotion, predictor, modes, mean is not None, grids)
    n_edits = 1 if emotion is not None else len(modes)
    print(
        f"{len(indices)} faces x {n_edits} edits in {time.perf_counter() - started:.1f} s "
        f"-> {out} (grids: NAME_grid.png)"
    )
    return 0


def _inputs(args: argparse.Namespace, out: Path, size: int, emotion: bool):
    """The source and target :class:`~emorig.data.dataset.BufferDataset` (the target is the
    source for emotion edits), checked to belong to one head."""
    sources = _faces(args.source, out, args.source_reconstructor, args.source_weights, args, size)
    targets = (
        sources
        if emotion
        else _faces(args.target, out, args.target_reconstructor, args.target_weights, args, size)
    )
    if sources.manifest.settings.head != targets.manifest.settings.head:
        raise EmorigError(
            f"source codes belong to the {sources.manifest.settings.head} head, the target's "
            f"to {targets.manifest.settings.head}"
        )
    return sources, targets


def _faces(spec: str, out: Path, reconstructor: str, weights, args, size: int):
    """A prepared folder for ``spec`` (used as is, or made from photos under OUT)."""
    from emorig.data.dataset import MANIFEST_NAME, BufferDataset
    from emorig.data.prepare import PrepareConfig

    path = Path(spec)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return BufferDataset(path)
    if not path.exists():
        raise EmorigError(f"{path}: not found")
    folder = out / "prepared" / f"{path.stem}-{reconstructor}"
    manifest, _ = prepare_images(
        path,
        folder,
        reconstructor,
        PrepareConfig(size=size),
        weights=weights,
        head=args.head,
        assets=args.assets,
        device=args.device,
    )
    if manifest.count == 0:
        reasons = "; ".join(f"{s}: {r}" for s, r in manifest.skipped[:3])
        raise EmorigError(f"{path}: no usable face ({reasons})")
    return BufferDataset(folder)


def _mean_shape(spec: str | None, sources):
    """The album mean identity: ``--mean-shape`` (a .safetensors or DiffusionRig's .pkl), else
    the source folder's (None when it has none)."""
    if not spec:
        return sources.mean_shape
    path = Path(spec)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))["shape"]
    from emorig.diffusion.official import load_mean_shape

    return load_mean_shape(path)


def _editor(args: argparse.Namespace, model, head: str, mean):
    """The :class:`~emorig.edit.pipeline.Editor` and the head's renderer it draws with."""
    from emorig.edit.pipeline import Editor
    from emorig.render.face import FaceRenderer

    renderer = FaceRenderer(load_head(head, args.assets, announce=False)).to(args.device)
    expression_input = None
    if model.config.expression_dim:
        from emorig.edit.emotion import expression_input_for

        expression_input = expression_input_for(model, args.recognizer, args.device)
    editor = Editor(
        model,
        renderer,
        mean_shape=mean,
        timesteps=args.steps,
        seed=args.seed,
        invert=args.invert,
        expression_input=expression_input,
    )
    return editor, renderer


def _in_batches(sources, indices: list[int], batch_size: int, edit) -> list[Path]:
    """``edit(items)`` for the sources ``indices``, ``batch_size`` at a time, under a progress
    bar; returns every path it wrote."""
    import torch

    from emorig.edit.pipeline import items_from_dataset

    grids: list[Path] = []
    bar = progress_bar(len(indices), "editing", "face")
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            grids += edit(items_from_dataset(sources, chunk))
            bar.update(len(chunk))
    bar.close()
    return grids


def _write_record(args, out: Path, emotion, predictor, modes, mean_shape: bool, grids) -> None:
    """``OUT/edits.json``: what ran. A face edit lists its ``modes`` (and the target); an
    emotion edit has ``modes: ["emotion"]`` and ``emotion_edit`` (the request, the sweep and
    the predictor)."""
    from emorig.io.atomic import atomic_write

    record = {
        "model": str(args.model),
        "source": str(args.source),
        "target": None if args.target is None else str(args.target),
        "emotion": None if emotion is None else emotion.describe(),
        "emotion_edit": None if emotion is None else _emotion_record(emotion, predictor, args),
        "target_index": None if emotion is not None else args.target_index,
        "modes": ["emotion"] if emotion is not None else list(modes),
        "steps": args.steps,
        "invert": args.invert,
        "seed": args.seed,
        "mean_shape": mean_shape,
        "grids": [str(g) for g in grids],
    }
    with atomic_write(out / "edits.json", "w") as f:
        json.dump(record, f, indent=1)


def _emotion_record(emotion, predictor, args) -> dict:
    """The emotion edit as run: the request, the sweep's intensities and the predictor."""
    sweep = None
    if args.sweep and args.sweep > 1:
        sweep = [round(emotion.intensity * k / (args.sweep - 1), 6) for k in range(args.sweep)]
    return {
        "emotion": emotion.emotion,
        "intensity": emotion.intensity if emotion.emotion is not None else None,
        "valence": emotion.valence,
        "arousal": emotion.arousal,
        "sweep": sweep,
        "predictor": dict(predictor.info or {"kind": args.emotion_predictor}),
    }


def _emotion_target(args):
    from emorig.edit.emotion import EmotionTarget

    if args.emotion is None and args.valence is None and args.arousal is None:
        return None
    return EmotionTarget(args.emotion, args.intensity, args.valence, args.arousal)


def _emotion_edit(editor, predictor, source, emotion, args, out: Path) -> list[Path]:
    """Find the expression for ``emotion`` per source, sample it (and a sweep); write
    NAME_EMOTION.png, NAME_EMOTION_grid.png and NAME_EMOTION_sweep.png."""
    import dataclasses

    from emorig.edit.modes import edit_mode
    from emorig.io.images import contact_sheet, save_png, to_uint8

    code = editor.source_code(source)
    search = edit_mode("emotion").search

    levels = [emotion]
    if args.sweep and args.sweep > 1:
        levels = [
            dataclasses.replace(emotion, intensity=emotion.intensity * k / (args.sweep - 1))
            for k in range(args.sweep)
        ]
    codes = [search(code, predictor, t) for t in levels]  # the last is the requested edit
    images = editor.sample_codes(source, codes)
    own = editor.buffers(code, source.crop_transform)[:, :3].clamp(0, 1)
    edited = editor.buffers(codes[-1], source.crop_transform)[:, :3].clamp(0, 1)
    tag = emotion.emotion or "valence-arousal"
    paths = []
    for i, name in enumerate(source.names):
        save_png(images[-1][i], out / f"{name}_{tag}.png")
        sheet = contact_sheet(
            [
                [to_uint8(source.image[i]), to_uint8(images[-1][i])],
                [to_uint8(own[i]), to_uint8(edited[i])],
            ],
            row_labels=["image", "buffer"],
            column_labels=["source", emotion.describe()],
        )
        paths.append(save_png(sheet, out / f"{name}_{tag}_grid.png"))
        if len(levels) > 1:
            strip = [to_uint8(images[k][i]) for k in range(len(levels))]
            labels = [f"{t.intensity:.2f}" for t in levels]
            save_png(contact_sheet([strip], column_labels=labels), out / f"{name}_{tag}_sweep.png")
    return paths


__all__ = ["add_parser", "cmd_edit"]

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
from emorig.cli.edit_requests import (
    base_record,
    emotion_levels,
    explicit_code,
    explicit_label,
    finish_emotion_checks,
    recognizer_of,
    warn_synthetic_model,
)
from emorig.cli.output import progress_bar, say
from emorig.cli.shared import load_head, prepare_images
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "edit"
HELP = "change expression, pose, light or emotion in photos: warp (no model) or diffusion"


EDIT_DESCRIPTION = """\
Edit the expression, head pose or light of faces in photos. Three methods:

  warp            (default without --model) moves the photo's own pixels with the fitted 3D
                  face: full resolution, the person's identity, seconds on a CPU, no model.
  diffusion       (default with --model) samples the edit with a trained DiffusionRig(-EMO)
                  model under the edited buffers (20 DDIM steps, eta 0, from one fixed noise,
                  or from the source's DDIM inversion with --invert), at the model's size.
  warp+diffusion  the warped face at the model's size re-noised to --strength and denoised
                  under the edited buffers (SDEdit; from its inversion with --invert), then
                  pasted back into the warped photo.

What to change: --target (a photo or prepared folder: its pose / exp / light per --modes), an
emotion (--emotion, --intensity, --sweep; or --valence/--arousal), or named changes: --face
(terms of 'emorig render --face': smile=0.8, jaw=12, yaw=10, ...) and --light (left=0.6, ...).

Sources are photos (aligned and reconstructed here with --source-reconstructor) or folders
made by 'emorig prepare' / 'emorig synth --prepared'. Photos edited with warp or
warp+diffusion come out at their own resolution: OUT/NAME_EDIT.png, OUT/NAME_grid.png;
prepared items at their aligned size. OUT/edits.json records the request, the codes and, for
emotion edits, the recogniser's probabilities before and after. An emotion edit that does not
move the face towards the emotion says why and exits with status 1."""


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
        help="an emorig model folder (emorig train diffusion) or DiffusionRig's model*.pt; "
        "needed by --method diffusion and warp+diffusion",
    )
    p.add_argument(
        "--method",
        choices=("warp", "diffusion", "warp+diffusion"),
        help="how the edit is made (default: diffusion with --model, else warp)",
    )
    p.add_argument(
        "--strength",
        type=options.float_in(0, 1),
        default=0.5,
        help="warp+diffusion: share of the DDIM steps re-run on the warped face (0.5)",
    )
    p.add_argument("--source", required=True, help="photo, folder of photos or prepared folder")
    p.add_argument("--target", help="photo or prepared folder (not with --emotion)")
    p.add_argument(
        "--face",
        metavar="TERMS",
        help="named change, e.g. smile=0.8+jaw=10 or yaw=15 (render --face terms; "
        "yaw/pitch/roll turn the head from where it is)",
    )
    p.add_argument(
        "--light",
        metavar="TERMS",
        help="move the light: left/right/above/below/front=STRENGTH and ambient=SCALE, "
        "e.g. left=0.8",
    )
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
    p.add_argument(
        "--invert",
        action="store_true",
        help="diffusion: start from the source's DDIM inversion; warp+diffusion: reach "
        "--strength by inversion instead of fresh noise",
    )
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
    started = time.perf_counter()
    method = args.method or ("diffusion" if args.model else "warp")
    if method != "warp" and not args.model:
        raise EmorigError(
            f"--method {method} needs a diffusion model (--model FOLDER); --method warp "
            "edits the photo itself and needs none"
        )
    emotion = _emotion_target(args)  # every request is checked before anything loads
    explicit = _explicit_request(args)
    given = [emotion is not None, args.target is not None, explicit is not None]
    if sum(given) != 1:
        raise EmorigError(
            "give one kind of change: --target, an emotion (--emotion / --valence --arousal) "
            "or named changes (--face / --light)"
        )
    out = Path(args.out)
    if method != "diffusion" and not _is_prepared(args.source):
        from emorig.cli.edit_photos import edit_photos

        return edit_photos(args, method, emotion, explicit, out, started)
    return _edit_prepared(args, method, emotion, explicit, out, started)


def _is_prepared(spec: str) -> bool:
    from emorig.data.dataset import MANIFEST_NAME

    path = Path(spec)
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


def _explicit_request(args: argparse.Namespace):
    """``(face spec, light terms)`` from --face / --light (None when neither is given)."""
    if args.face is None and args.light is None:
        return None
    from emorig.edit.explicit import parse_face, parse_light_spec
    from emorig.flame import builtin

    names = builtin.expression_names() if (args.head or "builtin") == "builtin" else ()
    face = None if args.face is None else parse_face(args.face, names)
    light = None if args.light is None else parse_light_spec(args.light)
    return face, light


def _edit_prepared(args, method: str, emotion, explicit, out: Path, started: float) -> int:
    """Edits of prepared items (or photos prepared here for --method diffusion), at their
    aligned size."""
    from emorig.edit.modes import parse_modes
    from emorig.edit.pipeline import items_from_dataset, write_edits

    modes = parse_modes(args.modes)
    model = None
    if args.model:
        from emorig.diffusion.loading import load_rig

        model = load_rig(args.model, device=args.device)
    size = None if model is None else model.config.image_size
    sources, targets = _inputs(args, out, size, args.target is None)
    if not 0 <= args.target_index < len(targets):
        raise EmorigError(f"--target-index {args.target_index}: the target has {len(targets)}")
    if model is not None:
        warn_synthetic_model(args.model, sources.manifest.settings.reconstructor)
    mean = _mean_shape(args.mean_shape, sources)
    head = sources.manifest.settings.head
    editor, renderer = _editor(args, model, head, mean, method)
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
    checks: dict[str, dict] = {}

    def edit(source) -> list[Path]:
        if emotion is not None or explicit is not None:
            return _code_edit(
                editor, renderer, predictor, source, emotion, explicit, args, out, checks
            )
        result = editor.edit(source, target, modes)
        return write_edits(result, source, target, out, with_reconstruction=args.invert)

    grids = _in_batches(sources, indices, args.batch_size, edit)
    _write_record(args, out, method, emotion, predictor, modes, mean is not None, grids, checks)
    n_edits = 1 if (emotion is not None or explicit is not None) else len(modes)
    print(
        f"{len(indices)} faces x {n_edits} edits ({method}) in "
        f"{time.perf_counter() - started:.1f} s -> {out} (grids: NAME_grid.png)"
    )
    return finish_emotion_checks(checks)


def _inputs(args: argparse.Namespace, out: Path, size: int | None, same: bool):
    """The source and target :class:`~emorig.data.dataset.BufferDataset` (the target is the
    source when ``same``: emotion and named edits), checked to belong to one head. Photos are
    prepared at ``size`` (default: the source folder's)."""
    sources = _faces(args.source, out, args.source_reconstructor, args.source_weights, args, size)
    size = size or sources.size
    targets = (
        sources
        if same
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


def _editor(args: argparse.Namespace, model, head: str, mean, method: str = "diffusion"):
    """The editor of ``method`` (:class:`~emorig.edit.pipeline.Editor` for diffusion, a
    :class:`~emorig.edit.methods.WarpEditor` otherwise, holding the diffusion editor for
    warp+diffusion) and the head's renderer it draws with."""
    from emorig.edit.methods import WarpEditor
    from emorig.edit.pipeline import Editor
    from emorig.render.face import FaceRenderer

    renderer = FaceRenderer(load_head(head, args.assets, announce=False)).to(args.device)
    editor = None
    if model is not None:
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
            invert=args.invert and method == "diffusion",
            expression_input=expression_input,
        )
    if method != "diffusion":
        editor = WarpEditor(renderer, refiner=editor, strength=args.strength, invert=args.invert)
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


def _write_record(
    args, out: Path, method: str, emotion, predictor, modes, mean_shape: bool, grids, checks
) -> None:
    """``OUT/edits.json``: what ran. A face edit lists its ``modes`` (and the target); an
    emotion edit has ``modes: ["emotion"]``, ``emotion_edit`` (the request, the sweep and
    the predictor) and ``emotion_checks`` (per face: the found code's change, the
    recogniser's probabilities before and after, and whether the edit moved)."""
    from emorig.io.atomic import atomic_write

    explicit = args.face is not None or args.light is not None
    record = {
        **base_record(args, method, emotion, predictor, checks),
        "target_index": None if (emotion is not None or explicit) else args.target_index,
        "modes": ["emotion"] if emotion is not None else (["named"] if explicit else list(modes)),
        "steps": args.steps if method != "warp" else None,
        "invert": args.invert,
        "seed": args.seed,
        "mean_shape": mean_shape,
        "grids": [str(g) for g in grids],
    }
    with atomic_write(out / "edits.json", "w") as f:
        json.dump(record, f, indent=1)


def _emotion_target(args):
    from emorig.edit.emotion import EmotionTarget

    if args.emotion is None and args.valence is None and args.arousal is None:
        return None
    return EmotionTarget(args.emotion, args.intensity, args.valence, args.arousal)


def _code_edit(editor, renderer, predictor, source, emotion, explicit, args, out, checks):
    """Emotion or named edits of prepared items: find / apply the code per source, sample or
    warp it (and a sweep); write NAME_TAG.png, NAME_TAG_grid.png (and NAME_TAG_sweep.png);
    emotion edits are checked on the pixels into ``checks``."""
    from emorig.edit.modes import edit_mode
    from emorig.io.images import contact_sheet, save_png, to_uint8

    code = editor.source_code(source)
    if emotion is not None:
        search = edit_mode("emotion").search
        levels = emotion_levels(emotion, args.sweep)
        codes = [search(code, predictor, t) for t in levels]  # the last is the requested edit
        tag, label = emotion.emotion or "valence-arousal", emotion.describe()
    else:
        levels, codes = [None], [explicit_code(explicit, code)]
        tag = label = explicit_label(args)
    images = editor.sample_codes(source, codes)
    size = source.image.shape[-1]
    own, edited = (_rendered(renderer, c, source.crop_transform, size) for c in (code, codes[-1]))
    if emotion is not None and emotion.emotion is not None:
        _check_items(source, code, codes, images, emotion.emotion, args, checks)
    paths = []
    for i, name in enumerate(source.names):
        save_png(images[-1][i], out / f"{name}_{tag}.png")
        sheet = contact_sheet(
            [
                [to_uint8(source.image[i]), to_uint8(images[-1][i])],
                [to_uint8(own[i]), to_uint8(edited[i])],
            ],
            row_labels=["image", "buffer"],
            column_labels=["source", label],
        )
        paths.append(save_png(sheet, out / f"{name}_{tag}_grid.png"))
        if len(levels) > 1:
            strip = [to_uint8(images[k][i]) for k in range(len(levels))]
            labels = [f"{t.intensity:.2f}" for t in levels]
            save_png(contact_sheet([strip], column_labels=labels), out / f"{name}_{tag}_sweep.png")
    return paths


def _rendered(renderer, code, crop_transform, size: int):
    """(B, 3, S, S) the Lambertian render of ``code`` on the aligned images."""
    from emorig.render.conditions import render_conditions

    return render_conditions(renderer, code, crop_transform, size).rendered[:, :3].clamp(0, 1)


def _check_items(source, code, codes, images, emotion: str, args, checks: dict) -> None:
    """The recogniser's reading of the source and the edit of each item (face crops of the
    aligned images) -> :func:`~emorig.edit.photo.emotion_check` records in ``checks``."""
    import torch

    from emorig.edit.photo import emotion_check
    from emorig.emotion.crops import face_crops
    from emorig.io.images import to_uint8

    recognizer = recognizer_of(args.recognizer, args.device)
    device = next(recognizer.parameters()).device
    crop = source.crop_transform.to(device)
    with torch.no_grad():
        before = recognizer(face_crops(source.image.to(device), crop)).probabilities.cpu()
        after = recognizer(face_crops(images[-1].to(device), crop)).probabilities.cpu()
    for i, name in enumerate(source.names):
        frames = [to_uint8(im[i]) for im in images] if len(images) > 1 else []
        checks[name] = emotion_check(
            emotion, before[i], after[i], code[i : i + 1], codes[-1][i : i + 1], frames
        ).to_json()


__all__ = ["add_parser", "cmd_edit"]

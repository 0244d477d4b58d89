"""``emorig edit`` and ``emorig train diffusion``: thin flags -> :mod:`emorig.edit` and
:mod:`emorig.train.diffusion`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from emorig.errors import EmorigError

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


def _load_head_renderer(head_name: str, assets, device):
    from emorig.flame.heads import load_head
    from emorig.render.face import FaceRenderer

    return FaceRenderer(load_head(head_name, assets)).to(device)


def _faces(spec: str, out: Path, reconstructor: str, weights, args, size: int):
    """A prepared folder for ``spec`` (used as is, or made from photos under OUT)."""
    from emorig.data.dataset import MANIFEST_NAME, BufferDataset

    path = Path(spec)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return BufferDataset(path)
    if not path.exists():
        raise EmorigError(f"{path}: not found")
    from emorig.cli.prepare import prepare_images

    folder = out / "prepared" / f"{path.stem}-{reconstructor}"
    manifest = prepare_images(
        path,
        folder,
        reconstructor,
        size=size,
        weights=weights,
        head=args.head,
        assets=args.assets,
        device=args.device,
    )
    if manifest.count == 0:
        reasons = "; ".join(f"{s}: {r}" for s, r in manifest.skipped[:3])
        raise EmorigError(f"{path}: no usable face ({reasons})")
    return BufferDataset(folder)


def cmd_edit(args: argparse.Namespace) -> int:
    import torch

    from emorig.diffusion.loading import load_rig
    from emorig.diffusion.official import load_mean_shape
    from emorig.edit.pipeline import Editor, items_from_dataset, write_edits
    from emorig.edit.transfer import parse_modes

    started = time.perf_counter()
    modes = parse_modes(args.modes)
    out = Path(args.out)
    model = load_rig(args.model, device=args.device)
    size = model.config.image_size
    emotion = _emotion_target(args)
    if (emotion is None) == (args.target is None):
        raise EmorigError("give either --target or an emotion (--emotion / --valence --arousal)")
    sources = _faces(args.source, out, args.source_reconstructor, args.source_weights, args, size)
    targets = (
        sources
        if emotion is not None
        else _faces(args.target, out, args.target_reconstructor, args.target_weights, args, size)
    )
    if sources.manifest.settings.head != targets.manifest.settings.head:
        raise EmorigError(
            f"source codes belong to the {sources.manifest.settings.head} head, the target's "
            f"to {targets.manifest.settings.head}"
        )
    if not 0 <= args.target_index < len(targets):
        raise EmorigError(f"--target-index {args.target_index}: the target has {len(targets)}")
    mean = None
    if args.mean_shape:
        p = Path(args.mean_shape)
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            mean = load_file(str(p))["shape"]
        else:
            mean = load_mean_shape(p)
    elif sources.mean_shape is not None:
        mean = sources.mean_shape
    renderer = _load_head_renderer(sources.manifest.settings.head, args.assets, args.device)
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
    target = items_from_dataset(targets, [args.target_index])
    predictor = None
    if emotion is not None:
        from emorig.edit.emotion import emotion_predictor

        predictor = emotion_predictor(
            args.emotion_predictor,
            renderer,
            sources.manifest.settings.head,
            args.recognizer,
            args.device,
            lambda m: print(m, file=sys.stderr, flush=True),
        )
    indices = list(range(len(sources))) if args.indices is None else args.indices
    bad = [i for i in indices if not 0 <= i < len(sources)]
    if bad:
        raise EmorigError(f"--indices {bad}: the source has {len(sources)} faces")
    from tqdm import tqdm

    grids = []
    bar = tqdm(total=len(indices), unit="face", desc="editing", disable=None, file=sys.stderr)
    with torch.no_grad():
        for start in range(0, len(indices), args.batch_size):
            chunk = indices[start : start + args.batch_size]
            source = items_from_dataset(sources, chunk)
            if emotion is not None:
                grids += _emotion_edit(editor, predictor, source, emotion, args, out)
            else:
                result = editor.edit(source, target, modes)
                grids += write_edits(result, source, target, out, with_reconstruction=args.invert)
            bar.update(len(chunk))
    bar.close()
    record = {
        "model": str(args.model),
        "source": str(args.source),
        "target": None if args.target is None else str(args.target),
        "emotion": None if emotion is None else emotion.describe(),
        "target_index": args.target_index,
        "modes": list(modes),
        "steps": args.steps,
        "invert": args.invert,
        "seed": args.seed,
        "mean_shape": mean is not None,
        "grids": [str(g) for g in grids],
    }
    from emorig.io.atomic import atomic_write

    with atomic_write(out / "edits.json", "w") as f:
        json.dump(record, f, indent=1)
    n_edits = 1 if emotion is not None else len(modes)
    print(
        f"{len(indices)} faces x {n_edits} edits in {time.perf_counter() - started:.1f} s "
        f"-> {out} (grids: NAME_grid.png)"
    )
    return 0


def _emotion_target(args):
    from emorig.edit.emotion import EmotionTarget

    if args.emotion is None and args.valence is None and args.arousal is None:
        return None
    return EmotionTarget(args.emotion, args.intensity, args.valence, args.arousal)


def _emotion_edit(editor, predictor, source, emotion, args, out: Path) -> list[Path]:
    """Find the expression for ``emotion`` per source, sample it (and a sweep); write
    NAME_EMOTION.png, NAME_EMOTION_grid.png and NAME_EMOTION_sweep.png."""
    import dataclasses

    from emorig.edit.emotion import find_expression, preset_start
    from emorig.io.images import contact_sheet, save_png, to_uint8

    code = editor.source_code(source)
    builtin = predictor.__class__.__name__ == "CodeSpacePredictor"

    def search(target):
        start = preset_start(code, target) if builtin else None
        return find_expression(code, predictor, target, start=start)

    levels = [emotion]
    if args.sweep and args.sweep > 1:
        levels = [
            dataclasses.replace(emotion, intensity=emotion.intensity * k / (args.sweep - 1))
            for k in range(args.sweep)
        ]
    codes = [search(t).code for t in levels]  # the last is the requested edit
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


def add_edit_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "edit",
        help="edit expression, pose, light (or latent) of faces with a diffusion model",
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
    p.add_argument("--target-index", type=int, default=0, help="item of a prepared target (0)")
    p.add_argument("--indices", type=int, nargs="+", help="only these source items")
    p.add_argument("--modes", default="pose,exp,light", help="comma list of pose,exp,light,latent")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--source-reconstructor",
        default="fit",
        choices=("deca", "emoca", "fit"),
        help="codes of source photos (fit: no weights needed)",
    )
    p.add_argument(
        "--target-reconstructor",
        default="fit",
        choices=("deca", "emoca", "fit"),
        help="codes of the target photo",
    )
    p.add_argument("--source-weights", help="model folder/file for the source reconstructor")
    p.add_argument("--target-weights", help="model folder/file for the target reconstructor")
    p.add_argument(
        "--mean-shape",
        help="album mean identity (mean_shape.safetensors of a prepared album, or "
        "DiffusionRig's mean_shape.pkl); default: the source folder's, if prepared with one",
    )
    e = p.add_argument_group(
        "emotion edits",
        "Instead of a target photo: find the expression that shows an emotion (identity, "
        "pose and light untouched) and sample it.",
    )
    e.add_argument(
        "--emotion", help="neutral, happy, sad, surprise, fear, disgust, anger, contempt"
    )
    e.add_argument("--intensity", type=float, default=1.0, help="0 (as is) .. 1 (clear) (1)")
    e.add_argument("--valence", type=float, help="target valence in [-1, 1] (with --arousal)")
    e.add_argument("--arousal", type=float, help="target arousal in [-1, 1]")
    e.add_argument(
        "--sweep", type=int, metavar="N", help="also write a strip of N intensities 0..intensity"
    )
    e.add_argument(
        "--emotion-predictor",
        default="auto",
        choices=("auto", "codes", "rendered"),
        help="codes: an EmoDECA MLP on FLAME codes (trained on synthetic built-in-head codes, "
        "seconds); rendered: --recognizer on renders of the code; auto: codes on the "
        "built-in head, rendered otherwise",
    )
    p.add_argument("--invert", action="store_true", help="start from the source's DDIM inversion")
    p.add_argument("--steps", default="ddim20", help="DDIM respacing (ddim20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed noise (0)")
    p.add_argument("--batch-size", type=int, default=8, help="sources edited at once (8)")
    p.add_argument(
        "--recognizer", default="fer", help="emotion recogniser for DiffusionRig-EMO models"
    )
    p.add_argument("--head", help="head of photo codes (default: builtin)")
    p.add_argument("--assets", metavar="DIR", help="asset folder (default: $EMORIG_HOME)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.set_defaults(func=cmd_edit)
    return p


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from emorig.cli.main import _step_progress
    from emorig.train.diffusion import RigTrainConfig, train_rig

    overrides = {}
    for item in args.set or []:
        name, _, value = item.partition("=")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            raise EmorigError(f"--set {item}: expected NAME=VALUE (JSON value)") from None
    cfg = RigTrainConfig(
        stage=args.stage,
        data=args.data,
        out=args.out,
        init=args.init,
        model=args.model,
        model_overrides=overrides,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        grad_clip=args.grad_clip,
        ema=args.ema,
        p2_gamma=args.p2_gamma,
        expression_dim=args.expression_dim,
        expression_source=args.expression_source,
        emotion_weight=args.emotion_weight,
        recognizer=args.recognizer,
        save_every=args.save_every,
        sample_every=args.sample_every,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        cpu=args.cpu,
    )
    bar, progress = _step_progress(cfg.resolved("steps"), f"training {cfg.stage}")
    result = train_rig(cfg, progress=progress)
    bar.close()
    last = result.losses.get("loss", float("nan"))
    print(
        f"{cfg.stage}: {result.step} steps, last loss {last:.4f} in {result.seconds:.0f} s; "
        f"checkpoints, losses.jsonl and samples/ in {cfg.out}"
    )
    if result.model_folder is not None:
        print(f"model: {result.model_folder} (use with emorig edit --model)")
    return 0


def add_train_parser(tsub) -> argparse.ArgumentParser:
    p = tsub.add_parser(
        "diffusion",
        help="train DiffusionRig(-EMO): stage1 on many faces, stage2 on one person's album",
        description="One loop for both stages (run it under 'accelerate launch -m emorig' for "
        "several GPUs or nodes, with --mixed-precision as you like). Stage 1 trains the "
        "denoiser and the global latent encoder; stage 2 fine-tunes only the denoiser on "
        "~20 photos of one person (lr 1e-5, batch 4, 5k steps by default). Resumes exactly "
        "from the newest checkpoint in --out; every checkpoint carries its config. Writes "
        "losses.jsonl, samples/step-N.png (buffer | image | sample) and OUT/model.",
    )
    p.add_argument("--stage", required=True, choices=("stage1", "stage2"))
    p.add_argument("--data", required=True, help="a prepared folder (emorig prepare / synth)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--init", help="start from an emorig model folder or DiffusionRig model*.pt")
    p.add_argument(
        "--model",
        default="official",
        choices=("official", "small", "tiny"),
        help="architecture of a new model (official: DiffusionRig's 145M; small: CPU-sized)",
    )
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="change a model field")
    p.add_argument("--steps", type=int, help="default: stage1 50000, stage2 5000")
    p.add_argument("--batch-size", type=int, help="per process; default: stage1 32, stage2 4")
    p.add_argument("--lr", type=float, help="default: stage1 1e-4, stage2 1e-5")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay (0: off, as DiffusionRig)")
    p.add_argument("--p2-gamma", type=float, default=1.0, help="P2 weighting exponent (0: off)")
    p.add_argument(
        "--expression-dim", type=int, default=0, help="DiffusionRig-EMO expression code (0: off)"
    )
    p.add_argument(
        "--expression-source",
        default="code",
        choices=("code", "emotion"),
        help="expression encoder input: FLAME expression+jaw, or recogniser features",
    )
    p.add_argument(
        "--emotion-weight", type=float, default=0.0, help="emotion loss on predicted x0 (0: off)"
    )
    p.add_argument("--recognizer", help="emotion recogniser (fer, emoca:DIR, folder)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    p.set_defaults(func=cmd_train_diffusion)
    return p

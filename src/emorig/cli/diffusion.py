"""``emorig train diffusion``: train DiffusionRig(-EMO). Thin: flags ->
:class:`~emorig.train.diffusion.RigTrainConfig` -> :func:`~emorig.train.diffusion.train_rig`.
(``emorig edit`` lives in :mod:`emorig.cli.edit`.)"""

from __future__ import annotations

import argparse
import json

from emorig.cli import options
from emorig.cli.output import step_progress

DESCRIPTION = (
    "One loop for both stages (run it under 'accelerate launch -m emorig' for several GPUs or "
    "nodes, with --mixed-precision as you like). Stage 1 trains the denoiser and the global "
    "latent encoder; stage 2 fine-tunes only the denoiser on ~20 photos of one person (lr 1e-5, "
    "batch 4, 5k steps by default). Resumes exactly from the newest checkpoint in --out; every "
    "checkpoint carries its config. Writes losses.jsonl, samples/step-N.png (buffer | image | "
    "sample) and OUT/model."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``diffusion`` to ``emorig train``'s sub-commands; returns its parser."""
    from emorig.diffusion.config import CONDITION_METHODS, MODEL_PRESETS
    from emorig.train.diffusion import STAGE_DEFAULTS

    p = subparsers.add_parser(
        "diffusion",
        help="train DiffusionRig(-EMO): stage1 on many faces, stage2 on one person's album",
        description=DESCRIPTION,
    )
    p.add_argument("--stage", required=True, choices=tuple(STAGE_DEFAULTS))
    p.add_argument("--data", required=True, help="a prepared folder (emorig prepare / synth)")
    p.add_argument("--out", required=True, type=options.out_dir, help="run folder")
    p.add_argument("--init", help="start from an emorig model folder or DiffusionRig model*.pt")
    p.add_argument(
        "--model",
        default=MODEL_PRESETS[0],
        choices=MODEL_PRESETS,
        help="architecture of a new model (official: DiffusionRig's 145M; small: CPU-sized)",
    )
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="change a model field")
    p.add_argument("--steps", type=options.positive_int, help="default: stage1 50000, stage2 5000")
    p.add_argument(
        "--batch-size", type=options.positive_int, help="per process; default: stage1 32, stage2 4"
    )
    p.add_argument("--lr", type=options.positive_float, help="default: stage1 1e-4, stage2 1e-5")
    p.add_argument("--grad-clip", type=options.non_negative_float, default=1.0, help="(1; 0: off)")
    p.add_argument(
        "--ema",
        type=options.float_in(0, 1, hi_open=True),
        default=0.0,
        help="EMA decay (0: off, as DiffusionRig)",
    )
    p.add_argument(
        "--p2-gamma",
        type=options.non_negative_float,
        default=1.0,
        help="P2 weighting exponent (0: off)",
    )
    p.add_argument(
        "--expression-dim",
        type=options.int_in(0, 4096),
        default=0,
        help="DiffusionRig-EMO expression code (0: off)",
    )
    p.add_argument(
        "--expression-source",
        default="code",
        choices=("code", "emotion"),
        help="expression encoder input: FLAME expression+jaw, or recogniser features",
    )
    p.add_argument(
        "--emotion-weight",
        type=options.non_negative_float,
        default=0.0,
        help="emotion loss on predicted x0 (0: off)",
    )
    p.add_argument("--recognizer", help="emotion recogniser (fer, emoca:DIR, folder)")
    p.add_argument(
        "--autoencoder",
        metavar="PATH|builtin-f4|builtin-f8",
        help="latent DiffusionRig-EMO: denoise this autoencoder's latents instead of pixels "
        "(builtin-f4 / builtin-f8: shipped, trained on SYNTHETIC built-in-head renders; or a "
        "diffusers AutoencoderKL folder such as Stable Diffusion's vae/). Default: pixels",
    )
    p.add_argument(
        "--condition-method",
        default="unshuffle",
        choices=CONDITION_METHODS,
        help="how a latent model reads the buffers: unshuffle (space-to-depth, nothing lost; "
        "default, measured in docs/latent-diffusion.md), resize (area average to the latent "
        "side) or encode (through the autoencoder)",
    )
    options.add_training_run(p, sample_every=1000)
    p.set_defaults(func=cmd_train_diffusion)
    return p


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from emorig.train.diffusion import RigTrainConfig, train_rig

    overrides = options.parse_assignments(args.set, "--set", json.loads, "NAME=VALUE (JSON value)")
    cfg = options.config_from_args(RigTrainConfig, args, model_overrides=overrides)
    with step_progress(cfg.resolved("steps"), f"training {cfg.stage}") as progress:
        result = train_rig(cfg, progress=progress)
    last = result.losses.get("loss", float("nan"))
    print(
        f"{cfg.stage}: {result.step} steps, last loss {last:.4f} in {result.seconds:.0f} s; "
        f"checkpoints, losses.jsonl and samples/ in {cfg.out}"
    )
    if result.model_folder is not None:
        print(f"model: {result.model_folder} (use with emorig edit --model)")
    return 0


__all__ = ["add_parser", "cmd_train_diffusion"]

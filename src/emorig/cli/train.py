"""``emorig train reconstruct`` and ``emorig train emotion`` (``train diffusion`` lives in
:mod:`emorig.cli.diffusion`). Thin: flags -> :class:`~emorig.train.recon.ReconTrainConfig` /
:class:`~emorig.train.emotion.EmotionTrainConfig` -> one training run."""

from __future__ import annotations

import argparse

from emorig.cli import diffusion, options
from emorig.cli.output import step_progress

#: The command's name and its line in ``emorig --help``.
NAME = "train"
HELP = "train models (reconstruction encoders, emotion recogniser, diffusion)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` (``reconstruct``, ``emotion``, ``diffusion``) to ``emorig``'s
    sub-commands; returns its parser."""
    train = subparsers.add_parser(NAME, help=HELP)
    sub = train.add_subparsers(dest="train_command", metavar="WHAT")
    add_reconstruct_parser(sub)
    add_emotion_parser(sub)
    diffusion.add_parser(sub)
    add_autoencoder_parser(sub)
    return train


def add_reconstruct_parser(subparsers) -> argparse.ArgumentParser:
    from emorig.train.recon import STAGES

    p = subparsers.add_parser(
        "reconstruct",
        help=f"train DECA/EMOCA encoders: {', '.join(STAGES[:-1])} or {STAGES[-1]} stage",
        description="One loop for every stage (run it under 'accelerate launch -m emorig' for "
        "several GPUs or nodes). Resumes from the newest checkpoint in --out; every "
        "checkpoint carries its config. Without --data the head's synthetic faces are used.",
    )
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--out", required=True, type=options.out_dir, help="run folder")
    options.add_head(p)
    options.add_assets(p)
    p.add_argument(
        "--init",
        help="start from an emorig model folder, deca_model.tar or EMOCA "
        "folder (required for detail and emoca)",
    )
    p.add_argument(
        "--data",
        help="folder of 'emorig align --mode deca --size 224' crops, one "
        "sub-folder per identity (default: synthetic faces)",
    )
    p.add_argument("--steps", type=options.positive_int, default=1000)
    p.add_argument(
        "--batch-size", type=options.positive_int, default=8, help="identities per batch"
    )
    p.add_argument(
        "--group-size", type=options.positive_int, default=1, help="images per identity (K)"
    )
    p.add_argument("--lr", type=options.positive_float, default=1e-4)
    options.add_backbone(p, width_dest="backbone_width")
    p.add_argument("--loss-weights", dest="weights", default="deca", choices=("deca", "emoca"))
    p.add_argument(
        "--weight",
        action="append",
        metavar="NAME=VALUE",
        help="override one loss weight, e.g. identity=0.5 (repeatable)",
    )
    p.add_argument("--identity-net", help="face-recognition network (.pt2 export / TorchScript)")
    p.add_argument("--emotion-net", help="emotion feature network (.pt2 / TorchScript)")
    p.add_argument("--vgg19", help="torchvision vgg19 state dict for ID-MRF (detail stage)")
    options.add_training_run(p, sample_every=500)
    p.set_defaults(func=cmd_train_reconstruct)
    return p


def cmd_train_reconstruct(args: argparse.Namespace) -> int:
    from emorig.train.recon import ReconTrainConfig, train_reconstruction

    overrides = options.parse_assignments(
        args.weight, "--weight", options.non_negative_float, "NAME=NUMBER (at least 0)"
    )
    cfg = options.config_from_args(ReconTrainConfig, args, weight_overrides=overrides)
    with step_progress(cfg.steps, f"training {cfg.stage}") as progress:
        result = train_reconstruction(cfg, progress=progress)
    last = result.losses.get("loss", float("nan"))
    print(
        f"{cfg.stage}: {result.step} steps, last loss {last:.4f} in {result.seconds:.0f} s; "
        f"checkpoints and losses.jsonl in {cfg.out}"
    )
    if result.model_folder is not None:
        print(f"model: {result.model_folder} (use with --weights)")
    return 0


def add_emotion_parser(subparsers) -> argparse.ArgumentParser:
    from emorig.types import EMOTION_CLASSES

    p = subparsers.add_parser(
        "emotion",
        help=f"train an emotion recogniser ({len(EMOTION_CLASSES)} classes + valence/arousal)",
        description="Class-balanced sampling, EMOCA's augmentation and loss mix, validation "
        "with EMOCA's metrics and early stopping; resumes from the newest checkpoint in --out "
        "(run under 'accelerate launch -m emorig' for several GPUs). The best model is saved "
        "to OUT/model for 'emorig emotion predict --recognizer OUT/model'.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="AffectNet-style CSV (path, expression, valence, arousal), a folder of class "
        "sub-folders (happy/, sad/, ...), or 'synthetic' (labelled renders of the built-in "
        "head; synthetic faces, not a model of real emotions)",
    )
    p.add_argument("--out", required=True, type=options.out_dir, help="run folder")
    p.add_argument("--images-root", help="folder the CSV's paths are relative to")
    p.add_argument("--init", help="recogniser to fine-tune (emoca:DIR or an emorig folder)")
    options.add_backbone(p)
    p.add_argument("--input-size", type=options.image_size, default=224)
    p.add_argument("--steps", type=options.positive_int, default=20000)
    p.add_argument("--batch-size", type=options.positive_int, default=32)
    p.add_argument("--lr", type=options.positive_float, default=1e-4)
    p.add_argument(
        "--val-fraction", type=options.float_in(0, 1, lo_open=True, hi_open=True), default=0.1
    )
    p.add_argument("--val-every", type=options.positive_int, default=500)
    p.add_argument(
        "--patience",
        type=options.non_negative_int,
        default=10,
        help="validations without improvement (0: off)",
    )
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument(
        "--synthetic-count", type=options.positive_int, default=2048, help="synthetic pool size"
    )
    options.add_training_run(p, sample_every=None)
    p.set_defaults(func=cmd_train_emotion)
    return p


def cmd_train_emotion(args: argparse.Namespace) -> int:
    from emorig.train.emotion import EmotionTrainConfig, train_emotion

    data = None if args.data == "synthetic" else args.data
    cfg = options.config_from_args(EmotionTrainConfig, args, data=data)
    with step_progress(cfg.steps, "training emotion") as progress:
        result = train_emotion(cfg, progress=progress)
    acc = result.best.get("e_acc", float("nan"))
    how = "stopped early" if result.stopped_early else "finished"
    print(
        f"emotion recogniser: {how} at step {result.step}; best validation at step "
        f"{result.best_step} (E-ACC {acc:.3f}) in {result.seconds:.0f} s; log in {cfg.out}"
    )
    if result.model_folder is not None:
        print(f"model: {result.model_folder} (use with --recognizer)")
    return 0


def add_autoencoder_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "autoencoder",
        help="train a small AutoencoderKL (f = 4 or 8) for latent diffusion",
        description="Train a diffusers AutoencoderKL on the images (and, a quarter of the "
        "time, the condition buffers) of a prepared folder, on random crops; L1 + SSIM + a "
        "small KL. Resumes from the newest checkpoint in --out. OUT/model is a diffusers folder "
        "for 'emorig train diffusion --autoencoder OUT/model'; its training.json holds the "
        "held-out reconstruction PSNR and the scaling factor (1 / std of the latents). The "
        "shipped builtin-f4 / builtin-f8 were made this way (scripts/train_autoencoders.sh).",
    )
    p.add_argument("--data", required=True, help="a prepared folder ('emorig synth --prepared')")
    p.add_argument("--out", required=True, type=options.out_dir, help="run folder")
    p.add_argument(
        "--factor", type=options.int_in(4, 8), choices=(4, 8), default=8, help="downsampling f (8)"
    )
    p.add_argument("--latent-channels", type=options.positive_int, default=4, help="C (4)")
    p.add_argument("--steps", type=options.positive_int, default=2000)
    p.add_argument("--batch-size", type=options.positive_int, default=8)
    p.add_argument("--lr", type=options.positive_float, default=1e-3)
    p.add_argument(
        "--crop",
        type=options.non_negative_int,
        default=128,
        help="side of the random training crops (0: whole images; 128)",
    )
    p.add_argument(
        "--held-out",
        type=options.positive_int,
        default=64,
        help="images kept out for the PSNR and the scaling factor (64)",
    )
    options.add_training_run(p, save_every=200, sample_every=None)
    p.set_defaults(func=cmd_train_autoencoder)
    return p


def cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from emorig.train.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = options.config_from_args(AutoencoderTrainConfig, args)
    with step_progress(cfg.steps, f"training autoencoder f={cfg.factor}") as progress:
        result = train_autoencoder(cfg, progress=progress)
    if result.losses:
        print(
            f"autoencoder f={cfg.factor}: {result.step} steps, last loss "
            f"{result.losses['loss']:.4f} in {result.seconds:.0f} s"
        )
    else:
        print(f"autoencoder f={cfg.factor}: already trained to {result.step} steps in {cfg.out}")
    if result.model_folder is not None:
        print(
            f"model: {result.model_folder} (held-out PSNR {result.psnr:.2f} dB; use with "
            "--autoencoder)"
        )
    return 0


__all__ = [
    "add_autoencoder_parser",
    "add_emotion_parser",
    "add_parser",
    "add_reconstruct_parser",
    "cmd_train_autoencoder",
    "cmd_train_emotion",
    "cmd_train_reconstruct",
]

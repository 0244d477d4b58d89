"""``emorig demo``: the whole pipeline on the built-in synthetic head, nothing downloaded."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Run emorig end to end with nothing downloaded: synthesise a personal album, target faces and
a multi-view set from the built-in SYNTHETIC head; load the small stage-1 diffusion model this
project trained on synthetic faces (shipped with emorig; or --train-stage1 STEPS to train one
here); personalise it on the album (stage 2); edit expression, pose and light from target
faces and ask for emotions (with an intensity sweep); evaluate the edits by re-reconstructing
them; write OUT/report.html (self-contained, opens offline) and OUT/report.json.

About 10 minutes on 2 CPU cores; --fast does a smaller version in about 2 minutes."""

EPILOG = """\
All faces are renders of a procedurally generated head, not people; the numbers in the report
say how the pipeline behaves on that head, nothing about real photos."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the built-in synthetic head, with an HTML report",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="emorig-out/demo", help="output folder (emorig-out/demo)")
    p.add_argument("--fast", action="store_true", help="a smaller run (about 2 minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and noise (0)")
    p.add_argument("--stage1", metavar="DIR", help="stage-1 model folder (default: shipped)")
    p.add_argument(
        "--train-stage1",
        type=int,
        default=0,
        metavar="STEPS",
        help="train the stage-1 model here for STEPS steps instead of loading it (slow)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    from emorig.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        out=args.out,
        fast=args.fast,
        seed=args.seed,
        stage1=args.stage1,
        train_stage1=args.train_stage1,
        device=args.device,
    )

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = run_demo(cfg, say)
    print(f"report: {result.report} ({result.seconds:.0f} s)")
    return 0


def add_ablation_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ablation",
        help="DiffusionRig vs each EMO addition on built-in-head data (a Markdown table)",
        description="Fine-tune the demo's stage-1 model the same way with and without the "
        "expression encoder and the emotion loss, score each variant with the evaluation "
        "protocol (expression error by re-reconstruction, identity, emotion accuracy of "
        "emotion edits) and write OUT/ablation.md and OUT/ablation.json. SYNTHETIC data.",
    )
    p.add_argument("--out", default="emorig-out/ablation", help="output folder")
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps per variant")
    p.add_argument("--pairs", type=int, default=8, help="edit pairs scored per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--recognizer", default="fer", help="emotion recogniser of the emotion loss (fer)"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_ablation)
    return p


def cmd_ablation(args: argparse.Namespace) -> int:
    from emorig.demo.ablation import AblationConfig, run_ablation

    cfg = AblationConfig(
        out=args.out,
        steps=args.steps,
        pairs=args.pairs,
        seed=args.seed,
        recognizer=args.recognizer,
        device=args.device,
    )
    path = run_ablation(cfg, lambda m: print(m, file=sys.stderr, flush=True))
    print(path.read_text())
    return 0

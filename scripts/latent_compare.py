"""Measure latent DiffusionRig-EMO on built-in-head data (the tables of docs/latent-diffusion.md).

Usage::

    python scripts/latent_compare.py conditions --data runs/synth256/prepared --out runs/lc
    python scripts/latent_compare.py pixel-vs-latent --latent runs/lc/resize/model --out runs/pvl

``conditions``: the same small f = 8 latent model trained the same way (steps, batch, seed)
with each way of bringing the 256 px condition buffers to the 32x32 latent side (resize,
unshuffle, encode), each scored by the evaluation protocol on held-out synthetic faces
(expression / jaw / pose error of ``exp`` edits by re-reconstruction, identity), with the
held-out denoising loss, the training time per step and the parameter count.

``pixel-vs-latent``: the demo's pixel model (64 px) and a latent model (256 px) scored by the
same protocol on the same held-out faces (the same synthetic codes rendered at each size),
emotion edits included (accuracy over the 8 classes by the code-space predictor).

Everything is SYNTHETIC (renders of the procedural built-in head).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from emorig.data.dataset import BufferDataset
from emorig.diffusion.config import CONDITION_METHODS
from emorig.diffusion.pipeline import RigPipeline
from emorig.diffusion.pretrained import load_pretrained
from emorig.diffusion.schedule import epsilon_loss
from emorig.evaluate.protocol import evaluate_model
from emorig.flame.heads import load_head
from emorig.render.face import FaceRenderer
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from emorig.train.diffusion import RigTrainConfig, train_rig

#: Seed of the held-out faces (the training sets use other seeds).
HELD_OUT_SEED = 4242


def held_out(out: Path, size: int, count: int, renderer) -> BufferDataset:
    folder = out / f"held-out-{size}"
    if not (folder / "manifest.json").is_file():
        config = SynthDatasetConfig(
            mode="random", count=count, size=size, seed=HELD_OUT_SEED, emotion_fraction=1.0
        )
        write_prepared(config, folder, renderer)
    return BufferDataset(folder)


@torch.no_grad()
def denoising_loss(model, data: BufferDataset, seed: int = 0) -> float:
    """Mean epsilon MSE over the held-out items at 10 fixed timesteps (same noise for every
    model), in model space."""
    pipe = RigPipeline(model.eval())
    g = torch.Generator().manual_seed(seed)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    cond = torch.stack([it["condition"] for it in items])
    x0 = pipe.to_model(images)
    latent = pipe.encode_latent(images)
    mcond = pipe.model_condition(cond)
    losses = []
    for t_value in range(50, 1000, 100):
        t = torch.full((len(items),), t_value, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=g)
        x_t = pipe.schedule.q_sample(x0, t, noise)
        eps = model(x_t, t, mcond, latent=latent)
        losses.append(float(epsilon_loss(eps, noise, t, pipe.schedule, p2_gamma=0).mean()))
    return sum(losses) / len(losses)


def score(model, data: BufferDataset, renderer, emotions: bool, pairs: int) -> dict:
    from emorig.demo.run import encoder_reconstruct
    from emorig.edit.emotion import cached_code_predictor
    from emorig.types import EMOTION_CLASSES

    t0 = time.perf_counter()
    ev = evaluate_model(
        model, data, renderer=renderer, reconstruct=encoder_reconstruct("cpu"),
        modes=("exp",), emotions=EMOTION_CLASSES if emotions else None, pairs=pairs, seed=0,
        steps="ddim20", invert=True, identity="shape",
        predictor=cached_code_predictor(renderer, "builtin") if emotions else None,
    )  # fmt: skip
    exp, ref = ev.row("exp"), ev.row("unedited")
    out = {
        "expression_l2": exp.errors.expression_l2,
        "jaw_deg": exp.errors.jaw_deg,
        "pose_deg": exp.errors.pose_deg,
        "identity_cosine": exp.identity.cosine if exp.identity else None,
        "unedited_expression_l2": ref.errors.expression_l2,
        "unedited_jaw_deg": ref.errors.jaw_deg,
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }
    if ev.emotion is not None:
        out["emotion_accuracy"] = ev.emotion.accuracy
    return out


def _args(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def conditions(args) -> None:
    out = Path(args.out)
    renderer = FaceRenderer(load_head("builtin"))
    data = held_out(out, 256, args.held_out, renderer)
    rows = {}
    for method in args.methods.split(","):
        assert method in CONDITION_METHODS, method
        cfg = RigTrainConfig(
            stage="stage1", data=args.data, out=str(out / method), model="small",
            steps=args.steps, batch_size=args.batch_size, lr=5e-4, ema=0.99, p2_gamma=0.0,
            save_every=100, sample_every=args.steps, seed=1, cpu=True,
            autoencoder=args.autoencoder, condition_method=method,
        )  # fmt: skip
        t0 = time.perf_counter()
        result = train_rig(cfg)
        seconds = time.perf_counter() - t0
        model = load_pretrained(result.model_folder)
        row = {
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "input_channels": model.config.in_channels,
            "train_seconds_per_step": round(seconds / args.steps, 3),
            "held_out_denoising_mse": round(denoising_loss(model, data), 4),
        }
        row.update(score(model, data, renderer, emotions=False, pairs=args.pairs))
        rows[method] = row
        print(method, json.dumps(row), flush=True)
    (out / f"conditions-{args.methods.replace(',', '+')}.json").write_text(
        json.dumps({"args": _args(args), "rows": rows}, indent=1)
    )


def pixel_vs_latent(args) -> None:
    from emorig.weights import STAGE1_NAME, packaged_weights

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    renderer = FaceRenderer(load_head("builtin"))
    rows = {}
    models = [("latent", args.latent)]
    if not args.latent_only:
        models.insert(0, ("pixel 64", packaged_weights(STAGE1_NAME)))
    for name, folder in models:
        model = load_pretrained(folder)
        data = held_out(out, model.config.image_size, args.held_out, renderer)
        row = {"model": model.config.describe()}
        row.update(score(model, data, renderer, emotions=True, pairs=args.pairs))
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    (out / f"pixel_vs_latent{'-latent' if args.latent_only else ''}.json").write_text(
        json.dumps({"args": _args(args), "rows": rows}, indent=1)
    )


def figure(args) -> None:
    """docs/images/latent-vs-pixel.png: the same held-out faces edited (exp from one target,
    DDIM-20 from the inversion) by the pixel 64 px model and a latent 256 px model."""
    import numpy as np
    from PIL import Image

    from emorig.edit.pipeline import Editor, items_from_dataset
    from emorig.io.images import contact_sheet, save_png, to_uint8
    from emorig.weights import STAGE1_NAME, packaged_weights

    out = Path(args.out)
    renderer = FaceRenderer(load_head("builtin"))
    faces = [int(i) for i in args.faces.split(",")]
    columns: list[list[np.ndarray]] = [[] for _ in faces]
    for folder in (packaged_weights(STAGE1_NAME), args.latent):
        model = load_pretrained(folder)
        data = held_out(out, model.config.image_size, args.held_out, renderer)
        editor = Editor(model, renderer, invert=True)
        target = items_from_dataset(data, [args.target])
        result = editor.edit(items_from_dataset(data, faces), target, ["exp"])
        for row, _ in enumerate(faces):
            for img in (data[faces[row]]["image"], result.images["exp"][row],
                        result.reconstruction[row]):  # fmt: skip
                tile = Image.fromarray(to_uint8(img)).resize((256, 256), Image.BICUBIC)
                columns[row].append(np.asarray(tile))
        if not columns[0] or len(columns[0]) == 3:
            t = Image.fromarray(to_uint8(target.image[0])).resize((256, 256), Image.BICUBIC)
            target_tile = np.asarray(t)
    rows = [[target_tile, *r] for r in columns]
    labels = ["target (exp)", "pixel 64: source", "pixel 64: exp edit", "pixel 64: unedited",
              "latent 256: source", "latent 256: exp edit", "latent 256: unedited"]  # fmt: skip
    sheet = contact_sheet(rows, column_labels=labels)
    print(save_png(sheet, args.image))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("conditions")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--autoencoder", default="builtin-f8")
    c.add_argument("--methods", default=",".join(CONDITION_METHODS))
    c.add_argument("--steps", type=int, default=600)
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--pairs", type=int, default=16)
    c.add_argument("--held-out", type=int, default=32)
    c.set_defaults(func=conditions)
    v = sub.add_parser("pixel-vs-latent")
    v.add_argument("--latent", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--pairs", type=int, default=16)
    v.add_argument("--held-out", type=int, default=32)
    v.add_argument("--latent-only", action="store_true", help="skip the pixel model's row")
    v.set_defaults(func=pixel_vs_latent)
    f = sub.add_parser("figure")
    f.add_argument("--latent", required=True)
    f.add_argument("--out", required=True, help="where the held-out faces are (pixel-vs-latent)")
    f.add_argument("--faces", default="0,1,2")
    f.add_argument("--target", type=int, default=5)
    f.add_argument("--held-out", type=int, default=32)
    f.add_argument("--image", default="docs/images/latent-vs-pixel.png")
    f.set_defaults(func=figure)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

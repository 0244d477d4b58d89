"""The ``emorig`` command. Thin: parse flags, call the library, print one-line errors."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from emorig import __version__
from emorig.cli import demo as demo_cli
from emorig.cli import diffusion as diffusion_cli
from emorig.cli import evaluate as evaluate_cli
from emorig.cli import prepare as prepare_cli
from emorig.cli import synth as synth_cli
from emorig.errors import EmorigError

EPILOG = """\
Licensed files (FLAME, DECA, EMOCA, DiffusionRig) are never downloaded: put them in one folder
and pass --assets DIR or set EMORIG_HOME. Without them every command runs on the built-in
synthetic head (--head builtin), which is procedurally generated and not a model of real faces.
"""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(desc: str):
    """A function wrapping an iterable in a progress bar on stderr (off when not a terminal)."""
    from tqdm import tqdm

    def wrap(items):
        return tqdm(items, unit="img", desc=desc, disable=None, file=sys.stderr)

    return wrap


def cmd_assets_check(args: argparse.Namespace) -> int:
    from emorig.assets import asset_home, asset_spec, check_assets

    home = asset_home(args.assets)
    if home is None:
        _say(
            "no asset folder given (--assets DIR or EMORIG_HOME); listing what emorig can use. "
            "The built-in synthetic head needs none of these."
        )
    else:
        print(f"asset folder: {home}")
    statuses = check_assets(home)
    width = max(len(s.key) for s in statuses)
    pad = " " * (width + 10)
    for s in statuses:
        spec = asset_spec(s.key)
        if s.path is None and home is None:
            print(f"-       {s.key:<{width}}  {spec.display_name}: {spec.what}")
            print(f"{pad}obtain it from {spec.obtain}")
            continue
        mark = "ok     " if s.ok else ("BROKEN " if s.path is not None else "missing")
        print(f"{mark} {s.key:<{width}}  {s.message}")
        if s.path is None:
            print(f"{pad}needed for: {', '.join(spec.required_for)}")
    broken = [s for s in statuses if s.path is not None and not s.ok]
    return 1 if broken else 0


def cmd_assets_convert_flame(args: argparse.Namespace) -> int:
    from emorig.io.flame_files import read_flame, write_flame_npz

    t = time.perf_counter()
    flame = read_flame(args.input)
    out = Path(args.output)
    if out.suffix != ".npz":
        raise EmorigError(
            f"{out}: the converted model is written as .npz; name it e.g. "
            f"{out.with_suffix('.npz').name}"
        )
    write_flame_npz(flame, out)
    print(
        f"wrote {out} ({flame.name}: {flame.n_vertices} vertices, "
        f"{flame.shapedirs.shape[2]} identity + {flame.exprdirs.shape[2]} expression "
        f"components) in {time.perf_counter() - t:.1f} s; load it anywhere a FLAME file is accepted"
    )
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from emorig.flame.heads import load_head
    from emorig.render.showcase import (
        BUILTIN_SHOWCASE,
        FLAME_SHOWCASE,
        render_showcase,
    )

    if args.head == "builtin":
        _say("building the built-in synthetic head (procedural, about 5 s)...")
    t = time.perf_counter()
    head = load_head(args.head, args.assets, albedo=args.albedo)
    faces = args.face or list(BUILTIN_SHOWCASE if head.synthetic else FLAME_SHOWCASE)
    buffers = [b.strip() for b in args.buffers.split(",") if b.strip()]
    camera = [float(c) for c in args.camera.split(",")]
    if len(camera) != 3:
        raise EmorigError(f"--camera '{args.camera}': give three numbers s,tx,ty")
    result = render_showcase(
        head, faces, args.out, size=args.size, buffers=buffers, camera=camera, device=args.device
    )
    print(
        f"rendered {len(faces)} faces of {head.flame.name} x {len(buffers)} buffers "
        f"at {args.size}px in {time.perf_counter() - t:.1f} s"
    )
    print(f"contact sheet: {result.sheet}")
    print(f"{len(result.files)} PNGs and the parameters ({result.parameters.name}) in {args.out}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:

    from emorig.faces.pipeline import (
        DONE,
        SEVERAL,
        FaceAligner,
        align_files,
        image_files,
        summarise,
    )

    src, out = Path(args.input), Path(args.output)
    if src.is_file() and out.suffix:
        raise EmorigError(f"{out}: OUT is a folder (aligned images are written inside it)")
    from emorig.faces.backends import load_backend

    options = {} if args.min_score is None else {"min_score": args.min_score}
    aligner = FaceAligner(
        backend=load_backend(args.backend, **options),
        size=args.size,
        mode=args.mode,
        all_faces=args.all_faces,
        dense=args.dense,
        device=args.device,
    )
    files = image_files(src, exclude=out)
    if not files:
        raise EmorigError(f"{src}: no files to align")

    results = align_files(
        files, src, out, aligner, preview=args.preview, progress=_progress("aligning")
    )
    for r in results:
        if r.status not in (DONE,):
            level = "note" if r.status == SEVERAL else r.status
            print(f"{level}: {r.path}: {r.reason}", file=sys.stderr)
    print(summarise(results) + f" -> {out}")
    failed = [r for r in results if r.status not in (DONE, SEVERAL)]
    return 1 if failed else 0


def cmd_reconstruct(args: argparse.Namespace) -> int:

    from emorig.faces.pipeline import image_files
    from emorig.flame.heads import load_head
    from emorig.reconstruct.pipeline import Reconstructor, load_model, reconstruct_files

    model, trained_for = load_model(args.model, args.weights, args.assets)
    head_name = prepare_cli.resolve_head(args.head, trained_for)
    if head_name == "builtin":
        _say("building the built-in synthetic head (procedural, about 5 s)...")
    head = load_head(head_name, args.assets)
    rec = Reconstructor(
        args.model, head, model, photometric=not args.no_photometric, device=args.device
    )
    src, out = Path(args.images), Path(args.out)
    files = image_files(src, exclude=out)
    label = args.model if args.weights is None else f"{args.model} ({args.weights})"

    results = reconstruct_files(
        files, src, out, rec, label, args.all_faces, _progress("reconstructing")
    )
    counts: dict[str, int] = {}
    for path, status, reason in results:
        counts[status] = counts.get(status, 0) + 1
        if status != "done":
            print(f"{status}: {path}: {reason}", file=sys.stderr)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(results)} files ({summary}) with {label} on {head.flame.name} -> {out}")
    return 0 if counts.get("done", 0) == len(results) else 1


def _step_progress(total: int, desc: str):
    """A step progress bar on stderr and the ``progress(step, total, record)`` callback that
    moves it (showing the record's ``loss``)."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", desc=desc, disable=None, file=sys.stderr)

    def progress(step: int, _total: int, record: dict[str, float]) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        bar.refresh()

    return bar, progress


def cmd_train_reconstruct(args: argparse.Namespace) -> int:
    from emorig.train.recon import ReconTrainConfig, train_reconstruction

    overrides = {}
    for item in args.weight or []:
        name, _, value = item.partition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            raise EmorigError(f"--weight {item}: expected NAME=NUMBER") from None
    cfg = ReconTrainConfig(
        stage=args.stage,
        out=args.out,
        head=args.head,
        assets=args.assets,
        init=args.init,
        backbone=args.backbone,
        backbone_width=args.width,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        group_size=args.group_size,
        lr=args.lr,
        weights=args.loss_weights,
        weight_overrides=overrides,
        identity_net=args.identity_net,
        emotion_net=args.emotion_net,
        vgg19=args.vgg19,
        save_every=args.save_every,
        sample_every=args.sample_every,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        cpu=args.cpu,
    )
    bar, progress = _step_progress(cfg.steps, f"training {cfg.stage}")
    result = train_reconstruction(cfg, progress=progress)
    bar.close()
    last = result.losses.get("loss", float("nan"))
    print(
        f"{cfg.stage}: {result.step} steps, last loss {last:.4f} in {result.seconds:.0f} s; "
        f"checkpoints and losses.jsonl in {cfg.out}"
    )
    if result.model_folder is not None:
        print(f"model: {result.model_folder} (use with --weights)")
    return 0


def cmd_train_emotion(args: argparse.Namespace) -> int:
    from emorig.train.emotion import EmotionTrainConfig, train_emotion

    cfg = EmotionTrainConfig(
        out=args.out,
        data=None if args.data == "synthetic" else args.data,
        images_root=args.images_root,
        init=args.init,
        backbone=args.backbone,
        width=args.width,
        input_size=args.input_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        patience=args.patience,
        augment=not args.no_augment,
        synthetic_count=args.synthetic_count,
        save_every=args.save_every,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        cpu=args.cpu,
    )
    bar, progress = _step_progress(cfg.steps, "training emotion")
    result = train_emotion(cfg, progress=progress)
    bar.close()
    acc = result.best.get("e_acc", float("nan"))
    how = "stopped early" if result.stopped_early else "finished"
    print(
        f"emotion recogniser: {how} at step {result.step}; best validation at step "
        f"{result.best_step} (E-ACC {acc:.3f}) in {result.seconds:.0f} s; log in {cfg.out}"
    )
    if result.model_folder is not None:
        print(f"model: {result.model_folder} (use with --recognizer)")
    return 0


def cmd_emotion_predict(args: argparse.Namespace) -> int:
    from emorig.emotion.predict import (
        DONE,
        predict_files,
        summarise_predictions,
        write_predictions,
    )
    from emorig.emotion.recognizers import load_recognizer
    from emorig.faces.pipeline import FaceAligner, image_files

    src, out = Path(args.images), Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise EmorigError(f"--out {out}: name a .csv or .json file")
    out.parent.mkdir(parents=True, exist_ok=True)
    files = [f for f in image_files(src) if f.resolve() != out.resolve()]
    if not files:
        raise EmorigError(f"{src}: no files to predict")
    recognizer = load_recognizer(args.recognizer, device=args.device)
    aligner = FaceAligner(size=224, mode="deca", all_faces=args.all_faces, device=args.device)
    rows = predict_files(files, recognizer, aligner, _progress("predicting"))
    for r in rows:
        if r.status != DONE:
            print(f"{r.status}: {r.path}: {r.reason}", file=sys.stderr)
    write_predictions(rows, out)
    name = getattr(recognizer, "name", args.recognizer)
    print(f"{summarise_predictions(rows)} with {name} -> {out}")
    done = {r.path for r in rows if r.status == DONE}
    return 0 if len(done) == len(files) else 1


def cmd_emotion_evaluate(args: argparse.Namespace) -> int:
    import json
    import math

    from emorig.emotion.metrics import TABLE_COLUMNS, format_table
    from emorig.emotion.predict import evaluate_predictions, read_labels, read_predictions
    from emorig.io.atomic import atomic_write

    labels = read_labels(args.labels)
    stems = [Path(p).stem for p in args.predictions]
    results = {}
    for p, stem in zip(args.predictions, stems, strict=True):
        name = stem if stems.count(stem) == 1 else p
        ev = evaluate_predictions(read_predictions(p), labels)
        if not ev.metrics:
            raise EmorigError(
                f"{p}: no labelled image of {args.labels} has a prediction (paths are matched "
                "exactly or by their trailing folders and file name)"
            )
        results[name] = (p, ev)
    table = format_table({name: ev.metrics for name, (_, ev) in results.items()})
    print(table)
    missing = 0
    for name, (_, ev) in results.items():
        missing += len(ev.unmatched)
        print(
            f"{name}: {ev.n_labels} labels, {ev.n_expression} faces in E-ACC, "
            f"{ev.n_affect} in V/A, {len(ev.unmatched)} without a prediction"
        )
        for path in ev.unmatched[:10]:
            print(f"no prediction: {path}", file=sys.stderr)
        if len(ev.unmatched) > 10:
            print(f"... and {len(ev.unmatched) - 10} more", file=sys.stderr)
    if args.out:
        clean = lambda v: None if v is None or math.isnan(v) else v  # noqa: E731
        payload = {
            "labels": str(args.labels),
            "columns": [h for h, _ in TABLE_COLUMNS],
            "rows": {
                name: {
                    "predictions": str(p),
                    "metrics": {k: clean(v) for k, v in ev.metrics.items()},
                    "n_labels": ev.n_labels,
                    "n_expression": ev.n_expression,
                    "n_affect": ev.n_affect,
                    "unmatched": ev.unmatched,
                }
                for name, (p, ev) in results.items()
            },
            "table": table,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)
            f.write("\n")
        print(f"metrics -> {out}")
    return 1 if missing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emorig",
        description="Edit the expression, pose and lighting of portrait photos with "
        "DiffusionRig-EMO.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"emorig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_cli.add_parser(sub)

    assets = sub.add_parser("assets", help="find, check and convert licensed files")
    asub = assets.add_subparsers(dest="assets_command", metavar="ACTION")
    check = asub.add_parser(
        "check",
        help="list the official files emorig can use, which are present and valid, and where "
        "to obtain the missing ones",
    )
    check.add_argument("--assets", metavar="DIR", help="asset folder (default: $EMORIG_HOME)")
    check.set_defaults(func=cmd_assets_check)
    conv = asub.add_parser(
        "convert-flame",
        help="convert a FLAME .pkl (2020, 2023, 2023 Open; chumpy inside) to a clean .npz once",
    )
    conv.add_argument("input", metavar="IN", help="generic_model.pkl, flame2023*.pkl, ...")
    conv.add_argument("output", metavar="OUT", help="the .npz to write")
    conv.set_defaults(func=cmd_assets_convert_flame)

    align = sub.add_parser(
        "align",
        help="detect faces, find 68 landmarks and write FFHQ- or DECA-aligned crops",
        description="Align every face photo in IN (a file, or a folder searched recursively) "
        "into OUT: one PNG per face, a JSON beside it (landmarks in the aligned and the "
        "original image, the 3x3 transform back to the original, detector box and score) and, "
        "with --preview, the photo with landmarks and crop drawn. Faces are found offline with "
        "dlib (HOG detector, iBUG 68-point predictor from the face-recognition-models package).",
        epilog="Exit status: 0 when every file gave a face, 1 when some had no face or could "
        "not be read (each is listed with its reason), 2 on a usage error.",
    )
    align.add_argument("input", metavar="IN", help="a photo or a folder of photos")
    align.add_argument("output", metavar="OUT", help="output folder (mirrors IN's sub-folders)")
    align.add_argument("--size", type=int, default=256, help="aligned image size (256)")
    align.add_argument(
        "--mode",
        default="ffhq",
        choices=("ffhq", "deca"),
        help="ffhq: DiffusionRig's oriented crop (default); deca: DECA's landmark-box crop",
    )
    align.add_argument(
        "--all-faces", action="store_true", help="keep every face (default: the largest)"
    )
    align.add_argument("--preview", action="store_true", help="also write NAME.preview.png")
    align.add_argument("--backend", default="dlib", help="face backend (dlib)")
    align.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="dlib detector score a face needs (default 0.3; portraits score 0.5 to 2, "
        "clutter below 0.2)",
    )
    align.add_argument(
        "--dense",
        default=None,
        choices=("mediapipe",),
        help="also store MediaPipe's 478 dense landmarks (pip install 'emorig[mediapipe]')",
    )
    align.add_argument("--device", default="cpu", help="torch device for warping")
    align.set_defaults(func=cmd_align)

    recon = sub.add_parser(
        "reconstruct",
        help="photos -> FLAME codes, meshes, buffers and overlays (DECA, EMOCA or fitting)",
        description="Detect and crop each face as DECA does, then reconstruct it: 'deca' and "
        "'emoca' run those networks (official weights from --assets, or --weights), 'fit' "
        "needs no weights and fits the head to the 68 landmarks, then albedo and light to the "
        "pixels. Writes NAME.npz/.json (codes and crop), NAME_coarse.obj (with UVs), "
        "NAME_detail.obj (networks with a detail model), buffer PNGs of the crop and "
        "NAME_landmarks.png / NAME_shape_overlay.png on the photo.",
    )
    recon.add_argument("images", metavar="IMAGES", help="a photo or a folder of photos")
    recon.add_argument("--model", required=True, choices=("deca", "emoca", "fit"))
    recon.add_argument("--out", required=True, help="output folder")
    recon.add_argument("--weights", help="model folder/file instead of the official asset")
    recon.add_argument(
        "--head",
        choices=("builtin", "flame2020", "flame2023", "flame2023_open"),
        help="head of the codes (default: the weights' head, else builtin)",
    )
    recon.add_argument("--assets", metavar="DIR", help="asset folder (default: $EMORIG_HOME)")
    recon.add_argument("--all-faces", action="store_true", help="every face, not the largest")
    recon.add_argument(
        "--no-photometric", action="store_true", help="fit: landmarks only (no albedo/light fit)"
    )
    recon.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    recon.set_defaults(func=cmd_reconstruct)

    train = sub.add_parser(
        "train", help="train models (reconstruction encoders, emotion recogniser, diffusion)"
    )
    tsub = train.add_subparsers(dest="train_command", metavar="WHAT")
    tr = tsub.add_parser(
        "reconstruct",
        help="train DECA/EMOCA encoders: synthetic, pretrain, coarse, detail or emoca stage",
        description="One loop for every stage (run it under 'accelerate launch -m emorig' for "
        "several GPUs or nodes). Resumes from the newest checkpoint in --out; every "
        "checkpoint carries its config. Without --data the head's synthetic faces are used.",
    )
    tr.add_argument(
        "--stage", required=True, choices=("synthetic", "pretrain", "coarse", "detail", "emoca")
    )
    tr.add_argument("--out", required=True, help="run folder")
    tr.add_argument(
        "--head", default="builtin", choices=("builtin", "flame2020", "flame2023", "flame2023_open")
    )
    tr.add_argument("--assets", metavar="DIR")
    tr.add_argument(
        "--init",
        help="start from an emorig model folder, deca_model.tar or EMOCA "
        "folder (required for detail and emoca)",
    )
    tr.add_argument(
        "--data",
        help="folder of 'emorig align --mode deca --size 224' crops, one "
        "sub-folder per identity (default: synthetic faces)",
    )
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch-size", type=int, default=8, help="identities per batch")
    tr.add_argument("--group-size", type=int, default=1, help="images per identity (K)")
    tr.add_argument("--lr", type=float, default=1e-4)
    tr.add_argument("--backbone", default="resnet50", choices=("resnet50", "resnet18"))
    tr.add_argument("--width", type=int, default=64, help="backbone stem width (64 = standard)")
    tr.add_argument("--loss-weights", default="deca", choices=("deca", "emoca"))
    tr.add_argument(
        "--weight",
        action="append",
        metavar="NAME=VALUE",
        help="override one loss weight, e.g. identity=0.5 (repeatable)",
    )
    tr.add_argument("--identity-net", help="face-recognition network (.pt2 export / TorchScript)")
    tr.add_argument("--emotion-net", help="emotion feature network (.pt2 / TorchScript)")
    tr.add_argument("--vgg19", help="torchvision vgg19 state dict for ID-MRF (detail stage)")
    tr.add_argument("--save-every", type=int, default=500)
    tr.add_argument("--sample-every", type=int, default=500)
    tr.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    tr.set_defaults(func=cmd_train_reconstruct)
    te = tsub.add_parser(
        "emotion",
        help="train an emotion recogniser (8 classes + valence/arousal)",
        description="Class-balanced sampling, EMOCA's augmentation and loss mix, validation "
        "with EMOCA's metrics and early stopping; resumes from the newest checkpoint in --out "
        "(run under 'accelerate launch -m emorig' for several GPUs). The best model is saved "
        "to OUT/model for 'emorig emotion predict --recognizer OUT/model'.",
    )
    te.add_argument(
        "--data",
        required=True,
        help="AffectNet-style CSV (path, expression, valence, arousal), a folder of class "
        "sub-folders (happy/, sad/, ...), or 'synthetic' (labelled renders of the built-in "
        "head; synthetic faces, not a model of real emotions)",
    )
    te.add_argument("--out", required=True, help="run folder")
    te.add_argument("--images-root", help="folder the CSV's paths are relative to")
    te.add_argument("--init", help="recogniser to fine-tune (emoca:DIR or an emorig folder)")
    te.add_argument("--backbone", default="resnet50", choices=("resnet50", "resnet18"))
    te.add_argument("--width", type=int, default=64, help="backbone stem width (64 = standard)")
    te.add_argument("--input-size", type=int, default=224)
    te.add_argument("--steps", type=int, default=20000)
    te.add_argument("--batch-size", type=int, default=32)
    te.add_argument("--lr", type=float, default=1e-4)
    te.add_argument("--val-fraction", type=float, default=0.1)
    te.add_argument("--val-every", type=int, default=500)
    te.add_argument(
        "--patience", type=int, default=10, help="validations without improvement (0: off)"
    )
    te.add_argument("--no-augment", action="store_true")
    te.add_argument("--synthetic-count", type=int, default=2048, help="synthetic pool size")
    te.add_argument("--save-every", type=int, default=500)
    te.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    te.set_defaults(func=cmd_train_emotion)
    diffusion_cli.add_train_parser(tsub)
    prepare_cli.add_parser(sub)
    synth_cli.add_parser(sub)
    diffusion_cli.add_edit_parser(sub)
    evaluate_cli.add_parser(sub)
    demo_cli.add_ablation_parser(sub)

    emotion = sub.add_parser(
        "emotion", help="predict emotions of face photos and evaluate them (EMOCA's metrics)"
    )
    emotion.set_defaults(func=lambda _args: emotion.print_help() or 2)
    esub = emotion.add_subparsers(dest="emotion_command", metavar="ACTION")
    epred = esub.add_parser(
        "predict",
        help="8 expression probabilities, valence and arousal for every face",
        description="Detect each face, crop it as DECA does (224 px) and run an emotion "
        "recogniser. Writes one row per face (path, face, the 8 AffectNet class probabilities, "
        "the top class, valence, arousal) and one per file without a face, with the reason.",
        epilog="Exit status: 0 when every file gave a prediction, 1 when some did not (each is "
        "listed with its reason), 2 on a usage error.",
    )
    epred.add_argument("images", metavar="IMAGES", help="a photo or a folder of photos")
    epred.add_argument(
        "--recognizer",
        required=True,
        metavar="SPEC",
        help="fer, emoca:DIR (an EMOCA emotion recogniser folder) or an emorig model folder",
    )
    epred.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.json")
    epred.add_argument("--all-faces", action="store_true", help="every face, not the largest")
    epred.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    epred.set_defaults(func=cmd_emotion_predict)
    eeval = esub.add_parser(
        "evaluate",
        help="EMOCA's table (V/A PCC, CCC, RMSE, SAGR; E-ACC) of predictions against labels",
        description="Join predictions to AffectNet-style labels (CSV columns path, expression "
        "as 0-7 or a class name, valence, arousal) on the path and print EMOCA's metrics over "
        "the whole set. Paths match exactly or by their trailing folders and file name; for "
        "photos with several faces the largest is used.",
        epilog="Exit status: 0 when every labelled image had a prediction, 1 when some did "
        "not, 2 on a usage error.",
    )
    eeval.add_argument(
        "--predictions",
        required=True,
        action="append",
        metavar="FILE",
        help="a file from 'emorig emotion predict' (repeat for one table row each)",
    )
    eeval.add_argument("--labels", required=True, metavar="FILE", help="label CSV")
    eeval.add_argument("--out", metavar="FILE.json", help="also write the metrics as JSON")
    eeval.set_defaults(func=cmd_emotion_evaluate)

    render = sub.add_parser(
        "render",
        help="render a head in several expressions and poses to PNG buffers and a contact sheet",
        description="Render DiffusionRig's condition buffers (Lambertian render, normals, "
        "albedo), DECA's grey shape image and the 68 landmarks for a set of faces.",
        epilog="Face specs join terms with '+': an expression component by name (built-in head: "
        "smile, frown, brow_raise, blink, lip_pucker, mouth_stretch, sad, nose_wrinkle, "
        "lip_press, eye_widen, cheek_puff, smirk_left, smirk_right, blink_left, blink_right, "
        "lower_lip_down, upper_lip_raise, mouth_shift, inner_brow_raise) or expN, shapeN, "
        "albedoN with an optional =VALUE, and jaw/yaw/pitch/roll/eyes=DEGREES. "
        "Example: --face smile=0.8+jaw=10 --face 'sad+yaw=-20'",
    )
    render.add_argument(
        "--head",
        default="builtin",
        choices=("builtin", "flame2020", "flame2023", "flame2023_open"),
        help="the built-in synthetic head (default) or a FLAME release from --assets",
    )
    render.add_argument("--assets", metavar="DIR", help="asset folder (default: $EMORIG_HOME)")
    render.add_argument(
        "--albedo",
        default="auto",
        choices=("auto", "flame", "bfm", "none"),
        help="albedo space for FLAME heads (auto: FLAME_texture.npz, else the BFM one, else "
        "constant grey)",
    )
    render.add_argument(
        "--face",
        action="append",
        metavar="SPEC",
        help="a face to render (repeatable); default: a showcase of expressions and poses",
    )
    render.add_argument("--size", type=int, default=256, help="image size in pixels (256)")
    render.add_argument(
        "--buffers",
        default="rendered,normal,albedo,shape,landmarks",
        help="comma list from rendered, normal, albedo, shape, landmarks, mask, depth, uv",
    )
    render.add_argument(
        "--camera",
        default="7,0,0.005",
        help="DECA orthographic camera s,tx,ty (default 7,0,0.005 frames the whole head)",
    )
    render.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    render.add_argument("--out", default="emorig-out/render", help="output folder")
    render.set_defaults(func=cmd_render)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        target = {"assets": "assets", "train": "train"}.get(args.command or "")
        parser.parse_args([target, "--help"] if target else ["--help"])
        return 2
    try:
        return int(func(args) or 0)
    except EmorigError as err:
        print(f"emorig: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emorig: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``emorig evaluate``: flags -> :func:`emorig.evaluate.protocol.evaluate_model` and
:func:`emorig.evaluate.report.write_report`; ``emorig evaluate now``: NoW-style scan-to-mesh
error of one reconstruction."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import say, stage_progress
from emorig.cli.shared import load_head, resolve_head
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "evaluate"
HELP = (
    "evaluate edits (code errors, identity, emotion, multi-view, FID) into a report; "
    "'evaluate now': NoW-style scan-to-mesh error"
)


DESCRIPTION = """\
Evaluate a DiffusionRig(-EMO) model's edits, ControlFace-style: for --pairs (source, target)
pairs of a prepared folder (seeded, source != target) each mode (exp, pose, light) edits the
source; the edited image is reconstructed again with a DECA-format encoder
(--reconstructor-weights, on the DECA face crops) and compared with the requested code: the
source's code with the target's expression + jaw, head rotation or SH light. Reference rows
show the floor: the unedited sample and the data image itself. Identity: shape codes (shape,
synthetic data) or dlib descriptors (dlib, photos). Optional: emotion accuracy of emotion
edits (--emotions), multi-view consistency (--multiview, a prepared multiview folder from
'emorig synth --mode multiview --prepared') and FID (--fid-network).

Writes OUT/report.html (self-contained: images embedded, opens offline) and OUT/report.json.

'emorig evaluate now --scan S.obj --scan-landmarks S.txt --mesh M.obj --mesh-landmarks M.txt'
prints the NoW-style scan-to-mesh error (7-landmark similarity alignment, exact
point-to-surface distances) instead."""

NOW_DESCRIPTION = """\
NoW-style reconstruction error of one scan: the predicted mesh is aligned to the scan by the
similarity transform mapping its 7 landmarks (four eye corners, nose tip, two mouth corners;
one 'x y z' line each) onto the scan's, optionally refined with --icp rounds, then every scan
point's distance to the mesh surface is measured. Prints mean, median and std in the scan's
units (NoW: millimetres)."""


def parse_emotions(text: str | None) -> list[str] | None:
    """``"all"`` -> every class; ``"happy,sad"`` -> those (checked); None -> None."""
    from emorig.types import EMOTION_CLASSES

    if text is None:
        return None
    if text.strip() == "all":
        return list(EMOTION_CLASSES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in EMOTION_CLASSES]
    if bad or not names:
        raise EmorigError(
            f"--emotions {text!r}: 'all' or a comma list of {', '.join(EMOTION_CLASSES)}"
        )
    return names


def load_reconstructor(weights: str | None, head: str, assets: str | None, device):
    """The re-reconstruction callable for ``head``'s codes from an encoder (emorig folder,
    DECA's ``deca_model.tar`` or an EMOCA folder)."""
    from emorig.evaluate.protocol import encoder_reconstructor
    from emorig.reconstruct.pipeline import load_model

    if weights is not None and not Path(weights).exists():
        raise EmorigError(f"--reconstructor-weights {weights}: not found")
    # on the built-in head, by default the encoder shipped for it (64 px synthetic faces)
    method = "builtin" if weights is None and head == "builtin" else "deca"
    model, trained_for = load_model(method, weights, assets)
    resolve_head(head, trained_for)  # refuses weights trained for another head
    return encoder_reconstructor(model.to(device))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emorig.data.dataset import BufferDataset
    from emorig.evaluate.protocol import evaluate_model
    from emorig.evaluate.report import write_report

    missing = [f for f in ("model", "data", "out") if getattr(args, f) is None]
    if missing:
        flags = ", ".join(f"--{m}" for m in missing)
        raise EmorigError(f"emorig evaluate needs {flags} (or use 'emorig evaluate now')")
    started = time.perf_counter()
    emotions = parse_emotions(args.emotions)
    data = BufferDataset(args.data)
    head = data.manifest.settings.head
    multiview = None if args.multiview is None else BufferDataset(args.multiview)
    if multiview is not None and multiview.manifest.settings.head != head:
        raise EmorigError(
            f"--multiview codes belong to the {multiview.manifest.settings.head} head, --data's "
            f"to {head}"
        )
    reconstruct = load_reconstructor(args.reconstructor_weights, head, args.assets, args.device)
    identity = args.identity
    if identity == "auto":
        identity = "shape" if data.manifest.settings.synthetic_head else "dlib"
    model, renderer, expression_input = _load_model(args, data)
    predictor = None
    if emotions:
        from emorig.edit.emotion import emotion_predictor

        predictor = emotion_predictor(
            args.emotion_predictor, renderer, head, args.recognizer, args.device, say
        )
    evaluation = evaluate_model(
        model,
        data,
        renderer=renderer,
        reconstruct=reconstruct,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        emotions=emotions,
        multiview=multiview,
        pairs=args.pairs,
        seed=args.seed,
        steps=args.steps,
        invert=args.invert,
        identity=identity,
        predictor=predictor,
        fid_network=args.fid_network,
        fid_size=args.fid_size,
        progress=stage_progress(),
        expression_input=expression_input,
        batch_size=args.batch_size,
        multiview_groups=args.multiview_groups,
        metadata={
            "model": str(args.model),
            "reconstructor_weights": args.reconstructor_weights,
        },
        methods=_method_editors(args, model, renderer, data, expression_input),
    )
    title = args.title or f"emorig evaluation: {Path(args.model).name}"
    path = write_report(
        evaluation, args.out, title=title, subtitle=f"model {args.model}, data {args.data}"
    )
    _print_summary(evaluation)
    synthetic = " (SYNTHETIC data)" if evaluation.synthetic else ""
    print(f"report{synthetic} -> {path} in {time.perf_counter() - started:.1f} s")
    return 0


def _load_model(args: argparse.Namespace, data):
    """The diffusion model (checked to work at ``data``'s size), the renderer of ``data``'s head
    and the model's expression input (None unless it is a DiffusionRig-EMO model)."""
    from emorig.diffusion.loading import load_rig
    from emorig.render.face import FaceRenderer

    model = load_rig(args.model, device=args.device)
    if model.config.image_size != data.size:
        raise EmorigError(
            f"the model works at {model.config.image_size} px; --data is {data.size} px "
            f"(prepare it with --size {model.config.image_size})"
        )
    head = load_head(data.manifest.settings.head, args.assets)
    renderer = FaceRenderer(head).to(args.device)
    expression_input = None
    if model.config.expression_dim:
        from emorig.edit.emotion import expression_input_for

        expression_input = expression_input_for(model, args.recognizer, args.device)
    return model, renderer, expression_input


def _method_editors(args, model, renderer, data, expression_input) -> dict:
    """The editors of --methods other than diffusion (the main one), by name."""
    from emorig.edit.methods import METHODS, WarpEditor
    from emorig.evaluate.protocol import _default_editor

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or "diffusion" not in names:
        raise EmorigError(
            f"--methods {args.methods}: choose from {', '.join(METHODS)}, diffusion included "
            "(the model's own edits are the reference rows)"
        )
    editors = {}
    for name in names:
        if name == "warp":
            editors[name] = WarpEditor(renderer)
        elif name == "warp+diffusion":
            refiner = _default_editor(
                model, renderer, data, args.steps, args.seed, False, expression_input
            )
            editors[name] = WarpEditor(
                renderer, refiner=refiner, strength=args.strength, invert=args.invert
            )
    return editors


def _print_summary(evaluation) -> None:
    """One line per headline number of ``evaluation``."""
    for row in evaluation.errors:
        if row.primary is not None:
            print(f"{row.name:>6}: {row.primary} {row.primary_value:.4g}")
    if evaluation.emotion is not None:
        e = evaluation.emotion
        print(f"emotion accuracy {e.accuracy:.3f} (requested codes {e.requested_accuracy:.3f})")
    if evaluation.multiview is not None:
        m = evaluation.multiview
        print(
            f"multi-view spread {m.row('edited').mean:.4g} (unedited {m.row('unedited').mean:.4g})"
        )
    if evaluation.fid is not None:
        print(f"FID {evaluation.fid:.4g}")


def _landmarks(path: str, flag: str):
    import numpy as np

    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except OSError:
        raise EmorigError(f"{flag} {path}: not found or unreadable") from None
    except ValueError as err:
        raise EmorigError(f"{flag} {path}: not a table of numbers ({err})") from None
    if values.shape != (7, 3):
        raise EmorigError(f"{flag} {path}: expected 7 lines of 'x y z', got {values.shape}")
    return values


def cmd_now(args: argparse.Namespace) -> int:
    import torch

    from emorig.evaluate.metrics import now_scan_to_mesh_error
    from emorig.io.obj import read_obj

    scan_points, _, _ = read_obj(args.scan)
    vertices, faces, _ = read_obj(args.mesh)
    if len(faces) == 0:
        raise EmorigError(f"--mesh {args.mesh}: the mesh has no faces")
    result = now_scan_to_mesh_error(
        torch.as_tensor(scan_points, dtype=torch.float64),
        torch.as_tensor(_landmarks(args.scan_landmarks, "--scan-landmarks")),
        torch.as_tensor(vertices, dtype=torch.float64),
        torch.as_tensor(faces),
        torch.as_tensor(_landmarks(args.mesh_landmarks, "--mesh-landmarks")),
        icp_iterations=args.icp,
    )
    print(f"mean {result.mean:.6g}")
    print(f"median {result.median:.6g}")
    print(f"std {result.std:.6g}")
    if args.json:
        from emorig.io.atomic import atomic_write

        record = {
            "scan": str(args.scan),
            "mesh": str(args.mesh),
            "mean": result.mean,
            "median": result.median,
            "std": result.std,
            "points": int(result.distances.numel()),
            "icp_iterations": args.icp,
            "scale": result.alignment.scale,
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` (and ``evaluate now``) to an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        NAME,
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="an emorig model folder or DiffusionRig's model*.pt")
    p.add_argument("--data", help="prepared folder the (source, target) pairs come from")
    p.add_argument(
        "--out",
        metavar="DIR",
        type=options.out_dir,
        help="report folder (report.html, report.json)",
    )
    p.add_argument("--multiview", metavar="DATA", help="prepared multi-view folder (consistency)")
    p.add_argument(
        "--multiview-groups",
        type=options.positive_int,
        metavar="G",
        help="only the first G groups (all)",
    )
    p.add_argument(
        "--pairs", type=options.positive_int, default=16, help="(source, target) pairs (16)"
    )
    p.add_argument("--modes", default="exp,pose,light", help="comma list (exp,pose,light)")
    p.add_argument(
        "--methods",
        default="diffusion",
        help="comma list of edit methods compared side by side on the same pairs: diffusion "
        "(the model; always), warp (the image's own pixels moved by the 3D face), "
        "warp+diffusion (warped, then re-noised to --strength and denoised) (diffusion)",
    )
    p.add_argument(
        "--strength",
        type=options.float_in(0, 1),
        default=0.5,
        help="warp+diffusion: share of the DDIM steps re-run (0.5)",
    )
    p.add_argument(
        "--emotions",
        metavar="all|happy,sad,...",
        help="emotion accuracy for these requested emotions (intensity 1); default: skipped",
    )
    options.add_emotion_predictor(
        p,
        "finds and classifies expressions: codes (an EmoDECA MLP trained on built-in "
        "head codes, seconds), rendered (--recognizer on renders); auto: codes on the "
        "built-in head",
    )
    p.add_argument(
        "--reconstructor-weights",
        metavar="FOLDER",
        help="encoder that re-reconstructs the edits on their DECA face crops: an emorig "
        "DECA-format encoder folder, DECA's deca_model.tar or an EMOCA folder (default: on the "
        "built-in head the 64 px encoder shipped with emorig, on FLAME heads deca_model.tar "
        "from the assets)",
    )
    p.add_argument(
        "--identity",
        default="auto",
        choices=("auto", "shape", "dlib"),
        help="identity preservation by shape codes (synthetic data) or dlib face descriptors "
        "(photos); auto: shape on synthetic data, else dlib",
    )
    p.add_argument("--fid-network", metavar="FILE", help="feature network (.pt2 / TorchScript)")
    p.add_argument(
        "--fid-size", type=options.image_size, help="resize to this side for the FID network"
    )
    options.add_ddim_steps(p)
    p.add_argument("--invert", action="store_true", help="start from the sources' inversions")
    options.add_seed(p, "seed of pairs and noise")
    p.add_argument(
        "--batch-size", type=options.positive_int, default=8, help="faces edited at once (8)"
    )
    p.add_argument(
        "--recognizer", help="emotion recogniser (EMO models reading features; --emotion-"
        "predictor rendered)"
    )  # fmt: skip
    p.add_argument("--title", help="report title")
    options.add_assets(p)
    options.add_device(p)
    p.set_defaults(func=cmd_evaluate)

    add_now_parser(p.add_subparsers(dest="evaluate_command", metavar="{now}"))
    return p


def add_now_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``now`` to ``emorig evaluate``'s sub-commands; returns its parser."""
    now = subparsers.add_parser(
        "now",
        help="NoW-style scan-to-mesh error of one reconstruction",
        description=NOW_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    now.add_argument("--scan", required=True, help="the scan (.obj, points or mesh)")
    now.add_argument("--scan-landmarks", required=True, help="7 lines 'x y z' on the scan")
    now.add_argument("--mesh", required=True, help="the predicted mesh (.obj)")
    now.add_argument("--mesh-landmarks", required=True, help="7 lines 'x y z' on the mesh")
    now.add_argument(
        "--icp",
        type=options.int_in(0, 1000, "a number of rounds"),
        default=0,
        help="rounds of ICP refinement (0)",
    )
    now.add_argument(
        "--json", metavar="FILE", type=options.out_file, help="also write the numbers here"
    )
    now.set_defaults(func=cmd_now)
    return now


__all__ = [
    "add_now_parser",
    "add_parser",
    "cmd_evaluate",
    "cmd_now",
    "load_reconstructor",
    "parse_emotions",
]

"""``emorig emotion predict`` and ``emorig emotion evaluate``: emotions of face photos and
EMOCA's metrics against labels. Thin: flags -> :mod:`emorig.emotion.predict`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import progress
from emorig.cli.shared import input_files
from emorig.errors import EmorigError

#: The command's name and its line in ``emorig --help``.
NAME = "emotion"
HELP = "predict emotions of face photos and evaluate them (EMOCA's metrics)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``emotion`` (``predict``, ``evaluate``) to ``emorig``'s sub-commands."""
    emotion = subparsers.add_parser(NAME, help=HELP)
    emotion.set_defaults(func=lambda _args: emotion.print_help() or 2)
    sub = emotion.add_subparsers(dest="emotion_command", metavar="ACTION")
    add_predict_parser(sub)
    add_evaluate_parser(sub)
    return emotion


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    from emorig.types import EMOTION_CLASSES

    p = subparsers.add_parser(
        "predict",
        help=f"{len(EMOTION_CLASSES)} expression probabilities, valence and arousal for every face",
        description="Detect each face, crop it as DECA does (224 px) and run an emotion "
        f"recogniser. Writes one row per face (path, face, the {len(EMOTION_CLASSES)} AffectNet "
        "class probabilities, the top class, valence, arousal) and one per file without a "
        "face, with the reason.",
        epilog="Exit status: 0 when every file gave a prediction, 1 when some did not (each is "
        "listed with its reason), 2 on a usage error.",
    )
    p.add_argument("images", metavar="IMAGES", help="a photo or a folder of photos")
    p.add_argument(
        "--recognizer",
        required=True,
        metavar="SPEC",
        help="fer, emoca:DIR (an EMOCA emotion recogniser folder) or an emorig model folder",
    )
    p.add_argument(
        "--out", required=True, metavar="FILE", type=options.out_file, help="FILE.csv or FILE.json"
    )
    options.add_all_faces(p)
    options.add_device(p)
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    from emorig.emotion.predict import DONE, predict_files, summarise_predictions, write_predictions
    from emorig.emotion.recognizers import load_recognizer
    from emorig.faces.pipeline import FaceAligner

    src, out = Path(args.images), Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise EmorigError(f"--out {out}: name a .csv or .json file")
    files, skipped = input_files(src, out, "predict")
    out.parent.mkdir(parents=True, exist_ok=True)
    recognizer = load_recognizer(args.recognizer, device=args.device)
    aligner = FaceAligner(size=224, mode="deca", all_faces=args.all_faces, device=args.device)
    rows = predict_files(files, recognizer, aligner, progress("predicting"))
    for r in rows:
        if r.status != DONE:
            print(f"{r.status}: {r.path}: {r.reason}", file=sys.stderr)
    write_predictions(rows, out)
    name = getattr(recognizer, "name", args.recognizer)
    print(f"{summarise_predictions(rows)} with {name} -> {out}")
    done = {r.path for r in rows if r.status == DONE}
    return 0 if len(done) == len(files) and not skipped else 1


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="EMOCA's table (V/A PCC, CCC, RMSE, SAGR; E-ACC) of predictions against labels",
        description="Join predictions to AffectNet-style labels (CSV columns path, expression "
        "as 0-7 or a class name, valence, arousal) on the path and print EMOCA's metrics over "
        "the whole set. Paths match exactly or by their trailing folders and file name; for "
        "photos with several faces the largest is used.",
        epilog="Exit status: 0 when every labelled image had a prediction, 1 when some did "
        "not, 2 on a usage error.",
    )
    p.add_argument(
        "--predictions",
        required=True,
        action="append",
        metavar="FILE",
        help="a file from 'emorig emotion predict' (repeat for one table row each)",
    )
    p.add_argument("--labels", required=True, metavar="FILE", help="label CSV")
    p.add_argument(
        "--out", metavar="FILE.json", type=options.out_file, help="also write the metrics as JSON"
    )
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emorig.emotion.metrics import format_table
    from emorig.emotion.predict import evaluate_predictions, read_labels, read_predictions

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
        out = Path(args.out)
        _write_metrics(out, args.labels, results, table)
        print(f"metrics -> {out}")
    return 1 if missing else 0


def _write_metrics(out: Path, labels, results: dict, table: str) -> None:
    """The table as JSON: one row per predictions file (NaN written as null)."""
    import json
    import math

    from emorig.emotion.metrics import TABLE_COLUMNS
    from emorig.io.atomic import atomic_write

    def clean(v):
        return None if v is None or math.isnan(v) else v

    payload = {
        "labels": str(labels),
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
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as f:
        json.dump(payload, f, indent=1, allow_nan=False)
        f.write("\n")


__all__ = ["add_evaluate_parser", "add_parser", "add_predict_parser", "cmd_evaluate", "cmd_predict"]

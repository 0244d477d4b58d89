"""What both paths of ``emorig edit`` (prepared items: :mod:`emorig.cli.edit`; photos at their
own resolution: :mod:`emorig.cli.edit_photos`) share: named changes, emotion sweeps, the
emotion record and checks, and the guard for models trained on synthetic faces."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from emorig.cli.output import say

__all__ = [
    "base_record",
    "emotion_levels",
    "emotion_record",
    "explicit_code",
    "explicit_label",
    "finish_emotion_checks",
    "recognizer_of",
    "warn_synthetic_model",
]


def explicit_code(explicit, code):
    """``code`` with the --face / --light change applied."""
    from emorig.edit.explicit import apply_face_spec, apply_light_spec

    face, light = explicit
    if face is not None:
        code = apply_face_spec(code, face)
    if light is not None:
        code = apply_light_spec(code, light)
    return code


def explicit_label(args: argparse.Namespace) -> str:
    """The file-name tag of a --face / --light edit."""
    import re

    text = "+".join(t for t in (args.face, args.light and f"light-{args.light}") if t)
    return re.sub(r"[^A-Za-z0-9=.+-]+", "_", text)[:60] or "face"


def warn_synthetic_model(model: str, data: str | None) -> None:
    """One warning line when a model trained on synthetic renders meets other faces."""
    from emorig.diffusion.loading import training_data

    trained = training_data(model)
    if trained and trained.get("reconstructor") == "synthetic" and data != "synthetic":
        say(
            f"emorig: warning: {Path(model).name} was trained on synthetic renders of the "
            f"{trained.get('head', 'built-in')} head (emorig synth), not on photos: on a real "
            "face it draws a synthetic-looking head, not this person. --method warp edits the "
            "photo itself."
        )


def finish_emotion_checks(checks: dict[str, dict]) -> int:
    """0 when every emotion edit moved (or had nothing to do); else one line per face that
    did not, and status 1."""
    failed = {name: c for name, c in checks.items() if c["problems"]}
    for name, c in checks.items():
        if c["source_already_shows_it"]:
            say(f"note: {name} already shows the requested emotion; the edit strengthens it")
    if not failed:
        return 0
    for name, c in failed.items():
        say(f"emorig: {name}: the emotion edit did not move: {'; '.join(c['problems'])}")
    return 1


def emotion_record(emotion, predictor, args) -> dict:
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


def emotion_levels(emotion, sweep: int | None) -> list:
    """The requested emotion, or a sweep of intensities 0..intensity ending with it."""
    import dataclasses

    if not sweep or sweep < 2:
        return [emotion]
    return [
        dataclasses.replace(emotion, intensity=emotion.intensity * k / (sweep - 1))
        for k in range(sweep)
    ]


@functools.lru_cache(maxsize=2)
def recognizer_of(spec: str, device: str | None):
    """The recogniser that checks emotion edits (``--recognizer``), loaded once per run."""
    from emorig.emotion.recognizers import load_recognizer

    return load_recognizer(spec, device=device)


def base_record(args: argparse.Namespace, method: str, emotion, predictor, checks) -> dict:
    """What every ``edits.json`` starts with: the method, model, inputs, the request and, for
    emotion edits, the request as run and each face's pixel check."""
    return {
        "method": method,
        "model": None if args.model is None else str(args.model),
        "source": str(args.source),
        "target": None if args.target is None else str(args.target),
        "emotion": None if emotion is None else emotion.describe(),
        "emotion_edit": None if emotion is None else emotion_record(emotion, predictor, args),
        "emotion_checks": checks or None,
        "face": args.face,
        "light": args.light,
        "strength": args.strength if method == "warp+diffusion" else None,
    }

"""``emorig edit`` on photos with ``--method warp`` or ``warp+diffusion``: each photo is
fitted here and edited at its own resolution (:mod:`emorig.edit.photo`). Part of the ``edit``
command (:mod:`emorig.cli.edit`), not a command of its own."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from emorig.cli.output import progress_bar, say
from emorig.cli.shared import input_files, load_head, resolve_head
from emorig.errors import EmorigError

__all__ = ["edit_photos"]


def _reconstructor(args, method: str, weights):
    """The reconstructor of the photos and the name of the head its codes belong to."""
    from emorig.reconstruct.pipeline import Reconstructor, load_model

    model, trained_for = load_model(method, weights, args.assets)
    head_name = resolve_head(args.head, trained_for)
    head = load_head(head_name, args.assets)
    return Reconstructor(method, head, model, device=args.device or "cpu"), head_name


def _say_quality(faces) -> None:
    """One warning line per doubtful fit (the edit follows the fit)."""
    for f in faces:
        q = f.quality or {}
        if q.get("quality") == "doubtful":
            why = "; ".join(q.get("reasons", [])) or "see its quality record"
            say(f"emorig: warning: {f.path}: the 3D fit is doubtful ({why}); the edit may be off")


def edit_photos(args: argparse.Namespace, method: str, emotion, explicit, out: Path, started):
    """Fit, change, warp (and refine), write; returns the exit status."""
    from emorig.cli.edit_requests import finish_emotion_checks, warn_synthetic_model
    from emorig.edit.modes import parse_modes

    modes = parse_modes(args.modes)
    files, _ = input_files(Path(args.source), out, "edit")
    if not files:
        raise EmorigError(f"{args.source}: no photos to edit")
    rec, head_name = _reconstructor(args, args.source_reconstructor, args.source_weights)
    sources = _fit(rec, files, "source")
    target = None
    if args.target is not None:
        if Path(args.target).is_dir():
            raise EmorigError("with photo sources, --target is one photo")
        t_rec = rec
        if (args.target_reconstructor, args.target_weights) != (
            args.source_reconstructor,
            args.source_weights,
        ):
            t_rec, _ = _reconstructor(args, args.target_reconstructor, args.target_weights)
        target = _fit(t_rec, [Path(args.target)], "target")[0]
    refiner = None
    if method == "warp+diffusion":
        refiner = _refiner(args, rec.renderer, head_name)
    predictor = None
    if emotion is not None:
        from emorig.edit.emotion import emotion_predictor

        predictor = emotion_predictor(
            args.emotion_predictor, rec.renderer, head_name, args.recognizer, args.device, say
        )
    if method == "warp+diffusion":
        warn_synthetic_model(args.model, rec.method)
    request = _Request(modes, target, emotion, explicit, predictor, args)
    checks: dict[str, dict] = {}
    grids, faces = [], []
    bar = progress_bar(len(sources), "editing", "photo")
    for face in sources:
        grids.append(_one(face, request, rec.renderer, refiner, out, checks))
        faces.append({"source": face.path, "faces_in_photo": face.n_faces, "fit": face.quality})
        bar.update(1)
    bar.close()
    _record(args, out, method, emotion, request, grids, faces, checks)
    n = len(request.labels())
    print(
        f"{len(sources)} photos x {n} edits ({method}) in {time.perf_counter() - started:.1f} s "
        f"-> {out} (full resolution: NAME_EDIT.png; close-ups: NAME_grid.png)"
    )
    return finish_emotion_checks(checks)


def _fit(rec, files, what: str):
    from emorig.edit.photo import fit_photos

    faces = fit_photos(files, rec, say)
    _say_quality(faces)
    if what == "target" and not faces:
        raise EmorigError("the target photo has no usable face")
    return faces


def _refiner(args, renderer, head_name: str):
    """A :class:`~emorig.edit.methods.WarpEditor` holding the diffusion model."""
    from emorig.diffusion.loading import load_rig
    from emorig.edit.methods import WarpEditor
    from emorig.edit.pipeline import Editor

    model = load_rig(args.model, device=args.device)
    expression_input = None
    if model.config.expression_dim:
        from emorig.edit.emotion import expression_input_for

        expression_input = expression_input_for(model, args.recognizer, args.device)
    editor = Editor(
        model, renderer, timesteps=args.steps, seed=args.seed, expression_input=expression_input
    )
    return WarpEditor(renderer, refiner=editor, strength=args.strength, invert=args.invert)


class _Request:
    """What to change, turned into (label, code) pairs per source."""

    def __init__(self, modes, target, emotion, explicit, predictor, args):
        self.modes, self.target, self.emotion = modes, target, emotion
        self.explicit, self.predictor, self.args = explicit, predictor, args

    def labels(self) -> list[str]:
        from emorig.cli.edit_requests import explicit_label

        if self.emotion is not None:
            return [self.emotion.emotion or "valence-arousal"]
        if self.explicit is not None:
            return [explicit_label(self.args)]
        return list(self.modes)

    def codes(self, face, renderer) -> list[tuple[str, object]]:
        """(label, code) of every edit of ``face``; for an emotion sweep, the intensities in
        order, the requested one last."""
        from emorig.cli.edit_requests import emotion_levels, explicit_code, explicit_label
        from emorig.edit.modes import edit_mode
        from emorig.edit.photo import pose_kept

        if self.emotion is not None:
            search = edit_mode("emotion").search
            levels = emotion_levels(self.emotion, self.args.sweep)
            tag = self.emotion.emotion or "valence-arousal"
            return [
                (f"{tag}_{t.intensity:.2f}", search(face.code, self.predictor, t)) for t in levels
            ]
        if self.explicit is not None:
            code = pose_kept(renderer, face.code, explicit_code(self.explicit, face.code))
            return [(explicit_label(self.args), code)]
        out = []
        for name in self.modes:
            mode = edit_mode(name)
            if mode.target_latent:
                raise EmorigError(
                    f"the {name} mode swaps the model's global latent: --method diffusion"
                )
            out.append(
                (name, pose_kept(renderer, face.code, mode.apply(face.code, self.target.code)))
            )
        return out


def _one(face, request: _Request, renderer, refiner, out: Path, checks: dict):
    """Edit one photo; write its full-resolution edits, its grid and (emotion) its sweep."""
    from emorig.edit.photo import edit_photo, photo_grid
    from emorig.io.images import save_png

    pairs = request.codes(face, renderer)
    images = edit_photo(face, pairs, renderer, refiner)
    emotion = request.emotion
    if emotion is not None:
        tag = emotion.emotion or "valence-arousal"
        save_png(images[-1], out / f"{face.name}_{tag}.png")
        if len(images) > 1:
            strip = photo_grid(face, [p[0] for p in pairs], [p[1] for p in pairs], images, renderer)
            save_png(strip, out / f"{face.name}_{tag}_sweep.png")
        if emotion.emotion is not None:
            checks[face.name] = _check(face, pairs, images, emotion.emotion, request.args)
        labels, codes, shown = [tag], [pairs[-1][1]], [images[-1]]
    else:
        for (label, _), image in zip(pairs, images, strict=True):
            save_png(image, out / f"{face.name}_{label}.png")
        labels, codes, shown = [p[0] for p in pairs], [p[1] for p in pairs], images
    grid = photo_grid(face, labels, codes, shown, renderer, request.target)
    return save_png(grid, out / f"{face.name}_grid.png")


def _check(face, pairs, images, emotion: str, args) -> dict:
    """The recogniser's reading of the photo before and after, as an emotion-check record;
    sweep frames are compared on the face's crop (the rest of the photo does not move)."""
    from emorig.cli.edit_requests import recognizer_of
    from emorig.edit.photo import emotion_check, photo_crops, recognise
    from emorig.io.images import to_uint8

    crops = photo_crops([face.photo, *images], [face.face] * (1 + len(images)), "cpu")
    probs = recognise(recognizer_of(args.recognizer, args.device), crops[[0, -1]])
    frames = [to_uint8(c) for c in crops[1:]] if len(images) > 1 else []
    found = pairs[-1][1]
    record = emotion_check(emotion, probs[0], probs[1], face.code, found, frames).to_json()
    record["found_code"] = {
        "expression": [round(float(v), 5) for v in found.expression[0].tolist()],
        "jaw_pose": [round(float(v), 5) for v in found.jaw_pose[0].tolist()],
    }
    return record


def _record(args, out: Path, method, emotion, request, grids, faces, checks) -> None:
    """``OUT/edits.json`` of a photo run: :func:`~emorig.cli.edit_requests.base_record`'s
    fields, the photos (with their fit quality) and the grids."""
    from emorig.cli.edit_requests import base_record
    from emorig.io.atomic import atomic_write

    record = {
        **base_record(args, method, emotion, request.predictor, checks),
        "modes": list(request.modes) if request.target is not None else None,
        "photos": faces,
        "grids": [str(g) for g in grids],
    }
    with atomic_write(out / "edits.json", "w") as f:
        json.dump(record, f, indent=1)

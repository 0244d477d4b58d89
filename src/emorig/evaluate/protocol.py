"""The edit evaluation protocol: edit, re-reconstruct, compare with what was asked for.

ControlFace-style: for ``pairs`` (source, target) pairs drawn from a prepared folder
(deterministic by seed, source != target), every mode edits the source with the
:class:`~emorig.edit.pipeline.Editor`; the edited image is reconstructed again (the caller's
``reconstruct``, e.g. a DECA encoder on the face crops: :func:`encoder_reconstructor`) and
compared with the **requested** code, the source's code with the target's parameters of that
mode (after re-centring for pose, exactly the code the edit was rendered from):

* ``exp``: expression error, L2 over expression coefficients + jaw axis-angle;
* ``pose``: geodesic angle between the head rotations, degrees;
* ``light``: RMSE over the 27 SH coefficients.

Every row reports all errors; the one a mode is judged by is its *primary* metric. Two
reference rows show the floor: ``unedited`` (the source sampled under its own buffers,
compared with the source code) and ``source`` (the data image itself re-reconstructed: the
reconstructor's own error). Identity: ``"shape"`` compares requested and re-reconstructed
shape codes (synthetic data, where the identity is known), ``"dlib"`` compares dlib face
descriptors of the source photo and the edit (photos).

Optional parts: emotion accuracy (each requested emotion's expression is found with
:func:`~emorig.edit.emotion.find_expression`, sampled, re-reconstructed and classified by the
same predictor; reported next to the predictor's verdict on the requested codes, the
ceiling), multi-view consistency (every view of a group gets the same target expression; the
spread of the re-reconstructed expression codes, next to the spread without an edit) and FID
between data images and edits.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emorig.edit.modes import edit_mode, face_metrics, face_mode_names
from emorig.edit.pipeline import Editor, items_from_dataset
from emorig.errors import EmorigError
from emorig.evaluate.metrics import (
    code_errors,
    emotion_accuracy,
    expression_error,
    identity_embeddings,
    identity_similarity,
    light_rmse,
    multiview_consistency,
    rotation_angle_deg,
    shape_identity,
)
from emorig.evaluate.results import (
    REFERENCES,
    ConsistencyRow,
    EmotionResult,
    ErrorRow,
    Evaluation,
    Example,
    IdentitySummary,
    MultiviewResult,
)
from emorig.types import EMOTION_CLASSES, FaceCode

__all__ = [
    "PRIMARY_METRIC",
    "ConsistencyRow",
    "EmotionResult",
    "ErrorRow",
    "Evaluation",
    "Example",
    "IdentitySummary",
    "MultiviewResult",
    "Reconstruct",
    "encoder_reconstructor",
    "evaluate_model",
    "multiview_groups_of",
    "pick_pairs",
]

#: ``(images (B, 3, S, S) in [0, 1], crop_transforms (B, 3, 3) image px -> 224 crop px)
#: -> FaceCode`` (batch B, any device).
Reconstruct = Callable[[Tensor, Tensor], FaceCode]
#: ``(stage, done, total)``; stages ``"edits"``, ``"emotion"``, ``"multiview"``, ``"fid"``.
Progress = Callable[[str, int, int], None]

#: The metric (a :class:`~emorig.evaluate.metrics.CodeErrors` field) each mode is judged by,
#: from :data:`~emorig.edit.modes.EDIT_MODES`.
PRIMARY_METRIC = face_metrics()


# ---------------------------------------------------------------------------------------------
# helpers


def encoder_reconstructor(model, *, batch_size: int = 16) -> Reconstruct:
    """A :data:`Reconstruct` from a DECA/EMOCA encoder: the aligned images' DECA crops
    (:func:`~emorig.emotion.crops.face_crops`, 224 px) through ``model.encode``.

    Args:
        model: a :class:`~emorig.reconstruct.deca.DecaModel` (or EMOCA); a fast inference
            copy is made (BatchNorm folded), on the model's device.
        batch_size: crops encoded at once.
    """
    from emorig.emotion.crops import face_crops

    net = model.for_inference()
    device = next(net.parameters()).device

    @torch.no_grad()
    def reconstruct(images: Tensor, crop_transforms: Tensor) -> FaceCode:
        crops = face_crops(images.to(device, torch.float32), crop_transforms.to(device))
        codes = [
            net.encode(c.contiguous(memory_format=torch.channels_last))
            for c in crops.split(batch_size)
        ]
        return _cat_codes(codes, device=device)

    return reconstruct


def pick_pairs(n: int, pairs: int, seed: int) -> list[tuple[int, int]]:
    """``pairs`` (source, target) index pairs over ``n`` items, deterministic by ``seed``:
    sources run through a random permutation (repeating it when ``pairs > n``), each target
    is a random other item."""
    if n < 2:
        raise EmorigError(f"the data have {n} item(s); pairs need at least 2")
    if pairs < 1:
        raise EmorigError(f"pairs {pairs}: need at least 1")
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < pairs:
        for s in torch.randperm(n, generator=g).tolist():
            t = (s + int(torch.randint(1, n, (1,), generator=g))) % n
            out.append((s, t))
            if len(out) == pairs:
                break
    return out


def _cat_codes(codes: Sequence[FaceCode], device=None) -> FaceCode:
    """Codes concatenated along the batch (float32; ``detail`` kept only when all have it)."""
    device = device if device is not None else "cpu"
    out = {}
    for f in dataclasses.fields(FaceCode):
        values = [getattr(c, f.name) for c in codes]
        if any(v is None for v in values):
            out[f.name] = None
        else:
            out[f.name] = torch.cat([v.detach().to(device, torch.float32) for v in values])
    return FaceCode(**out)


def _dataset(data, what: str):
    from emorig.data.dataset import BufferDataset

    if isinstance(data, BufferDataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return BufferDataset(Path(data))
    raise EmorigError(f"{what}: expected a prepared folder or BufferDataset")


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _uint8(image: Tensor) -> np.ndarray:
    from emorig.io.images import to_uint8

    return to_uint8(image.clamp(0, 1))


def _reconstruct(reconstruct: Reconstruct, images: Tensor, crop: Tensor) -> FaceCode:
    code = reconstruct(images, crop.to(images.device))
    if not isinstance(code, FaceCode):
        raise EmorigError(f"reconstruct returned {type(code).__name__}, expected a FaceCode")
    if code.batch_size != images.shape[0]:
        raise EmorigError(
            f"reconstruct returned {code.batch_size} codes for {images.shape[0]} images"
        )
    return code.detach().to("cpu", torch.float32)


def _expression_vector(code: FaceCode, n_expression: int | None = None) -> Tensor:
    """(B, E + 3) expression (zero-padded to ``n_expression``) ++ jaw, float64."""
    e = code.expression.double()
    if n_expression is not None and e.shape[1] < n_expression:
        e = torch.nn.functional.pad(e, (0, n_expression - e.shape[1]))
    return torch.cat([e, code.jaw_pose.double()], -1)


def _per_item(primary: str | None, requested: FaceCode, recon: FaceCode) -> Tensor:
    if primary == "pose_deg":
        return rotation_angle_deg(requested.global_pose, recon.global_pose)
    if primary == "light_rmse":
        return light_rmse(requested.light, recon.light)
    return expression_error(
        requested.expression, recon.expression, requested.jaw_pose, recon.jaw_pose
    )[0]


@dataclass
class _Rows:
    """Accumulates requested / re-reconstructed codes (and dlib embeddings) per row."""

    requested: list[FaceCode] = field(default_factory=list)
    reconstructed: list[FaceCode] = field(default_factory=list)
    emb_source: list[Tensor] = field(default_factory=list)
    emb_edit: list[Tensor] = field(default_factory=list)
    source_shape: list[Tensor] = field(default_factory=list)

    def finish(self, name: str, kind: str, identity: str) -> ErrorRow:
        req, rec = _cat_codes(self.requested), _cat_codes(self.reconstructed)
        primary = PRIMARY_METRIC.get(name) if kind == "edit" else None
        errors = code_errors(req, rec)
        per_item = tuple(float(v) for v in _per_item(primary, req, rec))
        if identity == "shape":
            # against the source image read by the same encoder, so that the encoder's own
            # error (shown by the code errors) does not count as identity lost
            s = shape_identity(torch.cat(self.source_shape), rec.shape)
            ident = IdentitySummary("shape", s.cosine, s.l2, None, req.batch_size)
        elif self.emb_edit:
            d = identity_similarity(torch.cat(self.emb_source), torch.cat(self.emb_edit))
            ident = IdentitySummary("dlib", d.cosine, d.distance, d.same_rate, d.n)
        else:  # dlib on the data image itself: nothing to compare
            ident = IdentitySummary("dlib", math.nan, math.nan, None, 0)
        return ErrorRow(name, kind, errors, primary, per_item, ident)


# ---------------------------------------------------------------------------------------------
# the protocol


def evaluate_model(
    model,
    data,
    *,
    renderer,
    reconstruct: Reconstruct,
    modes: Sequence[str] = ("exp", "pose", "light"),
    emotions: Sequence[Any] | None = None,
    multiview=None,
    pairs: int = 16,
    seed: int = 0,
    steps: str = "ddim20",
    invert: bool = False,
    identity: str = "shape",
    predictor=None,
    fid_network=None,
    fid_size: int | None = None,
    progress: Progress | None = None,
    editor: Editor | None = None,
    expression_input=None,
    batch_size: int = 8,
    examples: int = 4,
    multiview_groups: int | None = None,
    emotion_steps: int = 150,
    identity_backend=None,
    metadata: Mapping[str, Any] | None = None,
    methods: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Evaluate a DiffusionRig(-EMO) model's edits (see the module docstring).

    Args:
        model: the :class:`~emorig.diffusion.model.RigModel`; everything runs on its device.
        data: a prepared folder (path or :class:`~emorig.data.dataset.BufferDataset`) at
            the model's image size; pairs are drawn from it.
        renderer: the data head's :class:`~emorig.render.face.FaceRenderer` (model's device).
        reconstruct: ``(images (B, 3, S, S) in [0, 1], crop_transforms (B, 3, 3)) ->
            FaceCode``, re-reconstructs edited images (e.g. :func:`encoder_reconstructor`).
        modes: edit modes from ``pose``, ``exp``, ``light``, ``latent``.
        emotions: requested emotions for emotion accuracy: class names (intensity 1) or
            :class:`~emorig.edit.emotion.EmotionTarget` with a class; None: skipped.
        multiview: a prepared multi-view folder (items with ``group`` and ``view`` info, as
            ``emorig synth --mode multiview`` writes) for consistency; None: skipped.
        pairs: (source, target) pairs.
        seed: seed of the pair choice and of the editor's starting noise.
        steps: DDIM respacing, e.g. ``"ddim20"``.
        invert: start edits from the sources' DDIM inversions.
        identity: ``"shape"`` (shape codes, synthetic data) or ``"dlib"`` (photos).
        predictor: a :class:`~emorig.edit.emotion.CodePredictor` (needed for ``emotions``);
            a :class:`~emorig.edit.emotion.CodeSpacePredictor` starts searches from the
            built-in head's presets.
        fid_network: a feature network (module or ``.pt2`` / TorchScript path) for FID
            between the data images and the edits; None: skipped.
        fid_size: resize images to this side before the FID network (e.g. 299).
        progress: called as ``progress(stage, done, total)``.
        editor: a ready :class:`~emorig.edit.pipeline.Editor` (then ``steps``, ``invert``,
            ``expression_input`` and the data's mean shape are the editor's); default: built
            from ``model`` and ``renderer`` with the data's mean shape.
        expression_input: for DiffusionRig-EMO models, see
            :func:`~emorig.edit.emotion.expression_input_for` (default: the code-based input
            when the model reads codes).
        batch_size: faces edited at once.
        examples: example pairs kept for the report.
        multiview_groups: evaluate only the first groups (default: all).
        emotion_steps: Adam steps of each expression search.
        identity_backend: face backend for ``identity="dlib"`` (default dlib's).
        metadata: more JSON-able settings to record (e.g. the model path).
        methods: more editors by method name (:mod:`emorig.edit.methods`), each editing the
            same pairs; their edit rows are added as ``"MODE · METHOD"``.
    """
    started = time.perf_counter()
    modes = tuple(modes)
    targets = _check_arguments(modes, identity, batch_size, emotions, predictor)
    ds = _dataset(data, "data")
    mv = None if multiview is None else _dataset(multiview, "multiview")
    if editor is None:
        editor = _default_editor(model, renderer, ds, steps, seed, invert, expression_input)
    settings = _settings(ds, modes, pairs, seed, editor, identity, targets, mv, fid_network)
    settings.update(dict(metadata or {}), methods=list(methods or {}))
    synthetic = any(bool(d.manifest.settings.synthetic_head) for d in (ds, mv) if d is not None)
    chosen = pick_pairs(len(ds), pairs, seed)
    names = [ds.manifest.items[i].source for i in range(len(ds))]
    rows, example_rows, edits = _edit_pairs(
        editor, ds, chosen, modes, reconstruct, identity, identity_backend, batch_size,
        examples, fid_network is not None, progress, methods,
    )  # fmt: skip
    emotion, mv_result, fid, more = _optional_parts(
        editor, ds, mv, chosen, targets, predictor, reconstruct, batch_size, emotion_steps,
        examples, multiview_groups, fid_network, fid_size, edits, progress,
    )  # fmt: skip
    return Evaluation(
        settings=settings,
        synthetic=synthetic,
        pairs=tuple((names[s], names[t]) for s, t in chosen),
        errors=rows,
        emotion=emotion,
        multiview=mv_result,
        fid=fid,
        examples=tuple(example_rows + more),
        seconds=time.perf_counter() - started,
    )


def _method_rows(
    methods, ds, chosen, modes, reconstruct, identity, backend, batch_size, progress
) -> tuple:
    """The edit rows of every other method's editor on the same pairs, as ``MODE · METHOD``."""
    rows: tuple = ()
    for label, other in (methods or {}).items():
        extra, _, _ = _edit_pairs(
            other, ds, chosen, modes, reconstruct, identity, backend, batch_size, 0, False,
            progress,
        )  # fmt: skip
        rows += tuple(
            dataclasses.replace(r, name=f"{r.name} · {label}") for r in extra if r.kind == "edit"
        )
    return rows


def _optional_parts(
    editor, ds, mv, chosen, targets, predictor, reconstruct, batch_size, emotion_steps,
    examples, multiview_groups, fid_network, fid_size, edits, progress,
):  # fmt: skip
    """Emotion accuracy, multi-view consistency and FID, each when asked for; with the
    example rows they add."""
    more: list[Example] = []
    emotion = mv_result = fid = None
    if targets:
        sources = list(dict.fromkeys(s for s, _ in chosen))
        emotion, rows = _emotion_part(
            editor, ds, sources, targets, predictor, reconstruct, batch_size, emotion_steps,
            examples, progress,
        )  # fmt: skip
        more += rows
    if mv is not None:
        mv_result, rows = _multiview_part(editor, mv, reconstruct, multiview_groups, progress)
        more += rows
    if fid_network is not None:
        fid = _fid(fid_network, ds, edits, fid_size, batch_size, editor.device, progress)
    return emotion, mv_result, fid, more


def _check_arguments(modes, identity, batch_size, emotions, predictor) -> list:
    """Refuse unusable settings; returns the emotion targets."""
    choices = face_mode_names()
    bad = [m for m in modes if m not in choices]
    if bad or not modes:
        raise EmorigError(f"modes {list(modes)}: choose from {', '.join(choices)}")
    if identity not in ("shape", "dlib"):
        raise EmorigError(f"identity '{identity}': choose shape or dlib")
    if batch_size < 1:
        raise EmorigError(f"batch size {batch_size}: must be at least 1")
    targets = _emotion_targets(emotions)
    if targets and predictor is None:
        raise EmorigError(
            "emotion accuracy needs an emotion predictor (e.g. "
            "emorig.edit.emotion.train_code_predictor(renderer) on the built-in head)"
        )
    return targets


def _default_editor(model, renderer, ds, steps, seed, invert, expression_input) -> Editor:
    """The editor of an evaluation: the data's mean shape, the code-based expression input of
    DiffusionRig-EMO models unless one is given."""
    if expression_input is None and model.config.expression_dim:
        from emorig.edit.emotion import expression_input_for

        expression_input = expression_input_for(model, None, _device(model))
    return Editor(
        model,
        renderer,
        mean_shape=ds.mean_shape,
        timesteps=steps,
        seed=seed,
        invert=invert,
        expression_input=expression_input,
    )


def _settings(ds, modes, pairs, seed, editor, identity, targets, mv, fid_network) -> dict:
    """The protocol's settings and the data's description, as recorded in the results."""
    return {
        "data": str(ds.root),
        "items": len(ds),
        "head": ds.manifest.settings.head,
        "data_reconstructor": ds.manifest.settings.reconstructor,
        "image_size": ds.size,
        "model_space": editor.model.config.describe(),
        "modes": list(modes),
        "pairs": pairs,
        "seed": seed,
        "steps": editor.timesteps,
        "invert": editor.invert,
        "identity": identity,
        "mean_shape": editor.mean_shape is not None,
        "emotions": [t.describe() for t in targets],
        "multiview": None if mv is None else str(mv.root),
        "fid_network": _describe_network(fid_network),
    }


def _describe_network(network) -> str | None:
    if network is None:
        return None
    if isinstance(network, torch.nn.Module):
        return type(network).__name__
    return str(network)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _emotion_targets(emotions) -> list:
    from emorig.edit.emotion import EmotionTarget

    if emotions is None:
        return []
    if isinstance(emotions, (str, EmotionTarget)):
        emotions = [emotions]
    out = []
    for e in emotions:
        t = EmotionTarget(e) if isinstance(e, str) else e
        if not isinstance(t, EmotionTarget) or t.emotion is None:
            raise EmorigError(f"emotion {e!r}: give a class name or an EmotionTarget with one")
        out.append(t)
    return out


def _edit_pairs(
    editor, ds, chosen, modes, reconstruct, identity, backend, batch_size, n_examples,
    keep_edits, progress, methods=None,
):  # fmt: skip
    """The code-error and identity rows (with those of the other ``methods``' editors),
    example rows and (for FID) the edited images."""
    acc = {name: _Rows() for name in (*modes, *REFERENCES)}
    examples, edits = [], []
    done = 0
    for chunk in _chunks(chosen, batch_size):
        source = items_from_dataset(ds, [s for s, _ in chunk])
        target = items_from_dataset(ds, [t for _, t in chunk])
        result = editor.edit(source, target, modes)
        crop = source.crop_transform
        emb_source = None
        if identity == "dlib":
            emb_source = identity_embeddings(source.image, backend)
        base = editor.source_code(source).detach().to("cpu", torch.float32)
        # the reconstructor's own floor: the data image against its stored code
        seen = _reconstruct(reconstruct, source.image, crop)
        acc["source"].requested.append(source.code.detach().to("cpu", torch.float32))
        acc["source"].reconstructed.append(seen)
        acc["source"].source_shape.append(seen.shape)
        outputs = {m: (result.codes[m], result.images[m]) for m in modes}
        outputs["unedited"] = (base, result.reconstruction)
        for name, (requested, images) in outputs.items():
            row = acc[name]
            row.requested.append(requested.detach().to("cpu", torch.float32))
            row.reconstructed.append(_reconstruct(reconstruct, images, crop))
            row.source_shape.append(seen.shape)
            if emb_source is not None:
                row.emb_source.append(emb_source)
                row.emb_edit.append(identity_embeddings(images, backend))
        if keep_edits:
            edits += [result.images[m].cpu() for m in modes]
        for i in range(len(chunk)):
            if len(examples) >= n_examples:
                break
            images = [source.image[i], target.image[i]]
            images += [result.images[m][i] for m in modes] + [result.reconstruction[i]]
            examples.append(
                Example(
                    "edits",
                    f"{source.names[i]} <- {target.names[i]}",
                    ("source", "target", *modes, "unedited"),
                    tuple(_uint8(im) for im in images),
                )
            )
        done += len(chunk)
        if progress is not None:
            progress("edits", done, len(chosen))
    rows = tuple(acc[m].finish(m, "edit", identity) for m in modes) + tuple(
        acc[r].finish(r, "reference", identity) for r in REFERENCES
    )
    rows += _method_rows(
        methods, ds, chosen, modes, reconstruct, identity, backend, batch_size, progress
    )
    return rows, examples, edits


def _emotion_part(
    editor, ds, sources, targets, predictor, reconstruct, batch_size, steps, n_examples,
    progress,
):  # fmt: skip

    dev = editor.device
    requested_cls, from_edit, from_request = [], [], []
    examples = []
    done, total = 0, len(sources) * len(targets)
    for chunk in _chunks(sources, batch_size):
        source = items_from_dataset(ds, list(chunk))
        code = editor.source_code(source)
        search = edit_mode("emotion").search
        found = [search(code, predictor, t, steps) for t in targets]
        images = editor.sample_codes(source, found)
        for t, c, im in zip(targets, found, images, strict=True):
            rec = _reconstruct(reconstruct, im, source.crop_transform)
            with torch.no_grad():
                from_edit.append(predictor(rec.to(dev)).logits.argmax(-1).cpu())
                from_request.append(predictor(c.to(dev)).logits.argmax(-1).cpu())
            requested_cls.append(torch.full((len(chunk),), EMOTION_CLASSES.index(t.emotion)))
            done += len(chunk)
            if progress is not None:
                progress("emotion", done, total)
        for i in range(len(chunk)):
            if len(examples) >= n_examples:
                break
            examples.append(
                Example(
                    "emotion",
                    source.names[i],
                    ("source", *(t.describe() for t in targets)),
                    (_uint8(source.image[i]), *(_uint8(im[i]) for im in images)),
                )
            )
    req = torch.cat(requested_cls)
    edit_acc = emotion_accuracy(req, torch.cat(from_edit))
    req_acc = emotion_accuracy(req, torch.cat(from_request))
    asked = sorted(set(req.tolist()))
    result = EmotionResult(
        targets=tuple(t.describe() for t in targets),
        accuracy=edit_acc.accuracy,
        requested_accuracy=req_acc.accuracy,
        per_class={EMOTION_CLASSES[c]: edit_acc.per_class[c] for c in asked},
        requested_per_class={EMOTION_CLASSES[c]: req_acc.per_class[c] for c in asked},
        confusion=tuple(tuple(int(v) for v in row) for row in edit_acc.confusion.tolist()),
        n=edit_acc.n,
    )
    return result, examples


def multiview_groups_of(ds) -> dict[int, list[int]]:
    """Group id -> item indices sorted by view, from the items' ``group`` / ``view`` info."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for i, ref in enumerate(ds.manifest.items):
        if "group" not in ref.info or "view" not in ref.info:
            raise EmorigError(
                f"{ds.root}: item {ref.source} has no group/view info (make multi-view data "
                "with emorig synth --mode multiview --prepared)"
            )
        groups.setdefault(int(ref.info["group"]), []).append((int(ref.info["view"]), i))
    return {g: [i for _, i in sorted(v)] for g, v in sorted(groups.items())}


def _multiview_part(editor, mv, reconstruct, limit, progress):
    groups = multiview_groups_of(mv)
    ids = list(groups)
    if limit is not None:
        ids = ids[: max(1, limit)]
    k = min(len(groups[g]) for g in ids)
    if k < 2:
        raise EmorigError(f"{mv.root}: multi-view consistency needs at least 2 views per group")
    every = list(groups)
    n_exp = None
    edited, unedited, original, errors = [], [], [], []
    examples = []
    for n, g in enumerate(ids):
        source = items_from_dataset(mv, groups[g][:k])
        # the target expression: another group's (its first view), or the group's own
        other = every[(every.index(g) + 1) % len(every)]
        target = items_from_dataset(mv, groups[other][:1])
        result = editor.edit(source, target, ["exp"])
        crop = source.crop_transform
        rec_edit = _reconstruct(reconstruct, result.images["exp"], crop)
        rec_plain = _reconstruct(reconstruct, result.reconstruction, crop)
        rec_src = _reconstruct(reconstruct, source.image, crop)
        requested = result.codes["exp"].detach().to("cpu", torch.float32)
        n_exp = max(rec_edit.expression.shape[1], requested.expression.shape[1])
        edited.append(_expression_vector(rec_edit, n_exp))
        unedited.append(_expression_vector(rec_plain, n_exp))
        original.append(_expression_vector(rec_src, n_exp))
        errors.append(
            expression_error(
                requested.expression, rec_edit.expression, requested.jaw_pose, rec_edit.jaw_pose
            )[0]
        )
        if n == 0:
            examples.append(
                Example(
                    "multiview",
                    f"group {g}: views",
                    tuple(f"view {v}" for v in range(k)),
                    tuple(_uint8(im) for im in source.image),
                )
            )
            examples.append(
                Example(
                    "multiview",
                    f"group {g}: exp of {target.names[0]}",
                    tuple(f"view {v}" for v in range(k)),
                    tuple(_uint8(im) for im in result.images["exp"]),
                )
            )
        if progress is not None:
            progress("multiview", n + 1, len(ids))
    rows = []
    for name, vectors in (("edited", edited), ("unedited", unedited), ("source", original)):
        width = max(v.shape[1] for v in vectors)
        stacked = torch.stack(
            [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in vectors]
        )
        c = multiview_consistency(stacked)
        rows.append(ConsistencyRow(name, c.mean, c.max, tuple(c.per_group.tolist())))
    result = MultiviewResult(
        tuple(rows), len(ids), k, float(torch.cat(errors).mean()), tuple(int(g) for g in ids)
    )
    return result, examples


def _fid(network, ds, edits, size, batch_size, device, progress) -> float:
    from emorig.evaluate.metrics import fid_from_images

    if progress is not None:
        progress("fid", 0, 1)

    def data_batches() -> Iterator[Tensor]:
        for chunk in _chunks(range(len(ds)), max(batch_size, 16)):
            yield torch.stack([ds[i]["image"] for i in chunk])

    value = fid_from_images(network, data_batches(), torch.cat(edits), size=size, device=device)
    if progress is not None:
        progress("fid", 1, 1)
    return value

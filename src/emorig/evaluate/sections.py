"""Report sections of an :class:`~emorig.evaluate.results.Evaluation`: setup, code errors,
identity, emotion accuracy, multi-view consistency, FID and example grids."""

from __future__ import annotations

from typing import Any

from emorig.evaluate.metrics import DLIB_SAME_PERSON
from emorig.evaluate.report import BarPlot, ImageGrid, ImageRow, Section, Table
from emorig.types import EMOTION_CLASSES

__all__ = ["METRIC_LABELS", "evaluation_sections"]

_SPREAD = "multi-view spread, lower is better"

#: What each recorded setting means, for the setup table.
SETTING_NOTES = {
    "data": "the prepared folder the (source, target) pairs come from",
    "items": "faces in it",
    "head": "the head its codes belong to",
    "data_reconstructor": "how its codes were made ('synthetic': known exactly, from the renders)",
    "image_size": "side of the images, pixels",
    "model": "the model folder or checkpoint evaluated",
    "model_space": "its architecture: pixels, or an autoencoder's latents (latent mode)",
    "modes": "edit modes evaluated",
    "pairs": "(source, target) pairs edited",
    "seed": "seed of the pair choice and of the starting noise",
    "steps": "DDIM respacing of every sampling",
    "invert": "edits start from each source's DDIM inversion (else from one fixed noise)",
    "identity": "identity measure: 'shape' codes (synthetic data) or 'dlib' descriptors",
    "mean_shape": "the album's mean identity replaces each source's (DiffusionRig stage 2)",
    "emotions": "emotions requested for the emotion-accuracy part, with their intensity",
    "multiview": "the multi-view set of the consistency part",
    "fid_network": "feature network of the FID part ('—': FID not measured)",
    "methods": "other edit methods on the same pairs (their rows: 'MODE · METHOD')",
}

#: Labels of the :class:`~emorig.evaluate.metrics.CodeErrors` fields, in table order.
METRIC_LABELS = {
    "expression_l2": "expression L2 (exp + jaw)",
    "expression_mae": "expression MAE",
    "pose_deg": "pose angle (deg)",
    "jaw_deg": "jaw angle (deg)",
    "light_rmse": "light RMSE",
}


def _setting(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or None
    return str(value)


def evaluation_sections(ev: Any) -> list[Section]:
    """Report sections of an :class:`~emorig.evaluate.results.Evaluation`; parts not run are
    left out."""
    parts = [
        _setup_section(ev),
        _errors_section(ev),
        _identity_section(ev),
        _emotion_section(ev),
        _multiview_section(ev),
        _fid_section(ev),
        _examples_section(ev),
    ]
    return [p for p in parts if p is not None]


def _setup_section(ev: Any) -> Section:
    s = ev.settings
    setup = (
        f"{len(ev.pairs)} (source, target) pairs from {s.get('data')} ({s.get('items')} items, "
        f"head {s.get('head')}, codes by {s.get('data_reconstructor')}), seed {s.get('seed')}. "
        f"Each mode edits the source with the target's parameters ({s.get('steps')}"
        f"{', DDIM inversion' if s.get('invert') else ', fixed noise'}); the edited image is "
        "reconstructed again and compared with the requested code: the source's code with "
        "the target's expression and jaw (exp), head rotation (pose) or SH light (light)."
        "\n\nReference rows: 'unedited' samples the source under its own buffers; 'source' "
        "re-reconstructs the data image itself (the reconstructor's own error). An edit can "
        "hardly score better than these."
    )
    if ev.synthetic:
        setup += (
            "\n\nThe data are SYNTHETIC renders of the built-in procedural head; these numbers "
            "test the pipeline, not quality on real faces."
        )
    settings_rows = [(k, _setting(v), SETTING_NOTES.get(k, "")) for k, v in s.items()]
    return Section(
        "Evaluation setup",
        setup,
        tables=(Table(("setting", "value", "meaning"), settings_rows),),
        synthetic=ev.synthetic,
    )


def _errors_section(ev: Any) -> Section:
    metrics = list(METRIC_LABELS)
    rows = []
    for r in ev.errors:
        primary = "" if r.primary is None else METRIC_LABELS[r.primary]
        rows.append((r.name, r.kind, primary, *(getattr(r.errors, m) for m in metrics), r.errors.n))
    references = [r for r in ev.errors if r.kind == "reference"]
    plots = []
    for r in ev.errors:  # edit rows in mode order, each on its primary metric
        if r.kind != "edit" or r.primary is None:
            continue
        values = [(r.name, getattr(r.errors, r.primary))]
        values += [(ref.name, getattr(ref.errors, r.primary)) for ref in references]
        title = f"{r.name} edits: {METRIC_LABELS[r.primary]}, lower is better"
        plots.append(BarPlot(values, title=title))
    headers = ("row", "kind", "primary metric", *(METRIC_LABELS[m] for m in metrics), "n")
    return Section(
        "Code errors (requested vs re-reconstructed)",
        "Mean errors over the pairs; each mode is judged by its primary metric.",
        tables=(Table(headers, rows),),
        plots=tuple(plots),
        synthetic=ev.synthetic,
    )


def _identity_section(ev: Any) -> Section:
    ident = ev.errors[0].identity.method if ev.errors else "shape"
    if ident == "shape":
        text = (
            "Cosine similarity and L2 distance between the identity (shape code) read from "
            "each edit and the one read from the source image by the same encoder; 1 and 0 "
            "mean the edit kept the identity as the encoder sees it. The 'source' row compares "
            "the source image with itself (1 by construction); how far the encoder's reading is "
            "from the true code is in the code errors above."
        )
        headers = ("row", "shape cosine", "shape L2", "n")
        id_rows = [(r.name, r.identity.cosine, r.identity.distance, r.identity.n)
                   for r in ev.errors]  # fmt: skip
    else:
        text = (
            "dlib face descriptors of the source photo and of the edit: cosine similarity, "
            f"Euclidean distance and the share under dlib's same-person threshold "
            f"({DLIB_SAME_PERSON}). Pairs where a face is not found are left out."
        )
        headers = ("row", "cosine", "distance", "same person", "n")
        id_rows = [
            (r.name, r.identity.cosine, r.identity.distance, r.identity.same_rate, r.identity.n)
            for r in ev.errors
            if r.name != "source"
        ]
    return Section(
        "Identity preservation",
        text,
        tables=(Table(headers, id_rows),),
        plots=(
            BarPlot([(r[0], r[1]) for r in id_rows], title="identity cosine, higher is better"),
        ),
        synthetic=ev.synthetic,
    )


def _emotion_section(ev: Any) -> Section | None:
    if ev.emotion is None:
        return None
    e = ev.emotion
    classes = list(e.per_class)
    accuracy = Table(
        ("class", "edits", "requested codes"),
        [(c, e.per_class[c], e.requested_per_class[c]) for c in classes]
        + [("all", e.accuracy, e.requested_accuracy)],
        caption=f"{e.n} edits; targets: {', '.join(e.targets)}",
    )
    confusion = Table(
        ("requested \\ predicted", *EMOTION_CLASSES),
        [(EMOTION_CLASSES[i], *row) for i, row in enumerate(e.confusion) if sum(row)],
        caption="confusion of the edits (rows requested, columns predicted)",
    )
    recall = BarPlot(
        [(c, e.per_class[c]) for c in classes],
        title="recall of each requested emotion in the edits",
    )
    return Section(
        "Emotion accuracy",
        "For every requested emotion the expression is found with the emotion "
        "predictor, sampled with the model, reconstructed again and classified by the "
        "same predictor. 'requested codes' is the predictor's verdict on the searched "
        "codes themselves: the ceiling the edits can reach.",
        tables=(accuracy, confusion),
        plots=(recall,),
        synthetic=ev.synthetic,
    )


def _multiview_section(ev: Any) -> Section | None:
    if ev.multiview is None:
        return None
    m = ev.multiview
    table = Table(
        ("row", "mean spread", "max spread"),
        [(r.name, r.mean, r.max) for r in m.rows],
        caption=f"expression error of the edits vs requested: {m.expression_l2:.4g}",
    )
    return Section(
        "Multi-view consistency",
        f"{m.n_groups} groups of {m.n_views} views: every view gets the same target "
        "expression; the spread (mean distance of each view's re-reconstructed "
        "expression + jaw code to its group mean, 0 = consistent) is compared with the "
        "spread without an edit and on the data images.",
        tables=(table,),
        plots=(
            BarPlot([(r.name, r.mean) for r in m.rows], title="multi-view spread, lower is better"),
        ),
        synthetic=ev.synthetic,
    )


def _fid_section(ev: Any) -> Section | None:
    if ev.fid is None:
        return None
    return Section(
        "FID",
        "Fréchet distance between features of the data images and of the edits "
        "(meaningful only with thousands of images and the usual Inception network).",
        tables=(Table(("images", "FID"), [("data vs edits", ev.fid)]),),
        synthetic=ev.synthetic,
    )


def _examples_section(ev: Any) -> Section | None:
    if not ev.examples:
        return None
    grids = []
    for part, caption in (
        (
            "edits",
            "rows: source item <- target item (names in the prepared folder); columns: "
            "source | target | one edit per mode | unedited sample",
        ),
        ("emotion", "rows: source item; columns: source | one edit per requested emotion"),
        ("multiview", "the views of one group, then each with the same target expression"),
    ):
        chosen = [x for x in ev.examples if x.part == part]
        if chosen:
            rows = tuple(ImageRow(x.label, x.images) for x in chosen)
            grids.append(ImageGrid(rows, columns=chosen[0].columns, caption=caption))
    return Section("Examples", grids=tuple(grids), synthetic=ev.synthetic)

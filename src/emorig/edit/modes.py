"""The edit modes: what each changes in a face code and which metric judges it.

A mode is one :class:`EditMode` in :data:`EDIT_MODES`; the CLI's choices, the editor, the
evaluation and the demo read this table, so a new mode is one entry (or one
:func:`register_edit_mode` call). DiffusionRig's modes take parameters from a target face:

* ``pose``: the head rotation (``global_pose``, DECA's ``pose[:, :3]``), then the face is
  re-centred where the source's was (DiffusionRig's ``align_ffhq``);
* ``exp``: the expression coefficients **and** the jaw rotation (DECA's ``pose[:, 3:]``);
* ``light``: the 9x3 spherical-harmonics light;
* ``latent``: nothing in the code; the target image's global latent replaces the source's.

DiffusionRig-EMO adds ``emotion``: the expression and jaw searched for a requested emotion
(:mod:`emorig.edit.emotion`), with no target face. Everything a mode does not name (identity,
albedo, camera) stays the source's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emorig.errors import EmorigError
from emorig.types import FaceCode

__all__ = [
    "EDIT_MODES",
    "EditMode",
    "edit_mode",
    "face_metrics",
    "face_mode_names",
    "mode_names",
    "parse_modes",
    "register_edit_mode",
    "scored_mode_names",
]

#: ``change(source, target) -> edited`` (target of batch 1 or the source's batch).
CodeChange = Callable[[FaceCode, FaceCode], FaceCode]


@dataclass(frozen=True)
class EditMode:
    """One kind of edit.

    Attributes:
        name: the mode's name on the command line and in results.
        summary: one line for ``--help`` and reports.
        target: ``"face"`` (parameters come from a target face) or ``"emotion"`` (a
            requested emotion; the code is searched, see :mod:`emorig.edit.emotion`).
        change: the code operation of a face mode (None for ``emotion``).
        search: the code operation of an emotion mode: ``search(code, predictor, target,
            steps) -> FaceCode`` (None for face modes).
        metric: what the mode is judged by: for face modes the
            :class:`~emorig.evaluate.metrics.CodeErrors` field (None when no code error
            measures it: ``latent``), for ``emotion`` the
            :class:`~emorig.evaluate.metrics.EmotionAccuracy` field.
        recentre: move the edited head back to where the source's face was.
        target_latent: sample with the target image's global latent.
        shows_target: the image that shows the wanted expression is the target's (what an
            emotion-feature expression encoder reads).
    """

    name: str
    summary: str
    target: str = "face"
    change: CodeChange | None = None
    search: Callable[..., FaceCode] | None = None
    metric: str | None = None
    recentre: bool = False
    target_latent: bool = False
    shows_target: bool = False

    def apply(self, source: FaceCode, target: FaceCode) -> FaceCode:
        """The source's code with this mode's parameters of ``target``."""
        if self.change is None:
            raise EmorigError(f"edit mode '{self.name}' takes no target face")
        b = source.batch_size
        return self.change(source, target if target.batch_size == b else _expand(target, b))


def _expand(code: FaceCode, batch: int) -> FaceCode:
    if code.batch_size != 1:
        raise EmorigError(f"target batch {code.batch_size} does not match source batch {batch}")
    return code.map(lambda t: t.expand(batch, *t.shape[1:]))


def _pose(source: FaceCode, target: FaceCode) -> FaceCode:
    return source.replace(global_pose=target.global_pose.to(source.global_pose))


def _expression(source: FaceCode, target: FaceCode) -> FaceCode:
    if target.expression.shape[1] != source.expression.shape[1]:
        raise EmorigError(
            f"expression sizes differ: source {source.expression.shape[1]}, "
            f"target {target.expression.shape[1]} (use the same head for both)"
        )
    return source.replace(
        expression=target.expression.to(source.expression),
        jaw_pose=target.jaw_pose.to(source.jaw_pose),
    )


def _light(source: FaceCode, target: FaceCode) -> FaceCode:
    return source.replace(light=target.light.to(source.light))


def _nothing(source: FaceCode, target: FaceCode) -> FaceCode:
    return source


def _emotion_search(code: FaceCode, predictor, target, steps: int = 150) -> FaceCode:
    """The expression and jaw of ``code`` searched for the requested emotion, from where the
    predictor says to start (:func:`emorig.edit.emotion.find_expression`)."""
    from emorig.edit.emotion import find_expression

    start = predictor.search_start(code, target)
    return find_expression(code, predictor, target, steps=steps, start=start).code


#: Every mode by name, in DiffusionRig's order, then DiffusionRig-EMO's.
EDIT_MODES: dict[str, EditMode] = {
    m.name: m
    for m in (
        EditMode("pose", "head rotation of the target", change=_pose, metric="pose_deg",
                 recentre=True),
        EditMode("exp", "expression and jaw of the target", change=_expression,
                 metric="expression_l2", shows_target=True),
        EditMode("light", "spherical-harmonics light of the target", change=_light,
                 metric="light_rmse"),
        EditMode("latent", "appearance (global latent) of the target image", change=_nothing,
                 target_latent=True),
        EditMode("emotion", "expression and jaw found for a requested emotion",
                 target="emotion", search=_emotion_search, metric="accuracy"),
    )
}  # fmt: skip


def register_edit_mode(mode: EditMode) -> None:
    """Add ``mode`` to :data:`EDIT_MODES` (a name already taken is refused)."""
    if mode.name in EDIT_MODES:
        raise EmorigError(f"edit mode '{mode.name}' exists already")
    if mode.target == "face" and mode.change is None:
        raise EmorigError(f"edit mode '{mode.name}': a face mode needs a code change")
    if mode.target == "emotion" and mode.search is None:
        raise EmorigError(f"edit mode '{mode.name}': an emotion mode needs a search")
    EDIT_MODES[mode.name] = mode


def mode_names() -> tuple[str, ...]:
    """Every mode's name."""
    return tuple(EDIT_MODES)


def face_mode_names() -> tuple[str, ...]:
    """The modes that take their parameters from a target face."""
    return tuple(name for name, m in EDIT_MODES.items() if m.target == "face")


def face_metrics() -> dict[str, str]:
    """Each face mode's :class:`~emorig.evaluate.metrics.CodeErrors` field, where it has one."""
    return {n: m.metric for n, m in EDIT_MODES.items() if m.target == "face" and m.metric}


def scored_mode_names() -> tuple[str, ...]:
    """The face modes a code error judges (what the demo and the ablation evaluate)."""
    return tuple(face_metrics())


def edit_mode(name: str) -> EditMode:
    """The mode called ``name``; an :class:`EmorigError` naming the choices otherwise."""
    try:
        return EDIT_MODES[name]
    except KeyError:
        raise EmorigError(
            f"unknown edit mode '{name}'; choose {', '.join(face_mode_names())}"
        ) from None


def parse_modes(text: str) -> tuple[str, ...]:
    """``"exp,pose"`` -> ``("exp", "pose")``: face modes, checked."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    choices = face_mode_names()
    bad = [m for m in modes if m not in choices]
    if bad or not modes:
        raise EmorigError(f"--modes {text!r}: choose from {', '.join(choices)} (comma-separated)")
    return modes

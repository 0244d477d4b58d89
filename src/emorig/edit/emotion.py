"""Editing by emotion: find the FLAME expression (and jaw) that shows a requested emotion.

Starting from the source's code, the expression coefficients and the jaw rotation are
optimised until an emotion predictor says what was asked; identity, pose, light, albedo and
camera are not touched. The objective for ``--emotion E --intensity s`` is the cross-entropy
to the mixture ``s · onehot(E) + (1 − s) · p_source`` (intensity 0 keeps the source's
emotion, 1 asks for a clear E), for ``--valence V --arousal A`` the squared error of the
predicted valence/arousal; plus ``λ ||Δ||²`` on the change of expression and jaw from the
search's start, which keeps the solution near it (and inside the range the face model was
built for). The start is the source's code, or on the built-in head the source blended towards
the emotion's preset by the intensity: then the preset is what is refined, not pulled back
towards the source's own expression.

Predictors (:class:`CodePredictor`):

* :class:`RenderedPredictor`: the code is rendered (Lambertian, the DECA crop, grey
  background) and an image recogniser classifies the render; gradients flow through our
  differentiable renderer.
* :class:`CodeSpacePredictor`: an EmoDECA-style MLP on the codes (fast; trained on labelled
  synthetic codes of the built-in head by :func:`train_code_predictor`).

On the built-in head the expression presets (:mod:`emorig.emotion.presets`) give the start
when ``use_preset`` is set: the source's expression blended towards the preset by the
intensity, then refined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.errors import EmorigError
from emorig.geometry.camera import DECA_CROP
from emorig.types import EMOTION_CLASSES, EmotionOutput, FaceCode

__all__ = [
    "CODE_PREDICTOR_SETTINGS",
    "CodePredictor",
    "CodeSpacePredictor",
    "EmotionTarget",
    "RenderedPredictor",
    "cached_code_predictor",
    "code_predictor_key",
    "emotion_predictor",
    "expression_input_for",
    "find_expression",
    "train_code_predictor",
]

CROP = DECA_CROP


@dataclass(frozen=True)
class EmotionTarget:
    """What to ask for: a class with an intensity, and/or valence and arousal."""

    emotion: str | None = None
    intensity: float = 1.0
    valence: float | None = None
    arousal: float | None = None

    def __post_init__(self) -> None:
        if self.emotion is not None and self.emotion not in EMOTION_CLASSES:
            raise EmorigError(
                f"unknown emotion '{self.emotion}'; choose {', '.join(EMOTION_CLASSES)}"
            )
        if not 0.0 <= self.intensity <= 1.5:
            raise EmorigError(f"intensity {self.intensity}: choose a value in [0, 1.5]")
        if (self.valence is None) != (self.arousal is None):
            raise EmorigError("give --valence and --arousal together")
        for v in (self.valence, self.arousal):
            if v is not None and not -1.0 <= v <= 1.0:
                raise EmorigError(f"valence/arousal {v}: choose values in [-1, 1]")
        if self.emotion is None and self.valence is None:
            raise EmorigError("ask for an --emotion or for --valence and --arousal")

    def describe(self) -> str:
        parts = []
        if self.emotion is not None:
            parts.append(f"{self.emotion} {self.intensity:g}")
        if self.valence is not None:
            parts.append(f"V {self.valence:+.2f} A {self.arousal:+.2f}")
        return ", ".join(parts)


class CodePredictor(nn.Module):
    """FaceCode -> :class:`EmotionOutput`, differentiable in the expression and jaw.

    ``info`` says what the predictor is (set by :func:`emotion_predictor`; JSON).
    """

    predicts_va: bool = False
    info: dict | None = None

    def forward(self, code: FaceCode) -> EmotionOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def search_start(self, code: FaceCode, target: EmotionTarget) -> FaceCode | None:
        """Where an expression search for ``target`` starts (None: from ``code`` itself)."""
        return None


class RenderedPredictor(CodePredictor):
    """Render the code's Lambertian image at the DECA crop and classify it.

    Args:
        renderer: the head's :class:`~emorig.render.face.FaceRenderer`.
        recognizer: an :class:`~emorig.emotion.base.EmotionRecognizer` (frozen here).
        background: grey level behind the head.
    """

    def __init__(self, renderer, recognizer: nn.Module, background: float = 0.5):
        super().__init__()
        self.renderer = renderer
        self.recognizer = recognizer.eval().requires_grad_(False)
        self.background = background
        self.predicts_va = bool(getattr(recognizer, "predicts_va", False))

    def render(self, code: FaceCode) -> Tensor:
        """(B, 3, 224, 224) the code's render on the background, in [0, 1]."""
        b = self.renderer(code, CROP).buffers
        return (b.rendered * b.mask + self.background * (1 - b.mask)).clamp(0, 1)

    def forward(self, code: FaceCode) -> EmotionOutput:
        return self.recognizer(self.render(code))


class CodeSpacePredictor(CodePredictor):
    """An EmoDECA MLP (:class:`~emorig.emotion.emodeca.EmoDecaMLP`) on the codes."""

    predicts_va = True

    def __init__(self, mlp: nn.Module, info: dict | None = None):
        super().__init__()
        self.mlp = mlp.eval().requires_grad_(False)
        self.info = info

    def forward(self, code: FaceCode) -> EmotionOutput:
        return self.mlp(code)

    def search_start(self, code: FaceCode, target: EmotionTarget) -> FaceCode | None:
        """Trained on the built-in head's emotion presets: start from the preset."""
        return preset_start(code, target)


def train_code_predictor(
    renderer,
    steps: int = 400,
    batch_size: int = 128,
    seed: int = 0,
    hidden: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> CodeSpacePredictor:
    """An EmoDECA MLP trained on labelled synthetic codes of the built-in head (emotion
    presets at random intensities; no rendering, a few seconds on a CPU)."""
    from emorig.emotion.emodeca import EmoDecaConfig, EmoDecaMLP, emodeca_loss
    from emorig.emotion.presets import labelled_codes

    n_exp = renderer.flame.n_expression if hasattr(renderer.flame, "n_expression") else 50
    config = EmoDecaConfig(use_identity=False, n_expression=min(50, n_exp), hidden=hidden, layers=2)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = EmoDecaMLP(config)
    mlp = mlp.to(renderer.flame.v_template.device)  # where labelled_codes puts the codes
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    mlp.train()
    for step in range(steps):
        code, labels, va, _ = labelled_codes(renderer, batch_size, g)
        loss = emodeca_loss(mlp(code.detach()), labels, va, g, scheme="norm").total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, steps)
    return CodeSpacePredictor(mlp)


@dataclass(frozen=True)
class ExpressionSearch:
    """Result of :func:`find_expression`.

    Attributes:
        code: the source code with the found expression and jaw.
        before, after: the predictor's output for the source and the result.
        loss: the objective at each step.
    """

    code: FaceCode
    before: EmotionOutput
    after: EmotionOutput
    loss: list[float]


def find_expression(
    code: FaceCode,
    predictor: CodePredictor,
    target: EmotionTarget,
    *,
    steps: int = 150,
    lr: float = 0.05,
    regulariser: float = 0.02,
    start: FaceCode | None = None,
) -> ExpressionSearch:
    """Optimise expression and jaw of ``code`` towards ``target`` (see the module docstring).

    Args:
        code: (B, ...) source codes; only ``expression`` and ``jaw_pose`` change.
        predictor: emotion of codes.
        target: the requested emotion.
        steps, lr: Adam iterations and step size.
        regulariser: λ on ``||Δ expression||² + ||Δ jaw||²`` from the start (mean over entries
            x 100).
        start: initial expression/jaw (e.g. a preset blend); default the source's.

    Returns:
        :class:`ExpressionSearch`.
    """
    if target.valence is not None and not predictor.predicts_va:
        raise EmorigError(
            "this emotion predictor gives no valence/arousal; use a recogniser that does "
            "(EMOCA's, or one trained with emorig train emotion) or the code-space predictor"
        )
    code = code.detach()
    with torch.no_grad():
        before = predictor(code)
    init = start if start is not None else code
    # the change is measured from the start: a preset blend is the expression asked for, and
    # pulling back towards the source's own expression undid it on faces that already show
    # another one (a surprise edit of a calm face ended a third of the way there)
    anchor = init
    expression = init.expression.detach().clone().requires_grad_(True)
    jaw = init.jaw_pose.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([expression, jaw], lr=lr)
    want = None
    if target.emotion is not None:
        onehot = F.one_hot(
            torch.tensor(EMOTION_CLASSES.index(target.emotion)), len(EMOTION_CLASSES)
        ).to(before.logits)
        s = min(target.intensity, 1.0)
        want = s * onehot + (1 - s) * before.logits.exp()
    history = []
    with torch.enable_grad():  # also when called under torch.no_grad()
        for _ in range(steps):
            edited = code.replace(expression=expression, jaw_pose=jaw)
            out = predictor(edited)
            loss = torch.zeros((), device=expression.device)
            if want is not None:
                loss = loss + -(want * out.logits.clamp_min(-30)).sum(-1).mean()
            if target.valence is not None:
                goal = torch.tensor([target.valence, target.arousal]).to(out.valence_arousal)
                loss = loss + 4 * (out.valence_arousal - goal).pow(2).sum(-1).mean()
            d_expression = (expression - anchor.expression).pow(2).mean()
            change = d_expression + (jaw - anchor.jaw_pose).pow(2).mean()
            loss = loss + regulariser * 100 * change
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
    result = code.replace(expression=expression.detach(), jaw_pose=jaw.detach())
    with torch.no_grad():
        after = predictor(result)
    return ExpressionSearch(result, before, after, history)


def preset_start(code: FaceCode, target: EmotionTarget) -> FaceCode | None:
    """Built-in head: the source blended towards the target emotion's preset by the
    intensity (None without a class)."""
    from emorig.emotion.presets import preset_code

    if target.emotion is None:
        return None
    preset = preset_code(code, target.emotion, 1.0)
    s = min(target.intensity, 1.0)
    return code.replace(
        expression=(1 - s) * code.expression + s * preset.expression,
        jaw_pose=(1 - s) * code.jaw_pose + s * preset.jaw_pose,
    )


def expression_input_for(model, recognizer: str | None, device):
    """The expression-encoder input function a DiffusionRig-EMO model was trained with:
    ``(code, image in [0, 1], crop_transform) -> (B, D)``."""
    from emorig.emotion.crops import code_expression_input, face_crops

    if model.config.expression_source == "code":

        def from_code(code: FaceCode, image: Tensor, crop: Tensor) -> Tensor:
            return code_expression_input({"expression": code.expression, "jaw_pose": code.jaw_pose})

        return from_code
    from emorig.emotion.recognizers import load_recognizer

    if recognizer is None:
        raise EmorigError("this model reads emotion features: give --recognizer")
    net = load_recognizer(recognizer, device=device).requires_grad_(False)
    if int(net.feature_dim) != model.config.expression_input_dim:
        raise EmorigError(
            f"--recognizer {recognizer} gives {net.feature_dim}-d features; the model was "
            f"trained on {model.config.expression_input_dim}-d ones"
        )

    def from_image(code: FaceCode, image: Tensor, crop: Tensor) -> Tensor:
        with torch.no_grad():
            return net(face_crops(image, crop.to(image.device))).features.float()

    return from_image


#: Settings of the code-space predictor that emotion edits use (:func:`train_code_predictor`).
CODE_PREDICTOR_SETTINGS = {"steps": 400, "batch_size": 128, "seed": 0, "hidden": 256}


def code_predictor_key(renderer, head: str, settings: dict | None = None) -> dict:
    """What a trained code-space predictor depends on: the head (name and tensors), the
    training settings and seed, the code that trains it and the torch version."""
    import emorig.emotion.emodeca as emodeca
    import emorig.emotion.presets as presets
    import emorig.flame.model as flame_model
    import emorig.synth.sampling as sampling
    from emorig.edit.predictor_cache import source_fingerprint, tensor_fingerprint

    return {
        "head": head,
        "head_tensors": tensor_fingerprint(renderer.flame),
        "settings": dict(CODE_PREDICTOR_SETTINGS if settings is None else settings),
        "code": source_fingerprint([train_code_predictor, emodeca, presets, sampling, flame_model]),
        "torch": torch.__version__.split("+")[0],
        "device": renderer.flame.v_template.device.type,  # numerics differ between devices
    }


def cached_code_predictor(
    renderer,
    head: str,
    device=None,
    say: Callable[[str], None] | None = None,
    settings: dict | None = None,
) -> CodeSpacePredictor:
    """The code-space predictor of :func:`train_code_predictor`, trained once and kept in
    the user's cache (:mod:`emorig.edit.predictor_cache`); later calls load it."""
    from emorig.edit.predictor_cache import cached_emodeca, entry_folder

    settings = dict(CODE_PREDICTOR_SETTINGS if settings is None else settings)
    key = code_predictor_key(renderer, head, settings)
    trained = []

    def train():
        if say is not None:
            say("training the code-space emotion predictor once (synthetic codes; cached)...")
        trained.append(True)
        return train_code_predictor(renderer, **settings).mlp

    mlp = cached_emodeca("code-predictor", key, train, say=say, device=device)
    if not trained and say is not None:
        say(
            f"using the cached code-space emotion predictor ({entry_folder('code-predictor', key)})"
        )
    info = {
        "kind": "codes",
        "head": head,
        "settings": settings,
        "cache": str(entry_folder("code-predictor", key)),
        "trained_now": bool(trained),
    }
    return CodeSpacePredictor(mlp, info=info)


def emotion_predictor(
    kind: str,
    renderer,
    head: str,
    recognizer: str | None,
    device,
    say: Callable[[str], None] | None = None,
    cache: bool = True,
) -> CodePredictor:
    """The predictor emotion edits and their evaluation use; its ``info`` says which.

    Args:
        kind: ``"codes"`` (an EmoDECA MLP trained on built-in-head codes, once: see
            :func:`cached_code_predictor`),
            ``"rendered"`` (``recognizer`` on renders of the code) or ``"auto"`` (codes on
            the built-in head, rendered otherwise).
        renderer: the head's renderer.
        head: the head's name (``"builtin"``, ``"flame2020"``, ...).
        recognizer: :func:`~emorig.emotion.recognizers.load_recognizer` spec for
            ``rendered``.
        device: where the predictor runs.
        say: told when the code-space predictor is being trained.
        cache: keep the code-space predictor in the user's cache (else train it here).
    """
    if kind == "auto":
        kind = "codes" if head == "builtin" else "rendered"
    if kind == "codes":
        if head != "builtin":
            raise EmorigError(
                "the code-space emotion predictor is trained on built-in-head codes; use "
                "--emotion-predictor rendered with --recognizer for FLAME heads"
            )
        if not cache:
            if say is not None:
                say("training the code-space emotion predictor (synthetic codes)...")
            predictor = train_code_predictor(renderer, **CODE_PREDICTOR_SETTINGS).to(device)
            predictor.info = {
                "kind": "codes",
                "head": head,
                "settings": dict(CODE_PREDICTOR_SETTINGS),
            }
            return predictor
        return cached_code_predictor(renderer, head, device, say)
    from emorig.emotion.recognizers import load_recognizer

    if recognizer is None:
        raise EmorigError("--emotion-predictor rendered needs --recognizer")
    predictor = RenderedPredictor(renderer, load_recognizer(recognizer, device=device))
    predictor.info = {"kind": "rendered", "recognizer": recognizer}
    return predictor

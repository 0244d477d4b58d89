"""EmoDECA: emotion from a frozen reconstructor's FLAME codes (EMOCA's evaluation protocol).

EMOCA (Danecek et al. 2022, Sec. 5.2) measures how much emotion a reconstruction keeps by
training a small network on the *codes* of a frozen reconstructor and reporting the AffectNet
metrics of :mod:`emorig.emotion.metrics`. Upstream (``gdl/models/EmoDECA.py``, ``MLP.py``,
``EmotionRecognitionModuleBase.py``; config ``emodeca_coarse``):

* input: ``cat[identity (100), expression (50), jaw pose (3)]`` (global pose and detail code
  off), taken from the frozen encoder; no normalisation;
* MLP: 4 hidden layers of 2048, each ``Linear → BatchNorm1d → LeakyReLU(0.2)``, then one
  ``Linear`` to ``8 + 1 + 1`` outputs;
* heads: expression log-probabilities (``log_softmax``), valence and arousal with no
  activation;
* loss: expression NLL (no class balancing) plus ``v_mse``, ``a_mse``, ``va_lpcc`` and
  ``va_lccc`` (all weighted 1) under the ``'shake'`` scheme: every training step the four V/A
  weights are redrawn from U(0, 1) and normalised to sum 1 (:func:`va_term_weights`).
  Training: Adam, lr 1e-4, batch 64, expression-balanced sampling, 50 epochs, early stop 10.

Here the MLP takes a :class:`~emorig.types.FaceCode` (or the feature vector of
:func:`codes_to_features`), returns an :class:`~emorig.types.EmotionOutput` whose ``features``
are the last hidden layer, and is saved as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emorig.emotion.base import EmotionRecognizer
from emorig.io.model_folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    FolderFormat,
    load_model_folder,
    save_model_folder,
)
from emorig.types import EMOTION_CLASSES, EmotionOutput, FaceCode

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "VA_TERMS",
    "WEIGHTS_NAME",
    "EmoDecaConfig",
    "EmoDecaLoss",
    "EmoDecaMLP",
    "EmoDecaRecognizer",
    "codes_to_features",
    "emodeca_loss",
    "load_emodeca",
    "save_emodeca",
    "va_term_weights",
]

FORMAT_NAME = "emorig-emodeca"
FORMAT_VERSION = 1
_FORMAT = FolderFormat(FORMAT_NAME, FORMAT_VERSION)

#: The V/A loss terms of EMOCA's config, in its order (v_loss, a_loss, va_loss keys).
VA_TERMS = ("v_mse", "a_mse", "va_lpcc", "va_lccc")


@dataclass(frozen=True)
class EmoDecaConfig:
    """Which code parts feed the MLP and its size (defaults: EMOCA's released EmoDECA).

    Attributes:
        use_identity: the first ``n_shape`` identity coefficients.
        use_expression: the first ``n_expression`` expression coefficients.
        use_global_pose: the head rotation (3).
        use_jaw_pose: the jaw rotation (3).
        use_detail: DECA's detail code (``n_detail``).
        n_shape, n_expression, n_detail: how many coefficients are taken.
        hidden: width of every hidden layer.
        layers: number of hidden layers.
        negative_slope: LeakyReLU slope.
        n_classes: expression classes (AffectNet's 8, :data:`EMOTION_CLASSES`).
    """

    use_identity: bool = True
    use_expression: bool = True
    use_global_pose: bool = False
    use_jaw_pose: bool = True
    use_detail: bool = False
    n_shape: int = 100
    n_expression: int = 50
    n_detail: int = 128
    hidden: int = 2048
    layers: int = 4
    negative_slope: float = 0.2
    n_classes: int = len(EMOTION_CLASSES)

    @property
    def in_features(self) -> int:
        """Length of the :func:`codes_to_features` vector (EMOCA default: 100 + 50 + 3 = 153)."""
        return (
            self.n_shape * self.use_identity
            + self.n_expression * self.use_expression
            + 3 * self.use_global_pose
            + 3 * self.use_jaw_pose
            + self.n_detail * self.use_detail
        )


def codes_to_features(code: FaceCode, config: EmoDecaConfig | None = None) -> Tensor:
    """The MLP input: the chosen code parts concatenated in EMOCA's order.

    Order: identity ``shape[:, :n_shape]``, ``expression[:, :n_expression]``, ``global_pose``,
    ``jaw_pose``, ``detail`` (each only when enabled).

    Args:
        code: a batch of face codes.
        config: which parts (default :class:`EmoDecaConfig`).

    Returns:
        (B, config.in_features) tensor.

    Raises:
        ValueError: a code has fewer coefficients than asked for, or no detail code.
    """
    config = config or EmoDecaConfig()
    parts = []
    if config.use_identity:
        parts.append(_first(code.shape, config.n_shape, "identity"))
    if config.use_expression:
        parts.append(_first(code.expression, config.n_expression, "expression"))
    if config.use_global_pose:
        parts.append(code.global_pose)
    if config.use_jaw_pose:
        parts.append(code.jaw_pose)
    if config.use_detail:
        if code.detail is None:
            raise ValueError("this EmoDECA uses the detail code, but the face code has none")
        parts.append(_first(code.detail, config.n_detail, "detail"))
    if not parts:
        raise ValueError("EmoDECA needs at least one code part")
    return torch.cat(parts, dim=1)


def _first(values: Tensor, n: int, what: str) -> Tensor:
    if values.shape[-1] < n:
        raise ValueError(f"the code has {values.shape[-1]} {what} coefficients; EmoDECA uses {n}")
    return values[:, :n]


class EmoDecaMLP(nn.Module):
    """EMOCA's EmoDECA head: code features -> 8 expression log-probabilities, valence, arousal.

    ``layers`` x (``Linear → BatchNorm1d → LeakyReLU``) of width ``hidden``, then one
    ``Linear(hidden, n_classes + 2)``; the first ``n_classes`` outputs go through
    ``log_softmax``, the last two are valence and arousal (no activation, as in EMOCA, so
    they are not clamped to [-1, 1]).

    Args:
        config: inputs and sizes.
    """

    def __init__(self, config: EmoDecaConfig | None = None):
        super().__init__()
        self.config = config = config or EmoDecaConfig()
        if config.in_features <= 0 or config.layers < 1 or config.hidden < 1:
            raise ValueError(f"invalid EmoDECA configuration {config}")
        blocks: list[nn.Module] = []
        width = config.in_features
        for _ in range(config.layers):
            blocks += [
                nn.Linear(width, config.hidden),
                nn.BatchNorm1d(config.hidden),
                nn.LeakyReLU(config.negative_slope),
            ]
            width = config.hidden
        self.hidden = nn.Sequential(*blocks)
        self.head = nn.Linear(config.hidden, config.n_classes + 2)

    @property
    def feature_dim(self) -> int:
        return self.config.hidden

    def forward(self, code: FaceCode) -> EmotionOutput:
        """Predict emotion from face codes.

        Args:
            code: a batch of B face codes (B >= 2 in training mode, for BatchNorm).

        Returns:
            logits (B, 8) log-probabilities, valence_arousal (B, 2), features (B, hidden).
        """
        return self.forward_features(codes_to_features(code, self.config))

    def forward_features(self, x: Tensor) -> EmotionOutput:
        """Like :meth:`forward` from (B, in_features) :func:`codes_to_features` vectors."""
        if x.ndim != 2 or x.shape[1] != self.config.in_features:
            raise ValueError(
                f"expected (B, {self.config.in_features}) features, got {tuple(x.shape)}"
            )
        features = self.hidden(x)
        out = self.head(features)
        n = self.config.n_classes
        return EmotionOutput(
            logits=F.log_softmax(out[:, :n], dim=1),
            valence_arousal=out[:, n : n + 2],
            features=features,
        )


class EmoDecaRecognizer(EmotionRecognizer):
    """A frozen reconstructor followed by an :class:`EmoDecaMLP`: crops -> emotion.

    Args:
        encoder: a module with ``encode(images) -> FaceCode`` taking (B, 3, 224, 224) DECA
            crops in [0, 1] (e.g. :class:`emorig.reconstruct.deca.DecaModel`); frozen here.
        mlp: the trained head.
        name: shown in reports.
    """

    input_size = 224
    predicts_va = True

    def __init__(self, encoder: nn.Module, mlp: EmoDecaMLP, name: str = "EmoDECA"):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.mlp = mlp
        self.name = name
        self.feature_dim = mlp.feature_dim

    def train(self, mode: bool = True) -> EmoDecaRecognizer:
        super().train(mode)
        self.encoder.eval()  # the reconstructor stays frozen (BatchNorm statistics included)
        return self

    def forward(self, images: Tensor) -> EmotionOutput:
        """(B, 3, H, W) RGB crops in [0, 1] (resized to 224 if needed) -> emotion."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            code = self.encoder.encode(images)
        return self.mlp(code)


# ---------------------------------------------------------------------------------------------
# Loss.


@dataclass(frozen=True)
class EmoDecaLoss:
    """The EmoDECA objective and its terms (scalars).

    Attributes:
        total: ``expression_nll + Σ_k w_k · term_k`` over :data:`VA_TERMS`.
        expression_nll: mean NLL of the labelled class.
        v_mse, a_mse: mean squared valence / arousal error.
        va_lpcc: ``1 − (PCC_v + PCC_a) / 2``.
        va_lccc: ``1 − (CCC_v + CCC_a) / 2``.
        weights: the V/A term weights used this step, in :data:`VA_TERMS` order.
    """

    total: Tensor
    expression_nll: Tensor
    v_mse: Tensor
    a_mse: Tensor
    va_lpcc: Tensor
    va_lccc: Tensor
    weights: tuple[float, float, float, float]


def va_term_weights(
    scheme: str = "shake",
    training: bool = True,
    generator: torch.Generator | None = None,
    base: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> tuple[float, float, float, float]:
    """Weights of the V/A terms (:data:`VA_TERMS`) for one step (EMOCA's
    ``_get_step_loss_weights``).

    * ``"shake"``: in training, each weight is drawn from U(0, 1) and the four are divided by
      their sum; outside training the ``base`` weights are used unchanged (as upstream).
    * ``"norm"``: ``base`` divided by its sum.
    * ``"none"``: ``base``.

    Args:
        scheme: ``"shake"``, ``"norm"`` or ``"none"``.
        training: whether this is a training step.
        generator: the random source for ``"shake"`` (no global RNG state is used when given).
        base: configured weights (EMOCA: all 1).
    """
    if scheme not in ("shake", "norm", "none"):
        raise ValueError(f"V/A loss scheme {scheme!r}; choose shake, norm or none")
    if scheme == "shake" and training:
        draw = torch.rand(len(VA_TERMS), generator=generator, dtype=torch.float64)
        return tuple(float(w) for w in draw / draw.sum())  # type: ignore[return-value]
    if scheme == "norm":
        total = sum(base)
        return tuple(w / total for w in base)  # type: ignore[return-value]
    return tuple(float(w) for w in base)  # type: ignore[return-value]


def _pcc_torch(x: Tensor, y: Tensor, eps: float) -> Tensor:
    # EMOCA's PCC_torch: Bessel-corrected covariance over unbiased stds (= Pearson's r).
    dx, dy = x - x.mean(), y - y.mean()
    cov = (dx * dy).sum() / (x.shape[0] - 1)
    return cov / (x.std() * y.std()).clamp_min(eps)


def _ccc_torch(x: Tensor, y: Tensor, eps: float) -> Tensor:
    # EMOCA's CCC_torch: 2 ρ σ_x σ_y / (σ_x² + σ_y² + (μ_x − μ_y)²) with unbiased σ.
    sx, sy = x.std(), y.std()
    r = _pcc_torch(x, y, eps)
    return 2.0 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2).clamp_min(eps)


def emodeca_loss(
    output: EmotionOutput,
    expression: Tensor,
    valence_arousal: Tensor,
    generator: torch.Generator | None = None,
    *,
    scheme: str = "shake",
    training: bool = True,
    class_weight: Tensor | None = None,
    eps: float = 1e-8,
) -> EmoDecaLoss:
    """EMOCA's EmoDECA training loss (``EmotionRecognitionBaseModule._compute_loss``).

    ``L = NLL(log p, y) + w_1 MSE_v + w_2 MSE_a + w_3 (1 − (PCC_v + PCC_a)/2)
    + w_4 (1 − (CCC_v + CCC_a)/2)`` with ``w`` from :func:`va_term_weights`. PCC and CCC are
    EMOCA's batch versions (unbiased standard deviations); ``eps`` only guards a constant batch
    (where upstream returns NaN) and does not change other values.

    Args:
        output: the model's prediction; ``logits`` (B, C) log-probabilities and
            ``valence_arousal`` (B, 2).
        expression: (B,) int64 labelled class indices.
        valence_arousal: (B, 2) labelled valence and arousal.
        generator: random source for the ``'shake'`` weights.
        scheme: ``"shake"`` (EMOCA), ``"norm"`` or ``"none"``.
        training: False gives the unshaken weights (validation).
        class_weight: (C,) NLL class weights; None = EMOCA's unbalanced loss.
        eps: lower bound of the correlation denominators.

    Returns:
        :class:`EmoDecaLoss` (``total`` is differentiable).
    """
    if output.valence_arousal is None:
        raise ValueError("the EmoDECA loss needs valence/arousal predictions")
    pred = output.valence_arousal
    if pred.shape != valence_arousal.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(
            f"valence/arousal shapes differ: {tuple(pred.shape)} vs {tuple(valence_arousal.shape)}"
        )
    if pred.shape[0] < 2:
        raise ValueError("PCC/CCC terms need a batch of at least 2 samples")
    target = valence_arousal.to(pred.dtype)
    nll = F.nll_loss(output.logits, expression.long(), weight=class_weight)
    v_mse = F.mse_loss(pred[:, 0], target[:, 0])
    a_mse = F.mse_loss(pred[:, 1], target[:, 1])
    pcc_v, pcc_a = (_pcc_torch(pred[:, k], target[:, k], eps) for k in (0, 1))
    ccc_v, ccc_a = (_ccc_torch(pred[:, k], target[:, k], eps) for k in (0, 1))
    lpcc = 1.0 - 0.5 * (pcc_v + pcc_a)
    lccc = 1.0 - 0.5 * (ccc_v + ccc_a)
    w = va_term_weights(scheme, training, generator)
    total = nll + w[0] * v_mse + w[1] * a_mse + w[2] * lpcc + w[3] * lccc
    return EmoDecaLoss(total, nll, v_mse, a_mse, lpcc, lccc, w)


# ---------------------------------------------------------------------------------------------
# Files.

_ARCHITECTURES = {"EmoDecaMLP": (EmoDecaMLP, EmoDecaConfig)}


def save_emodeca(model: EmoDecaMLP, folder: str | os.PathLike[str]) -> Path:
    """Write ``folder/config.json`` (format, version, config, ``classes``) +
    ``folder/model.safetensors`` (:mod:`emorig.io.model_folder`).

    Both files are written atomically; the folder is created if needed.

    Returns:
        The folder.
    """
    if not isinstance(model, EmoDecaMLP):
        raise TypeError(f"expected an EmoDecaMLP, got {type(model).__name__}")
    extra = {"classes": list(EMOTION_CLASSES)}
    return save_model_folder(model, folder, _FORMAT, "EmoDecaMLP", extra=extra)


def load_emodeca(
    folder: str | os.PathLike[str], device: torch.device | str | None = None
) -> EmoDecaMLP:
    """Load a folder written by :func:`save_emodeca` (eval mode).

    Raises:
        AssetError: missing files, another format, a newer version, unknown settings or
            weights that do not match the configuration.
    """
    return cast(EmoDecaMLP, load_model_folder(folder, _FORMAT, _ARCHITECTURES, device=device))

"""EMOCA: DECA plus an expression encoder trained for emotion consistency.

EMOCA (radekd91/emoca, class ``ExpDECA`` in ``gdl/models/DECA.py``) keeps DECA's coarse
encoder frozen and adds ``E_expression``, a second ResNet-50 + MLP whose output replaces DECA's
expression. Shape, albedo, camera, light and (by default) both poses stay DECA's. Two options
of the EMOCA config also let it predict poses (``exp_deca_jaw_pose``, ``exp_deca_global_pose``);
its output is then ``[expression, global pose (if predicted), jaw pose (if predicted)]``:

=========================  ==========================  ================================
options                     E_expression output          taken from it
=========================  ==========================  ================================
neither (released models)   50                           expression
jaw                         50 + 3                       expression, jaw pose
global                      50 + 3                       expression, global pose
both                        50 + 6                       expression, global pose, jaw pose
=========================  ==========================  ================================

The released models use ``expression_backbone: deca_clone``: the expression encoder's ResNet
starts as a copy of the coarse encoder's (:meth:`EmocaModel.clone_backbone_from_coarse`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from emorig.reconstruct.backbones import BACKBONES
from emorig.reconstruct.deca import DecaConfig, DecaModel, ResnetEncoder
from emorig.types import FaceCode

__all__ = ["EmocaConfig", "EmocaModel"]


@dataclass(frozen=True)
class EmocaConfig(DecaConfig):
    """Sizes and options of an EMOCA model (DECA's fields plus the expression encoder's).

    Attributes:
        expression_backbone: trunk of the expression encoder, ``"resnet50"``.
        predicts_jaw_pose: EMOCA's ``exp_deca_jaw_pose`` (False in the released models).
        predicts_global_pose: EMOCA's ``exp_deca_global_pose`` (False in the released models).
    """

    expression_backbone: str = "resnet50"
    predicts_jaw_pose: bool = False
    predicts_global_pose: bool = False
    variant: str = "emoca"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.expression_backbone not in BACKBONES:
            raise ValueError(
                f"unknown expression backbone {self.expression_backbone!r}; "
                f"choose one of {BACKBONES}"
            )

    @property
    def n_expression_outputs(self) -> int:
        """Output size of the expression encoder: 50, 53 or 56."""
        return (
            self.n_expression
            + (3 if self.predicts_global_pose else 0)
            + (3 if self.predicts_jaw_pose else 0)
        )


class EmocaModel(DecaModel):
    """EMOCA: :class:`DecaModel` plus ``expression_encoder`` (EMOCA's ``E_expression``).

    Args:
        config: sizes and options; defaults to the released EMOCA (expression only).
    """

    config: EmocaConfig

    def __init__(self, config: EmocaConfig | None = None):
        config = config if config is not None else EmocaConfig()
        if not isinstance(config, EmocaConfig):
            raise TypeError(f"EmocaModel needs an EmocaConfig, got {type(config).__name__}")
        super().__init__(config)
        self.expression_encoder = ResnetEncoder(
            config.n_expression_outputs,
            config.expression_backbone,
            width=config.backbone_width,
            hidden=config.head_hidden,
        )

    def clone_backbone_from_coarse(self) -> None:
        """Copy the coarse encoder's trunk weights into the expression encoder's trunk
        (EMOCA's ``deca_clone`` initialisation; the expression head is left as it is)."""
        if self.config.expression_backbone != self.config.backbone:
            raise ValueError(
                f"cannot clone a {self.config.backbone} trunk into a "
                f"{self.config.expression_backbone} expression encoder"
            )
        self.expression_encoder.encoder.load_state_dict(self.coarse_encoder.encoder.state_dict())

    def expression_parameters(self, images: Tensor) -> Tensor:
        """(B, 3, 224, 224) in [0, 1] -> (B, 50|53|56) raw expression-encoder output."""
        return self.expression_encoder(images)

    def encode(self, images: Tensor) -> FaceCode:
        """DECA's code with EMOCA's expression (and poses, when configured).

        Args:
            images: (B, 3, 224, 224) float RGB in [0, 1], DECA's crop, no normalisation.

        Returns:
            FaceCode as :meth:`DecaModel.encode`, with ``expression`` (and ``jaw_pose`` /
            ``global_pose`` if the config says so) from the expression encoder.
        """
        code = super().encode(images)
        out = self.expression_parameters(images)
        n = self.config.n_expression
        changes = {"expression": out[:, :n]}
        rest = out[:, n:]
        if self.config.predicts_global_pose:
            changes["global_pose"] = rest[:, :3]
            rest = rest[:, 3:]
        if self.config.predicts_jaw_pose:
            changes["jaw_pose"] = rest[:, :3]
        return code.replace(**changes)

"""DiffusionRig-EMO's additions to diffusion training: the expression encoder's input and the
emotion-consistency loss on the model's predicted clean image.

Expression input (``expression_source``):

* ``"code"``: the FLAME expression coefficients and jaw rotation the buffers were rendered
  with (``code.expression`` ++ ``code.jaw_pose``). Available for any edit (a target photo's
  code, or a code found for a requested emotion), so editing stays consistent with training.
* ``"emotion"``: the emotion recogniser's pooled features of the face crop of the image
  (EMOCA's ``emo_feat_2``). Carries appearance cues the FLAME code misses (wrinkles, eye
  squint), but at edit time needs an image that shows the wanted expression.

Emotion loss: ``L_emo = w · mean_i ᾱ(t_i) · mean_j (f(x̂0_i)_j − f(x_i)_j)²``, with ``f`` the
frozen recogniser on the DECA-style face crop (through the stored crop transform), ``x̂0``
the clean image predicted from the noise estimate (clipped to [-1, 1]) and ``ᾱ(t)`` the signal
fraction, which weights low-noise steps, where ``x̂0`` is sharp enough for a recogniser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from emorig.diffusion.pipeline import RigPipeline
from emorig.emotion.crops import code_expression_input, face_crops
from emorig.errors import EmorigError

__all__ = ["EmoTerms"]


@dataclass
class EmoTerms:
    """The expression input and emotion loss of a run (all inert for plain DiffusionRig)."""

    expression_dim: int
    source: str
    weight: float
    recognizer: nn.Module | None

    @classmethod
    def build(cls, cfg: Any, device: torch.device) -> EmoTerms:
        recognizer = None
        needs = cfg.emotion_weight > 0 or (
            cfg.expression_dim > 0 and cfg.expression_source == "emotion"
        )
        if needs:
            from emorig.emotion.recognizers import load_recognizer

            recognizer = load_recognizer(cfg.recognizer, device=device)
            recognizer.requires_grad_(False)
        return cls(cfg.expression_dim, cfg.expression_source, cfg.emotion_weight, recognizer)

    def input_dim(self, code_fields: dict[str, tuple[int, ...]]) -> int:
        """Size of the raw expression input for the data's code layout."""
        if self.source == "emotion":
            assert self.recognizer is not None
            return int(self.recognizer.feature_dim)
        return int(code_fields["expression"][-1]) + int(code_fields["jaw_pose"][-1])

    def expression_input(self, batch: dict[str, Any]) -> Tensor | None:
        """(B, D) what the expression encoder reads for a batch, or None when it is off."""
        if not self.expression_dim:
            return None
        if self.source == "code":
            if "code" not in batch:
                raise EmorigError("code-based expression conditioning needs the data's codes")
            return code_expression_input(batch["code"])
        assert self.recognizer is not None
        with torch.no_grad():
            crops = face_crops(batch["image"], batch["crop_transform"])
            return self.recognizer(crops).features.float()

    def losses(
        self,
        batch: dict[str, Any],
        x_t: Tensor,
        t: Tensor,
        eps: Tensor,
        pipeline: RigPipeline,
    ) -> dict[str, Tensor]:
        """``{"emotion": L_emo}`` when the emotion loss is on, else ``{}``."""
        if self.weight <= 0:
            return {}
        assert self.recognizer is not None
        transform = batch["crop_transform"]
        x0 = pipeline.predicted_images(x_t, t, eps)
        generated = self.recognizer(face_crops(x0, transform)).features
        with torch.no_grad():
            reference = self.recognizer(face_crops(batch["image"], transform)).features
        per_item = (generated.float() - reference.float()).pow(2).mean(dim=1)
        signal = pipeline.signal_fraction(t, per_item)
        return {"emotion": self.weight * (signal * per_item).mean()}

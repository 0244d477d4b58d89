"""EMOCA's emotion-consistency loss in terms of an emotion recogniser (Daněček et al. 2022,
eq. 5): ``L = ||f(I) - f(R)||^2``, the recogniser's pooled features of a reference image I and
of a rendered or generated image R, mean over feature entries. The features of I carry no
gradient; R's do."""

from __future__ import annotations

from torch import Tensor

from emorig.emotion.base import EmotionRecognizer
from emorig.reconstruct.losses import emotion_consistency_loss


def emotion_consistency(
    recognizer: EmotionRecognizer,
    reference: Tensor,
    generated: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Emotion-feature MSE between two image batches.

    Args:
        recognizer: any :class:`EmotionRecognizer` (frozen by the caller).
        reference: (B, 3, H, W) images in [0, 1] (e.g. the photos); no gradient flows here.
        generated: (B, 3, H, W) images in [0, 1] (renders, or a diffusion model's x0).
        mask: optional (B, 1, H, W) face mask in [0, 1]; both images are multiplied by it
            (EMOCA compares the face on a black background).

    Returns:
        Scalar loss.
    """
    if reference.shape != generated.shape:
        raise ValueError(
            f"reference {tuple(reference.shape)} and generated {tuple(generated.shape)} differ"
        )
    if mask is not None:
        reference, generated = reference * mask, generated * mask
    return emotion_consistency_loss(
        recognizer(generated).features, recognizer(reference.detach()).features
    )

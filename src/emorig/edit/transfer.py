"""DiffusionRig's edits as operations on FLAME codes.

``transfer(source, target, mode)`` takes from the target:

* ``pose``: the head rotation (``global_pose``, DECA's ``pose[:, :3]``);
* ``exp``: the expression coefficients **and** the jaw rotation (DECA's ``pose[:, 3:]``);
* ``light``: the 9x3 spherical-harmonics light;
* ``latent``: nothing in the code (the global latent of the target image is used instead).

Everything else (identity, albedo, camera) stays the source's. After a pose edit the face is
re-centred (DiffusionRig's ``align_ffhq``): the edited head is translated so that its FFHQ
crop centre (eye centre + 0.1 x (mouth centre - eye centre), from the 68 3D landmarks) falls
where the source's does, so the face stays in place in the aligned image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emorig.edit.modes import edit_mode, face_mode_names, parse_modes
from emorig.errors import EmorigError
from emorig.types import FaceCode

__all__ = ["MODES", "ffhq_centre", "parse_modes", "recentre", "transfer", "with_mean_shape"]

#: The modes that take parameters from a target face, in DiffusionRig's order.
MODES = face_mode_names()

# iBUG-68 indices: eyes 36-41 and 42-47, mouth corners 48 and 54.
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)
_MOUTH = (48, 54)


def transfer(source: FaceCode, target: FaceCode, mode: str) -> FaceCode:
    """The source's code with the ``mode`` parameters of the target (same batch size, or a
    target of batch 1 applied to every source); see :data:`~emorig.edit.modes.EDIT_MODES`."""
    return edit_mode(mode).apply(source, target)


def with_mean_shape(code: FaceCode, mean_shape: Tensor | None) -> FaceCode:
    """Replace the identity by an album's mean shape (DiffusionRig stage 2), if given."""
    if mean_shape is None:
        return code
    mean = torch.as_tensor(mean_shape).to(code.shape).reshape(1, -1)
    if mean.shape[1] != code.shape.shape[1]:
        raise EmorigError(
            f"the mean shape has {mean.shape[1]} coefficients, the codes {code.shape.shape[1]}"
        )
    return code.replace(shape=mean.expand_as(code.shape).clone())


def ffhq_centre(landmarks: Tensor) -> Tensor:
    """(B, 68, D) landmarks -> (B, D) FFHQ crop centre: ``e + 0.1 (m - e)`` with ``e`` the
    mean of both eye centres and ``m`` the mean of the mouth corners."""
    eyes = 0.5 * (landmarks[:, _LEFT_EYE].mean(1) + landmarks[:, _RIGHT_EYE].mean(1))
    mouth = 0.5 * (landmarks[:, _MOUTH[0]] + landmarks[:, _MOUTH[1]])
    return eyes + 0.1 * (mouth - eyes)


def recentre(renderer, source: FaceCode, edited: FaceCode) -> FaceCode:
    """``edited`` translated so its FFHQ centre (world x, y) matches ``source``'s.

    For DECA's orthographic camera ``x' = s (x + tx)``, ``y' = -s (y + ty)``, translating the
    head by ``d`` in x/y equals adding ``d`` to ``(tx, ty)``.
    """
    with torch.no_grad():
        a = renderer.geometry(source).landmarks3d
        b = renderer.geometry(edited).landmarks3d
    if a is None or b is None:
        raise EmorigError("re-centring needs the head's 68-landmark embedding")
    shift = (ffhq_centre(a) - ffhq_centre(b))[:, :2]
    camera = edited.camera.clone()
    camera[:, 1:] = camera[:, 1:] + shift.to(camera)
    return edited.replace(camera=camera)

"""The three ways ``emorig edit`` can make an edit, behind one interface.

* ``diffusion``: DiffusionRig's sampling under the edited buffers
  (:class:`~emorig.edit.pipeline.Editor`);
* ``warp``: the photo's own pixels moved by the fitted 3D face (:func:`~emorig.edit.warp.
  warp_edit`), no model;
* ``warp+diffusion``: the warped image taken part of the way back to noise (``strength``) and
  denoised under the edited buffers (SDEdit, :meth:`~emorig.diffusion.pipeline.RigPipeline.
  refine`; with ``invert`` the noise level is reached by DDIM inversion), then composited
  into the warped image with a soft mask of the face.

:class:`WarpEditor` edits prepared items (aligned images at the model's size, as evaluation
and the prepared-folder path of ``emorig edit`` use) with the same ``edit`` / ``sample_codes``
/ ``source_code`` calls as :class:`~emorig.edit.pipeline.Editor`, so both plug into the same
loops. :func:`refine_photo` applies the diffusion step to a full-resolution warped photo and
pastes the result back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.edit.modes import edit_mode
from emorig.edit.pipeline import Editor, EditResult, FaceItem
from emorig.edit.transfer import recentre
from emorig.errors import EmorigError
from emorig.types import FaceCode

__all__ = ["METHODS", "WarpEditor", "paste_back", "refine_photo", "soft_face_mask"]

#: ``--method`` choices.
METHODS = ("diffusion", "warp", "warp+diffusion")

#: Half-width of the soft edge of the refined face region, as a share of the image side.
_FEATHER = 0.04


def _to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _from_uint8(image: np.ndarray, device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float() / 255


def soft_face_mask(alpha: Tensor, feather: float = _FEATHER) -> Tensor:
    """(B, 1, S, S) a soft version of a rendered face's alpha: grown by ``feather`` x S and
    blurred over as much, so a refined face blends into the warped photo without a seam."""
    s = alpha.shape[-1]
    r = max(1, round(feather * s))
    grown = F.max_pool2d(alpha.float(), 2 * r + 1, stride=1, padding=r)
    k = 2 * r + 1
    blurred = F.avg_pool2d(F.pad(grown, (r, r, r, r), mode="replicate"), k, stride=1)
    return blurred.clamp(0, 1)


class WarpEditor:
    """Edits of prepared items by warping their images (``warp``), optionally refined by a
    diffusion :class:`~emorig.edit.pipeline.Editor` (``warp+diffusion``).

    Args:
        renderer: the head's :class:`~emorig.render.face.FaceRenderer`.
        refiner: the diffusion editor for ``warp+diffusion`` (its model, timesteps, seed and
            expression input are used), or None for ``warp``.
        strength: share of the DDIM steps re-run on the warped image (``warp+diffusion``).
        invert: reach that noise level by DDIM inversion instead of fresh noise.
        recentre_pose: keep the face in place under pose edits (as the diffusion editor).
    """

    def __init__(
        self,
        renderer,
        *,
        refiner: Editor | None = None,
        strength: float = 0.5,
        invert: bool = False,
        recentre_pose: bool = True,
    ):
        if not 0.0 <= strength <= 1.0:
            raise EmorigError(f"--strength {strength}: give a value in [0, 1]")
        self.renderer, self.refiner = renderer, refiner
        self.strength, self.invert, self.recentre_pose = strength, invert, recentre_pose
        # what evaluation records of an editor
        self.timesteps = refiner.timesteps if refiner is not None else None
        self.mean_shape = None
        self.seed = refiner.seed if refiner is not None else 0

    @property
    def method(self) -> str:
        return "warp" if self.refiner is None else "warp+diffusion"

    @property
    def device(self) -> torch.device:
        return next(self.renderer.buffers()).device

    def source_code(self, source: FaceItem) -> FaceCode:
        """The code the warp starts from: the fitted one (the pixels belong to that face, so
        an album mean shape is not used here)."""
        return source.code.to(self.device)

    def render(self, code: FaceCode, crop_transform: Tensor, size: int):
        """:class:`~emorig.types.RenderBuffers` of ``code`` on the S x S aligned images."""
        from emorig.render.conditions import render_conditions

        return render_conditions(self.renderer, code.to(self.device), crop_transform, size)

    def warp_items(self, source: FaceItem, code: FaceCode) -> Tensor:
        """(B, 3, S, S) the sources' images warped from their own code to ``code``."""
        from emorig.edit.warp import warp_edit

        base = self.source_code(source)
        code = code.to(self.device)
        out = []
        for i in range(source.image.shape[0]):
            matrix = source.crop_transform[i].detach().cpu().numpy()
            edit = warp_edit(
                _to_uint8(source.image[i]), matrix, self.renderer, base[i : i + 1], code[i : i + 1]
            )
            out.append(_from_uint8(edit.image, self.device))
        warped = torch.stack(out)
        if self.refiner is None:
            return warped
        return self.refine_items(source, warped, code)

    @torch.no_grad()
    def refine_items(self, source: FaceItem, warped: Tensor, code: FaceCode) -> Tensor:
        """``warped`` (B, 3, S, S) re-noised to ``strength`` and denoised under ``code``'s
        buffers, composited into ``warped`` with the face's soft mask."""
        return self._refine(source, warped, code)[0]

    def _refine(self, source: FaceItem, warped: Tensor, code: FaceCode) -> tuple[Tensor, Tensor]:
        """:meth:`refine_items` and the (B, 1, S, S) soft mask it composited with (one render
        of ``code`` gives both the model's condition and the mask)."""
        ed = self.refiner
        if ed is None:
            raise EmorigError("warp+diffusion needs a diffusion model (--model)")
        size = ed.pipeline.image_size
        if warped.shape[-1] != size:
            raise EmorigError(f"the model works at {size} px; the images are {warped.shape[-1]}")
        crop = source.crop_transform
        buffers = self.render(code, crop, size)
        condition = ed.model.condition_tensor(buffers).to(ed.device)
        latent = ed.pipeline.encode_latent(source.image.to(ed.device))
        expression = ed._expression(code, warped, crop)
        refined = ed.pipeline.refine(
            warped, condition, latent, expression, strength=self.strength,
            timesteps=ed.timesteps, invert=self.invert, seed=ed.seed,
        )  # fmt: skip
        mask = soft_face_mask(buffers.mask).to(refined)
        return mask * refined + (1 - mask) * warped.to(refined), mask

    def _mode_code(self, base: FaceCode, target: FaceItem, name: str) -> FaceCode:
        mode = edit_mode(name)
        if mode.target_latent:
            raise EmorigError(
                f"the {name} mode swaps the model's global latent: --method diffusion"
            )
        code = mode.apply(base, target.code.to(self.device))
        if mode.recentre and self.recentre_pose:
            code = recentre(self.renderer, base, code)
        return code

    @torch.no_grad()
    def edit(self, source: FaceItem, target: FaceItem, modes: Sequence[str]) -> EditResult:
        """Like :meth:`Editor.edit`: every source once per mode; ``reconstruction`` is the
        unedited path (the image itself for ``warp``; refined under its own code otherwise)."""
        base = self.source_code(source)
        size = source.image.shape[-1]
        images, buffers, codes = {}, {}, {}
        for name in modes:
            code = self._mode_code(base, target, name)
            images[name] = self.warp_items(source, code)
            buffers[name] = self.render(code, source.crop_transform, size).rendered
            codes[name] = code
        own = source.image.to(self.device)
        if self.refiner is not None:
            own = self.refine_items(source, own, base)
        return EditResult(
            images, buffers, codes, own,
            self.render(base, source.crop_transform, size).rendered,
            self.render(target.code, target.crop_transform, size).rendered,
        )  # fmt: skip

    @torch.no_grad()
    def sample_codes(self, source: FaceItem, codes: Sequence[FaceCode]) -> list[Tensor]:
        """The sources warped to each of ``codes`` (e.g. an emotion sweep)."""
        return [self.warp_items(source, code) for code in codes]


def paste_back(photo: np.ndarray, aligned: Tensor, mask: Tensor, matrix: np.ndarray) -> np.ndarray:
    """Blend an aligned S x S image into the photo it was cut from.

    Args:
        photo: (H, W, 3) uint8.
        aligned: (3, S, S) in [0, 1].
        mask: (1, S, S) in [0, 1], where ``aligned`` replaces the photo.
        matrix: (3, 3) photo pixels -> aligned pixels.

    Returns:
        (H, W, 3) uint8: the photo with the masked aligned image resampled into it (bilinear,
        over the mask's bounding box only; elsewhere the photo's pixels, unchanged).
    """
    h, w = photo.shape[:2]
    s = aligned.shape[-1]
    inverse = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    ys, xs = torch.nonzero(mask[0] > 1e-3, as_tuple=True)
    if ys.numel() == 0:
        return photo.copy()
    corners = np.array(
        [
            [float(x), float(y), 1.0]
            for x in (xs.min(), xs.max() + 1)
            for y in (ys.min(), ys.max() + 1)
        ]
    )
    box = corners @ inverse.T
    x0, y0 = (max(0, int(np.floor(box[:, i].min()))) for i in (0, 1))
    x1, y1 = min(w, int(np.ceil(box[:, 0].max()))), min(h, int(np.ceil(box[:, 1].max())))
    if x1 <= x0 or y1 <= y0:
        return photo.copy()
    gy, gx = torch.meshgrid(
        torch.arange(y0, y1, dtype=torch.float64) + 0.5,
        torch.arange(x0, x1, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    m = torch.as_tensor(matrix, dtype=torch.float64)
    qx = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
    qy = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
    grid = torch.stack([qx / s * 2 - 1, qy / s * 2 - 1], -1)[None].to(aligned)
    stack = torch.cat([aligned, mask.to(aligned)], 0)[None]
    sampled = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    colour, alpha = sampled[0, :3], sampled[0, 3:4]
    out = photo.copy()
    region = torch.from_numpy(out[y0:y1, x0:x1]).to(aligned).permute(2, 0, 1) / 255
    blended = alpha * colour + (1 - alpha) * region
    out[y0:y1, x0:x1] = _to_uint8(blended)
    return out


def refine_photo(
    editor: WarpEditor,
    photo: np.ndarray,
    warped: np.ndarray,
    face,
    source: FaceCode,
    code: FaceCode,
) -> np.ndarray:
    """``warp+diffusion`` on a full photo: the warped photo aligned at the model's size as the
    model's training images were (FFHQ crop from the landmarks), refined
    (:meth:`WarpEditor.refine_items`) and pasted back into ``warped``.

    Args:
        editor: a :class:`WarpEditor` with a refiner.
        photo: (H, W, 3) uint8 the original photo (its global latent is the model's).
        warped: (H, W, 3) uint8 the warped photo.
        face: the photo's :class:`~emorig.faces.pipeline.AlignedFace` (DECA crop).
        source, code: (1, ...) the photo's code and the edited one.
    """
    from emorig.faces.align import ffhq_transform, warp

    if editor.refiner is None:
        raise EmorigError("warp+diffusion needs a diffusion model (--model)")
    size = editor.refiner.pipeline.image_size
    device = editor.device
    m = ffhq_transform(face.source_landmarks, size)
    crop = torch.as_tensor(face.matrix @ np.linalg.inv(m), dtype=torch.float32)[None]
    item = FaceItem(warp(photo, m, size, "ffhq", device)[None], source, crop, ("photo",))
    aligned = warp(warped, m, size, "ffhq", device)[None]
    refined, mask = editor._refine(item, aligned, code)
    return paste_back(warped, refined[0], mask[0], m)

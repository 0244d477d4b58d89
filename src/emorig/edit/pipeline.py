"""Editing photos with a trained conditional diffusion model.

For each source face (an item of a prepared folder: aligned image, FLAME code, crop
transform) and each mode, the source's code takes the target's pose / expression+jaw / light
(:mod:`emorig.edit.transfer`), the buffers are re-rendered through the source's crop, and the
model samples with DDIM (20 steps, eta 0 by default) conditioned on the edited buffers and the
source image's global latent (``latent`` mode: the source's buffers and the target's latent).

Starting noise: DiffusionRig samples every edit from one fixed Gaussian draw. With
``invert=True`` the source image is first DDIM-inverted under its own buffers and latent, and
every edit starts from that noise, so what the edit does not touch (background, hair,
clothes) stays much closer to the photo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from emorig.diffusion.model import RigModel
from emorig.diffusion.pipeline import RigPipeline
from emorig.edit.modes import edit_mode
from emorig.edit.transfer import recentre, with_mean_shape
from emorig.errors import EmorigError
from emorig.types import FaceCode

__all__ = ["EditResult", "Editor", "FaceItem", "items_from_dataset", "write_edits"]


@dataclass(frozen=True)
class FaceItem:
    """Faces ready to edit (batch B).

    Attributes:
        image: (B, 3, S, S) aligned photos in [0, 1].
        code: (B, ...) their FLAME codes (cameras of the 224 DECA crop).
        crop_transform: (B, 3, 3) image pixels -> crop pixels.
        names: one label per face (file stem or item name).
    """

    image: Tensor
    code: FaceCode
    crop_transform: Tensor
    names: tuple[str, ...]


def items_from_dataset(dataset, indices: Sequence[int]) -> FaceItem:
    """Items of a :class:`~emorig.data.dataset.BufferDataset` as one :class:`FaceItem`."""
    if not indices:
        raise EmorigError("no items selected")
    items = [dataset[i] for i in indices]
    code = dataset.code(list(indices))
    if dataset.mean_shape is not None:
        # Buffers of a mean-shape folder were rendered with the album identity.
        fitted = torch.stack([dataset.item(i, "shape_fitted") for i in indices])
        code = code.replace(shape=fitted)
    names = tuple(Path(it["source"]).stem for it in items)
    return FaceItem(
        torch.stack([it["image"] for it in items]),
        code,
        torch.stack([it["crop_transform"] for it in items]),
        names,
    )


@dataclass(frozen=True)
class EditResult:
    """Edits of one batch of sources.

    Attributes:
        images: mode -> (B, 3, S, S) edited images in [0, 1].
        buffers: mode -> (B, 3, S, S) the edited Lambertian render (for grids).
        codes: mode -> the edited codes.
        reconstruction: (B, 3, S, S) the source sampled under its own buffers from the
            starting noise (with ``invert``: how faithfully the inversion round-trips).
        source_buffer, target_buffer: (B, 3, S, S) / (1 or B, 3, S, S) their Lambertian
            renders (the target's through its own crop).
    """

    images: dict[str, Tensor]
    buffers: dict[str, Tensor]
    codes: dict[str, FaceCode]
    reconstruction: Tensor
    source_buffer: Tensor | None = None
    target_buffer: Tensor | None = None


#: ``(code, image (B, 3, S, S) in [0, 1], crop_transform (B, 3, 3)) -> (B, D)``.
ExpressionInput = Callable[[FaceCode, Tensor, Tensor], Tensor]


class Editor:
    """Sample edits from a :class:`RigModel` (through its :class:`RigPipeline`).

    Args:
        model: the diffusion model (eval mode is set here).
        renderer: the head's :class:`~emorig.render.face.FaceRenderer` (on the model's device).
        mean_shape: (1, S) album mean identity for personalised models (DiffusionRig stage 2)
            or None.
        timesteps: DDIM respacing, e.g. ``"ddim20"`` (DiffusionRig) or ``"ddim50"``.
        seed: seed of the fixed starting noise.
        invert: start from the DDIM inversion of each source instead of fixed noise (then
            samples are not clipped, so the unedited path retraces the inversion).
        invert_iterations: fixed-point refinements per inversion step (each costs one more
            model call per step; 2 brings the round trip close to exact).
        recentre_pose: keep the face in place under modes that move the head (DiffusionRig's
            align_ffhq).
        expression_input: for DiffusionRig-EMO models, the expression encoder's input from
            the edited code and the image showing the wanted expression
            (:func:`emorig.edit.emotion.expression_input_for`); None for plain models.
        progress: show DDIM progress bars.
    """

    def __init__(
        self,
        model: RigModel,
        renderer,
        *,
        mean_shape: Tensor | None = None,
        timesteps: str = "ddim20",
        seed: int = 0,
        invert: bool = False,
        invert_iterations: int = 2,
        recentre_pose: bool = True,
        expression_input: ExpressionInput | None = None,
        progress: bool = False,
    ):
        self.model = model.eval()
        self.pipeline = RigPipeline(self.model)
        self.renderer = renderer
        self.mean_shape = mean_shape
        self.timesteps = timesteps
        self.seed = seed
        self.invert = invert
        self.invert_iterations = invert_iterations
        self.recentre_pose = recentre_pose
        self.expression_input = expression_input
        self.progress = progress
        if model.config.expression_dim and expression_input is None:
            raise EmorigError("this model has an expression encoder: give expression_input")

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def buffers(self, code: FaceCode, crop_transform: Tensor) -> Tensor:
        """(B, C, S, S) the model's condition for ``code`` rendered through the crops."""
        from emorig.render.conditions import render_conditions

        size = self.pipeline.image_size
        out = render_conditions(self.renderer, code.to(self.device), crop_transform, size)
        return self.model.condition_tensor(out).to(self.device)

    def _expression(self, code: FaceCode, image: Tensor, crop: Tensor) -> Tensor | None:
        if self.expression_input is None:
            return None
        return self.expression_input(code.to(self.device), image.to(self.device), crop)

    def _start(self, source: FaceItem) -> _Start:
        """What every edit of ``source`` shares: latent, own buffers and starting noise."""
        size = self.pipeline.image_size
        if source.image.shape[-1] != size:
            raise EmorigError(
                f"the model works at {size} px; the faces are {source.image.shape[-1]} px "
                f"(prepare them with --size {size})"
            )
        image = source.image.to(self.device)
        latent = self.pipeline.encode_latent(image)
        base = self.source_code(source)
        cond = self.buffers(base, source.crop_transform)
        expression = self._expression(base, image, source.crop_transform)
        noise = self.pipeline.edit_start(
            image,
            cond,
            latent,
            expression,
            invert=self.invert,
            seed=self.seed,
            timesteps=self.timesteps,
            iterations=self.invert_iterations,
            progress=self.progress,
        )
        return _Start(image, latent, base, cond, expression, noise)

    def _sample(self, start: _Start, condition: Tensor, latent: Tensor, expression) -> Tensor:
        return self.pipeline.sample(
            start.noise,
            condition,
            latent,
            expression,
            timesteps=self.timesteps,
            clip=not self.invert,
            progress=self.progress,
        )

    def _edit_one(self, s: _Start, source: FaceItem, target: FaceItem, name: str):
        """(image, buffer, code) of one face mode (:data:`~emorig.edit.modes.EDIT_MODES`)."""
        mode = edit_mode(name)
        b = s.image.shape[0]
        code = mode.apply(s.code, target.code.to(self.device))
        if mode.recentre and self.recentre_pose:
            code = recentre(self.renderer, s.code, code)
        latent = s.latent
        if mode.target_latent:
            if target.image.shape[-1] != s.image.shape[-1]:
                raise EmorigError("source and target images differ in size")
            latent = self.pipeline.encode_latent(target.image).expand(b, -1)
        cond = s.condition if code is s.code else self.buffers(code, source.crop_transform)
        # An emotion-feature encoder reads the image showing the wanted expression.
        if mode.shows_target:
            shows = target.image.expand(b, -1, -1, -1)
            crop = target.crop_transform.expand(b, -1, -1)
            expression = self._expression(code, shows, crop)
        elif code is s.code:
            expression = s.expression
        else:
            expression = self._expression(code, s.image, source.crop_transform)
        return self._sample(s, cond, latent, expression), cond[:, :3], code

    @torch.no_grad()
    def edit(self, source: FaceItem, target: FaceItem, modes: Sequence[str]) -> EditResult:
        """Edit every source face with one target (batch 1, or the sources' batch), once per
        face mode of :data:`~emorig.edit.modes.EDIT_MODES`."""
        s = self._start(source)
        images, buffers, codes = {}, {}, {}
        for name in modes:
            images[name], buffers[name], codes[name] = self._edit_one(s, source, target, name)
        reconstruction = self._sample(s, s.condition, s.latent, s.expression)
        target_buffer = self.buffers(target.code.to(self.device), target.crop_transform)[:, :3]
        return EditResult(images, buffers, codes, reconstruction, s.condition[:, :3], target_buffer)

    @torch.no_grad()
    def sample_codes(self, source: FaceItem, codes: Sequence[FaceCode]) -> list[Tensor]:
        """Images of the sources re-rendered with each of ``codes`` (e.g. an intensity sweep
        of emotion edits); same starting noise and latent as :meth:`edit`."""
        s = self._start(source)
        out = []
        for code in codes:
            cond = self.buffers(code, source.crop_transform)
            expression = self._expression(code, s.image, source.crop_transform)
            out.append(self._sample(s, cond, s.latent, expression))
        return out

    def source_code(self, source: FaceItem) -> FaceCode:
        """The code edits start from (identity from the album mean shape when given)."""
        return with_mean_shape(source.code.to(self.device), self.mean_shape)


@dataclass(frozen=True)
class _Start:
    image: Tensor
    latent: Tensor
    code: FaceCode
    condition: Tensor
    expression: Tensor | None
    noise: Tensor


def write_edits(
    result: EditResult,
    source: FaceItem,
    target: FaceItem,
    out: str | Path,
    *,
    with_reconstruction: bool = False,
) -> list[Path]:
    """Write ``NAME_MODE.png`` per edit and ``NAME_grid.png`` (top: source | target | edits;
    bottom: the Lambertian buffers they were conditioned on). Returns the grid paths."""
    from emorig.io.images import contact_sheet, save_png, to_uint8

    out = Path(out)
    modes = list(result.images)
    grids = []
    for i, name in enumerate(source.names):
        t = 0 if target.image.shape[0] == 1 else i
        for mode in modes:
            save_png(result.images[mode][i], out / f"{name}_{mode}.png")
        top = [to_uint8(source.image[i]), to_uint8(target.image[t])]
        top += [to_uint8(result.images[m][i]) for m in modes]
        labels = ["source", "target", *modes]
        blank = np.zeros_like(top[0])
        bottom = [
            blank
            if result.source_buffer is None
            else to_uint8(result.source_buffer[i].clamp(0, 1)),
            blank
            if result.target_buffer is None
            else to_uint8(result.target_buffer[t].clamp(0, 1)),
        ]
        bottom += [to_uint8(result.buffers[m][i].clamp(0, 1)) for m in modes]
        if with_reconstruction:
            top.append(to_uint8(result.reconstruction[i]))
            bottom.append(bottom[0])
            labels.append("unedited")
        sheet = contact_sheet([top, bottom], row_labels=["image", "buffer"], column_labels=labels)
        grids.append(save_png(sheet, out / f"{name}_grid.png"))
    return grids

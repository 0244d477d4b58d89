"""The photometric stage of the face fit: albedo and light (optionally geometry) fitted so the
render matches the crops, see :func:`fit_photometric`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.optim.minimise import minimise
from emorig.reconstruct.fitting_common import FitResult
from emorig.render.face import FaceRenderer
from emorig.render.shading import sh_shading
from emorig.types import FaceCode

__all__ = ["PHOTOMETRIC_FIELDS", "fit_photometric"]

#: Code fields :func:`fit_photometric` can optimise.
PHOTOMETRIC_FIELDS = ("albedo", "light", "shape", "expression", "global_pose", "jaw_pose", "camera")
# Charbonnier epsilon of the colour difference: |d| ~ sqrt(d^2 + eps^2) - eps, smooth at 0.
_COLOUR_EPSILON = 1e-3
# Relative decrease below which an image's fit stops (see batched_lbfgs): the photometric
# objective is in colour units.
_PHOTOMETRIC_TOLERANCE = 1e-7


def _photometric_error(rendered: Tensor, image: Tensor, mask: Tensor, smooth: bool) -> Tensor:
    """(B,) mean absolute colour difference inside ``mask`` (B, 1, H, W)."""
    d = rendered - image
    d = torch.sqrt(d * d + _COLOUR_EPSILON**2) - _COLOUR_EPSILON if smooth else d.abs()
    area = mask.sum((1, 2, 3)).clamp_min(1.0) * image.shape[1]
    return (d * mask).sum((1, 2, 3)) / area


def _fields_to_fit(
    renderer: FaceRenderer,
    images: Tensor,
    code: FaceCode,
    mask: Tensor | None,
    optimise: Sequence[str],
) -> list[str]:
    """Check the inputs; the fields of ``optimise`` to fit, in :data:`PHOTOMETRIC_FIELDS`
    order (without ``albedo`` when the renderer has no albedo space)."""
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if code.batch_size != b:
        raise ValueError(f"code has batch {code.batch_size}, images {b}")
    if mask is not None and (mask.dim() != 4 or mask.shape != (b, 1, h, w)):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(b, 1, h, w)}")
    unknown = set(optimise) - set(PHOTOMETRIC_FIELDS)
    if unknown:
        raise ValueError(f"cannot optimise {sorted(unknown)}; choose from {PHOTOMETRIC_FIELDS}")
    fields = [f for f in PHOTOMETRIC_FIELDS if f in optimise]
    if renderer.n_albedo == 0 and "albedo" in fields:
        fields.remove("albedo")  # a constant grey albedo has nothing to fit
    return fields


def _resized(images: Tensor, mask: Tensor | None, size: int | None) -> tuple[Tensor, Tensor | None]:
    """Images and mask resized (antialiased) to ``size`` pixels on the shorter side."""
    h, w = images.shape[-2:]
    if size is not None and min(h, w) != size:
        factor = size / min(h, w)
        out_size = (max(1, round(h * factor)), max(1, round(w * factor)))
        images = F.interpolate(images, out_size, mode="bilinear", antialias=True)
        if mask is not None:
            mask = F.interpolate(mask.to(images.dtype), out_size, mode="bilinear", antialias=True)
    return images, mask


@dataclass(frozen=True)
class _PhotometricPriors:
    albedo: float
    light: float
    shape: float
    expression: float


class _PhotometricProblem:
    """The photometric objective of a batch: the code with the fitted fields replaced."""

    def __init__(
        self,
        renderer: FaceRenderer,
        images: Tensor,
        mask: Tensor | None,
        code: FaceCode,
        variables: dict[str, Tensor],
        priors: _PhotometricPriors,
    ):
        self.renderer, self.images, self.mask = renderer, images, mask
        self.code, self.variables, self.priors = code, variables, priors
        self.out_size = tuple(images.shape[-2:])

    def current(self) -> FaceCode:
        return self.code.replace(**self.variables)

    def rendered(self, code: FaceCode) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) render of ``code`` and (B, 1, H, W) its coverage."""
        buffers = self.renderer(code, self.out_size).buffers
        return buffers.rendered, buffers.mask

    def objective(self, smooth: bool = True) -> tuple[Tensor, Tensor]:
        """(B,) objective and (B,) colour error (smoothed or not) of the current code."""
        variables, priors, mask = self.variables, self.priors, self.mask
        c = self.current()
        rendered, covered = self.rendered(c)
        covered = covered if mask is None else covered * mask
        error = _photometric_error(rendered, self.images, covered.detach(), smooth)
        loss = error
        if "albedo" in variables:
            loss = loss + priors.albedo * (c.albedo**2).sum(-1)
        if "light" in variables:
            grey = c.light.mean(-1, keepdim=True)
            loss = loss + priors.light * ((c.light - grey) ** 2).mean((1, 2))
        if "shape" in variables:
            loss = loss + priors.shape * (c.shape**2).sum(-1)
        if "expression" in variables:
            loss = loss + priors.expression * (c.expression**2).sum(-1)
        return loss, error


class _ShadingProblem(_PhotometricProblem):
    """The photometric objective when only albedo and light move: the geometry is fixed, so
    the head is rasterized once and every evaluation only re-shades.

    The render is ``albedo(uv) * mask * sh_shading(normal, light) * mask``
    (:class:`~emorig.render.renderer.MeshRenderer`); the albedo texture is linear in the code
    and sampling it is linear in the texture, so the mean texture and every basis texture are
    sampled at the pixels' UVs once and an evaluation is one small product per pixel. The
    result equals the full render's to float rounding, at a fraction of its cost.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            buffers = self.renderer(self.code, self.out_size).buffers
            self.normal, self.pixel_mask = buffers.normal, buffers.mask
            u, v = buffers.uv[:, 0], buffers.uv[:, 1]
            grid = torch.stack([2 * u - 1, 1 - 2 * v], -1)  # (B, H, W, 2) grid-sample coords
            b = grid.shape[0]
            zero = self.code.replace(albedo=torch.zeros_like(self.code.albedo))
            mean = self.renderer.albedo_texture(zero).to(grid.dtype)
            self.mean = self._sample(mean, grid)  # (B, 3, H, W)
            self.basis = None
            model = self.renderer.albedo_model
            if model is not None and "albedo" in self.variables:
                t = self.code.albedo.shape[1]
                basis = model.basis[:t].to(grid.dtype)
                if basis.shape[-1] != model.output_size or basis.shape[-2] != model.output_size:
                    size = (model.output_size, model.output_size)
                    basis = F.interpolate(basis, size=size, mode="nearest")
                flat = basis.reshape(1, t * 3, *basis.shape[-2:]).expand(b, -1, -1, -1)
                self.basis = self._sample(flat, grid).view(b, t, 3, *grid.shape[1:3])

    @staticmethod
    def _sample(texture: Tensor, grid: Tensor) -> Tensor:
        return F.grid_sample(
            texture.expand(grid.shape[0], -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )

    def rendered(self, code: FaceCode) -> tuple[Tensor, Tensor]:
        mask = self.pixel_mask
        albedo = self.mean
        if self.basis is not None:
            albedo = albedo + torch.einsum("bk,bkchw->bchw", code.albedo.to(albedo), self.basis)
        shading = sh_shading(self.normal, code.light.to(albedo)) * mask
        return albedo * mask * shading, mask


def fit_photometric(
    renderer: FaceRenderer,
    images: Tensor,
    code: FaceCode,
    *,
    mask: Tensor | None = None,
    steps: int = 100,
    optimise: Sequence[str] = ("albedo", "light"),
    size: int | None = 112,
    albedo_weight: float = 1e-4,
    light_weight: float = 0.1,
    shape_weight: float = 1e-3,
    expression_weight: float = 1e-3,
    optimizer: str = "lbfgs",
    lr: float = 0.05,
    reuse_raster: bool = True,
) -> FitResult:
    """Fit albedo and light (optionally geometry) so the render matches the crops.

    The objective per image is the mean absolute colour difference between
    ``renderer(code).buffers.rendered`` and the image over the pixels covered by the rendered
    head (times ``mask``), smoothed at 0 (Charbonnier, epsilon 1e-3), plus
    ``albedo_weight |alpha|^2 + light_weight mean((l - mean_rgb(l))^2)`` (DECA's light prior,
    which favours white light) and, when optimised, ``shape_weight |beta|^2`` and
    ``expression_weight |psi|^2``. There are no silhouette gradients: the geometry only moves
    through shading and texture inside the rendered mask, so fit it from landmarks first.

    Args:
        renderer: the head to render (needs its albedo space to fit ``albedo``). Its buffers
            are not modified and receive no gradients.
        images: (B, 3, H, W) RGB crops in [0, 1], the crops ``code.camera`` refers to. Their
            dtype and device are those of the fit.
        code: the starting code, batch B (e.g. :func:`fit_landmarks`'s).
        mask: (B, 1, H, W) pixels to compare (e.g. a skin segmentation) in [0, 1], or None.
        steps: budget of objective evaluations (renders with a backward pass).
        optimise: which :class:`FaceCode` fields to fit, from :data:`PHOTOMETRIC_FIELDS`.
        size: render and compare at ``size`` pixels on the shorter side (images and mask are
            resized with antialiasing); None keeps the images' resolution.
        albedo_weight, light_weight, shape_weight, expression_weight: prior weights.
        optimizer: ``"lbfgs"`` (:func:`~emorig.optim.lbfgs.batched_lbfgs`), ``"torch-lbfgs"``
            or ``"adam"``.
        lr: Adam's learning rate.
        reuse_raster: when only albedo and light are optimised, rasterize once and only
            re-shade at each evaluation (same objective, several times faster); False renders
            the head at every evaluation, as any geometry field requires.

    Returns:
        :class:`FitResult` with ``photometric_error`` the final mean absolute colour error
        (unsmoothed) inside the mask at the fitting resolution; no landmark errors.

    Raises:
        ValueError: on malformed inputs or unknown fields.
    """
    start = time.perf_counter()
    fields = _fields_to_fit(renderer, images, code, mask, optimise)
    dtype, device = images.dtype, images.device
    images, mask = _resized(images.detach(), mask, size)
    code = code.to(device=device, dtype=dtype)
    variables = {f: getattr(code, f).detach().clone().requires_grad_(True) for f in fields}
    priors = _PhotometricPriors(albedo_weight, light_weight, shape_weight, expression_weight)
    shading_only = reuse_raster and set(fields) <= {"albedo", "light"}
    kind = _ShadingProblem if shading_only else _PhotometricProblem
    problem = kind(renderer, images, mask, code, variables, priors)
    history: list[float] = []
    evaluations = minimise(
        lambda: problem.objective()[0],
        list(variables.values()),
        steps,
        optimizer,
        lr,
        history,
        _PHOTOMETRIC_TOLERANCE,
    )
    with torch.no_grad():
        final = problem.current().detach()
        _, error = problem.objective(smooth=False)
    return FitResult(
        code=final,
        landmark_error=None,
        landmark_error_iod=None,
        photometric_error=error.detach(),
        history=tuple(history),
        steps=evaluations,
        seconds=time.perf_counter() - start,
    )

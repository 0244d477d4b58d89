"""Edit a photo at its own resolution by warping it with the fitted 3D face (``--method warp``).

No generative model: the photo's own pixels are moved, so identity, skin texture, hair and
background are kept exactly, at full resolution, in about a second.

How
---
1. **Dense backward flow.** The target mesh is rasterised in the photo's pixel frame, over
   the bounding box of the head (source and target) grown by the fall-off distance only.
   For every covered pixel the same surface point (face id + barycentrics) is taken on the
   source mesh and projected: that is where the output pixel samples the photo. The flow is
   piecewise linear over the mesh and exact at the mesh's landmarks.
2. **Flow outside the face.** Pixels the mesh does not cover (hair, ears beyond the fit, the
   background) get a membrane (harmonic) interpolation of the mesh flow
   (:mod:`emorig.edit.membrane`, a coarse-to-fine multigrid on a grid of at most
   ``_FLOW_GRID`` cells), pinned to zero at ``FALLOFF`` x the head's size from the mesh and
   rolled off with a smoothstep: no seam at the silhouette, no kink at the far edge, and
   every pixel beyond is the input's, bit for bit. Where the head leaves pixels (outside the
   target mesh but sampling where the source mesh was: the far cheek or chin of a turned or
   closing face) the smooth flow would drag face colours over the collar or background;
   those pixels are filled instead from the surrounding background by a membrane of its
   colours.
3. **Disocclusion.** A target pixel whose surface point was hidden in the source (the
   source does not show that face within a pixel of where the point projects, and the point
   lies a few millimetres behind the source's visible surface - or it is an eyeball/mouth
   part where the source shows a lid or lip) has nothing to sample. Hidden *skin* (the far
   cheek of a turned head, the underside of a lowered chin) takes the membrane flow of its
   neighbours: the nearby skin is stretched over it. In the **mouth**, teeth are rigid with
   their lip: a mouth pixel follows the skin flow of the upper face or of the jaw (its
   point's jaw weight decides), so the photo's own upper teeth stay under the upper lip and
   its lower teeth go down with the jaw; only where that lands outside the source's mouth
   opening (the gap a wider opening shows) and on newly shown eyeball is the interior
   **rendered**: the head's own albedo (teeth, cavity, sclera) shaded with the target light,
   colour-matched to the photo by a per-channel gain measured on visible frontal skin, and
   darkened towards the middle of the opening (little light reaches into a mouth). We render
   rather than inpaint because inpainting from the surrounding pixels smears lip colour into
   the opening (a pink blob), and we warp the lips and lower face with the jaw so the
   opening sits inside the photo's real lips - not a dark hole pasted over an unchanged
   mouth, the failure users reported.
4. **Relighting.** A ratio image ``S(n, L_target) / S(n, L_source)`` of DECA's SH shading
   on the target mesh's normals, clamped to ``RELIGHT_RANGE``, multiplies the warped photo
   on the face, smoothed (the head's facets are not the photo's) and feathered to 1 at the
   silhouette. The same SH gives exactly 1 (skipped).
5. **Composite.** The edited head region is blended into the photo with a soft mask (flow
   magnitude, relighting and fill); pixels outside it are copied unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.edit.membrane import chessboard_distance, downsample_known, membrane_fill, relax
from emorig.errors import EmorigError
from emorig.geometry.camera import CropTransform, ndc_to_pixels
from emorig.geometry.mesh import face_vertices, vertex_normals
from emorig.render.face import FaceRenderer
from emorig.render.interpolate import interpolate
from emorig.render.rasterize import rasterize
from emorig.render.shading import sh_shading
from emorig.types import FaceCode, Fragments

__all__ = [
    "EYE",
    "FALLOFF",
    "MOUTH",
    "RELIGHT_RANGE",
    "SKIN",
    "WarpEdit",
    "face_parts",
    "warp_edit",
]

#: Distance, as a share of the head's projected size, over which the flow decays to zero
#: outside the mesh.
FALLOFF = 0.3
#: Clamp of the relighting ratio image.
RELIGHT_RANGE = (0.3, 3.0)
#: A surface point is hidden in the source when it lies this far (metres) behind the
#: source's visible surface.
OCCLUSION_TOLERANCE = 0.004
#: The extended flow is solved on a grid of at most this many cells a side.
_FLOW_GRID = 160
#: Flow (pixels) and ratio deviation at which the composite mask reaches 1.
_MASK_FLOW = 0.25
_MASK_RATIO = 0.02
#: Scale of the relighting ratio's smoothing, share of the head's size.
_RELIGHT_SMOOTH = 0.03
#: Feathering of the relighting at the silhouette, share of the head's size.
_RELIGHT_FEATHER = 0.04
#: Share of the head's size over which the rendered fill's edge is softened.
_FILL_FEATHER = 0.004
#: Open mouths darken towards the middle: blur scale (share of the head's size) and the
#: darkest factor.
_MOUTH_SHADOW, _MOUTH_DARKEST = 0.03, 0.75
#: Colour gain between render and photo is clamped to this range.
_GAIN_RANGE = (0.4, 2.5)
#: Parts of the mesh (:func:`face_parts`).
SKIN, EYE, MOUTH = 0, 1, 2
# The built-in head's UV atlas puts skin above this v, eyeballs and mouth cavity below, the
# mouth right of this u.
_BUILTIN_SKIN_V, _BUILTIN_MOUTH_U = 0.26, 0.5
# FLAME: vertices from this index on are the eyeballs.
_FLAME_VERTICES, _FLAME_EYEBALLS = 5023, 3931


@dataclass(frozen=True)
class WarpEdit:
    """The result of :func:`warp_edit`.

    Attributes:
        image: (H, W, 3) uint8, the edited photo at its own resolution.
        mask: (H, W) float32 in [0, 1], where the photo changed (0: the input's pixel).
        flow: (H, W, 2) float32 backward flow in pixels: output pixel ``(x, y)`` took the
            photo's colour at ``(x + flow[..., 0], y + flow[..., 1])``.
        filled: (H, W) float32 in [0, 1], where the rendered interior (mouth, eyes) was used.
        seconds: wall time of the edit.
        timings: seconds per stage.
    """

    image: np.ndarray
    mask: np.ndarray
    flow: np.ndarray
    filled: np.ndarray
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Region:
    """The photo's window that may change: columns ``x0 .. x0 + w``, rows ``y0 .. y0 + h``."""

    x0: int
    y0: int
    w: int
    h: int
    size: float  # the head's projected size, pixels

    def to_ndc(self, px: Tensor) -> Tensor:
        """(..., 3) photo pixels + depth -> NDC of the window + depth."""
        x = (px[..., 0] - self.x0) * (2.0 / self.w) - 1.0
        y = (px[..., 1] - self.y0) * (2.0 / self.h) - 1.0
        return torch.stack([x, y, px[..., 2]], -1)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)


# ---------------------------------------------------------------------------------------------
# Inputs


def _check_photo(photo) -> None:
    if not isinstance(photo, np.ndarray):
        raise EmorigError(f"warp edit: the photo must be a numpy array, got {type(photo).__name__}")
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise EmorigError(
            f"warp edit: the photo must be (H, W, 3) uint8 RGB, got {photo.shape} {photo.dtype}"
        )
    if min(photo.shape[:2]) < 2:
        raise EmorigError(f"warp edit: the photo is too small ({photo.shape[1]}x{photo.shape[0]})")


def _crop_of(face, photo_size: tuple[int, int], device: torch.device) -> CropTransform:
    """A one-item CropTransform on ``device`` from an AlignedFace, a CropTransform or a (3, 3)
    photo -> 224-crop matrix."""
    if hasattr(face, "crop_transform"):
        crop = face.crop_transform()
    elif isinstance(face, CropTransform):
        crop = face
    elif isinstance(face, np.ndarray | Tensor):
        crop = CropTransform(
            torch.as_tensor(face, dtype=torch.float32).reshape(-1, 3, 3), 224, photo_size
        )
    else:
        raise EmorigError(
            f"warp edit: face must be an AlignedFace, a CropTransform or a (3, 3) matrix, "
            f"got {type(face).__name__}"
        )
    matrix = torch.as_tensor(crop.matrix, dtype=torch.float32, device=device)
    if matrix.dim() == 2:
        matrix = matrix[None]
    if matrix.shape != (1, 3, 3):
        raise EmorigError(
            f"warp edit: one face at a time; the crop transform is {tuple(matrix.shape)}"
        )
    if tuple(int(s) for s in crop.image_size) != tuple(photo_size):
        raise EmorigError(
            f"warp edit: the face was aligned on a {crop.image_size[1]}x{crop.image_size[0]} "
            f"photo, but the photo is {photo_size[1]}x{photo_size[0]}"
        )
    return CropTransform(matrix, int(crop.crop_size), tuple(photo_size))


def _check_codes(source: FaceCode, target: FaceCode, renderer: FaceRenderer) -> torch.device:
    for name, code in (("source", source), ("target", target)):
        if not isinstance(code, FaceCode):
            raise EmorigError(f"warp edit: {name} must be a FaceCode, got {type(code).__name__}")
        if code.batch_size != 1:
            raise EmorigError(
                f"warp edit: one face at a time; the {name} code has a batch of {code.batch_size}"
            )
    device = source.shape.device
    if target.shape.device != device:
        raise EmorigError(
            f"warp edit: source code on {device} but target code on {target.shape.device}"
        )
    buffer = next(renderer.buffers(), None)
    if buffer is not None and buffer.device != device:
        raise EmorigError(f"warp edit: codes on {device} but the renderer on {buffer.device}")
    return device


def face_parts(renderer: FaceRenderer) -> Tensor:
    """(F,) int64 part of every face: ``SKIN``, ``EYE`` (eyeballs) or ``MOUTH`` (cavity, teeth).

    The built-in head keeps its eyeballs and mouth below ``v = 0.26`` in its UV atlas, the
    mouth right of ``u = 0.5``; a FLAME head's eyeballs are its vertices from 3931 on (FLAME
    has no mouth interior). Other heads: all skin.
    """
    mesh = renderer.mesh
    parts = torch.full((mesh.faces.shape[0],), SKIN, dtype=torch.long, device=mesh.faces.device)
    if renderer.synthetic:
        uv = mesh.uv[mesh.uv_faces]  # (F, 3, 2)
        inner = (uv[..., 1] < _BUILTIN_SKIN_V).all(1)
        mouth = (uv[..., 0] >= _BUILTIN_MOUTH_U).all(1)
        parts[inner] = EYE
        parts[inner & mouth] = MOUTH
    elif renderer.flame.v_template.shape[0] == _FLAME_VERTICES:
        parts[(mesh.faces >= _FLAME_EYEBALLS).all(1)] = EYE
    return parts


# ---------------------------------------------------------------------------------------------
# Geometry


def _photo_points(
    renderer: FaceRenderer, code: FaceCode, crop: CropTransform
) -> tuple[Tensor, Tensor]:
    """World vertices (1, V, 3) and (1, V, 3) photo pixel x, y and screen depth."""
    vertices = renderer.geometry(code).vertices
    screen = renderer.project(vertices, code)
    image = crop.crop_ndc_to_image_ndc(screen)
    h, w = crop.image_size
    return vertices, torch.cat([ndc_to_pixels(image[..., :2], h, w), image[..., 2:]], -1)


def _region(src_px: Tensor, tgt_px: Tensor, photo_size: tuple[int, int]) -> _Region | None:
    """The window of the photo that may change; None when the head is not in the photo."""
    pts = torch.cat([src_px[0, :, :2], tgt_px[0, :, :2]])
    pts = pts[torch.isfinite(pts).all(1)]
    if pts.numel() == 0:
        return None
    lo, hi = pts.amin(0).tolist(), pts.amax(0).tolist()
    size = max(hi[0] - lo[0], hi[1] - lo[1], 1.0)
    margin = FALLOFF * size + 2
    h, w = photo_size
    x0, y0 = max(int(np.floor(lo[0] - margin)), 0), max(int(np.floor(lo[1] - margin)), 0)
    x1, y1 = min(int(np.ceil(hi[0] + margin)), w), min(int(np.ceil(hi[1] + margin)), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return _Region(x0, y0, x1 - x0, y1 - y0, size)


def _pixel_centres(region: _Region, device: torch.device) -> Tensor:
    """(1, 2, h, w) photo pixel coordinates of the window's pixel centres."""
    xs = torch.arange(region.w, device=device, dtype=torch.float32) + (region.x0 + 0.5)
    ys = torch.arange(region.h, device=device, dtype=torch.float32) + (region.y0 + 0.5)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None]


def _hidden_in_source(
    src_at: Tensor,
    target_face: Tensor,
    source: Fragments,
    parts: Tensor,
    region: _Region,
    tolerance: float,
) -> Tensor:
    """Whether target pixels' surface points were hidden in the source.

    A point is visible when the source shows its own face within a pixel of where it
    projects; otherwise it is hidden when it lies more than ``tolerance`` behind the source's
    visible surface, or when it is an interior part (eyeball, mouth) where the source shows
    skin (a lid or a lip resting on it).

    Args:
        src_at: (M, 3) photo pixel x, y and depth of the points on the source mesh.
        target_face: (M,) the target's face at each pixel.
        source: the source mesh's fragments over the window.
        parts: (F,) part of every face (:func:`face_parts`).
    """
    col = (src_at[:, 0] - region.x0).floor().long()
    row = (src_at[:, 1] - region.y0).floor().long()
    p2f = source.pix_to_face[0]
    same = torch.zeros_like(target_face, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r = (row + dy).clamp(0, region.h - 1)
            c = (col + dx).clamp(0, region.w - 1)
            same |= p2f[r, c] == target_face
    row, col = row.clamp(0, region.h - 1), col.clamp(0, region.w - 1)
    behind = src_at[:, 2] > source.zbuf[0, row, col] + tolerance
    shown = p2f[row, col]
    skin_shown = (shown >= 0) & (parts[shown.clamp_min(0)] == SKIN)
    return ~same & (behind | ((parts[target_face] != SKIN) & skin_shown))


@dataclass(frozen=True)
class _Surface:
    """The target mesh over the window: (h, w) masks and (C, h, w) per-pixel values."""

    covered: Tensor  # the target mesh covers the pixel
    hidden: Tensor  # ... with a point the source hid
    part: Tensor  # (h, w) int64 part of the target's face there (SKIN where not covered)
    jaw: Tensor  # (h, w) how much the target's point follows the jaw
    mesh_flow: Tensor  # (2, h, w) backward flow to the source point, pixels
    normal: Tensor  # (3, h, w) target world normals
    uv_grid: Tensor  # (2, h, w) texture grid-sample coordinates
    source_mouth: Tensor  # (h, w) the source mesh shows its mouth interior there
    source_covered: Tensor  # (h, w) the source mesh covers the pixel

    @property
    def interior(self) -> Tensor:
        return self.covered & (self.part != SKIN)


def _trace(
    renderer: FaceRenderer,
    src_px: Tensor,
    tgt_px: Tensor,
    tgt_vertices: Tensor,
    region: _Region,
    tolerance: float,
) -> _Surface:
    """Rasterise both meshes over the window; per target pixel, where its point was."""
    mesh = renderer.mesh
    faces = mesh.faces
    size = (region.h, region.w)
    target = rasterize(region.to_ndc(tgt_px), faces, size)
    source = rasterize(region.to_ndc(src_px), faces, size)
    parts = face_parts(renderer)
    normals = vertex_normals(tgt_vertices, faces)
    jaw = renderer.flame.weights[None, :, 2:3].to(normals)
    values = interpolate(target, torch.cat([src_px, normals, jaw], -1), faces)[0]
    grid = face_vertices(mesh.uv_grid[None], mesh.uv_faces)
    uv_grid = interpolate(target, grid)[0]
    p2f = target.pix_to_face[0]
    covered = p2f >= 0
    part = torch.where(covered, parts[p2f.clamp_min(0)], SKIN)
    where = covered.nonzero(as_tuple=True)
    hidden = torch.zeros_like(covered)
    src_at = values[:3].permute(1, 2, 0)[where]
    hidden[where] = _hidden_in_source(src_at, p2f[where], source, parts, region, tolerance)
    centres = _pixel_centres(region, src_px.device)[0]
    mesh_flow = torch.where(covered, values[:2] - centres, 0.0)
    src_face = source.pix_to_face[0]
    source_mouth = (src_face >= 0) & (parts[src_face.clamp_min(0)] == MOUTH)
    return _Surface(
        covered, hidden, part, values[6], mesh_flow, values[3:6], uv_grid, source_mouth,
        src_face >= 0,
    )  # fmt: skip


def _smoothstep(t: Tensor) -> Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def _grid_factor(region: _Region) -> int:
    return max(1, -(-max(region.h, region.w) // _FLOW_GRID))


def _upsample(coarse: Tensor, factor: int, region: _Region) -> Tensor:
    size = (coarse.shape[-2] * factor, coarse.shape[-1] * factor)
    up = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return up[..., : region.h, : region.w]


def _known_flow(surface: _Surface) -> Tensor:
    """(1, 1, h, w) pixels whose flow is the mesh's: visible in the source, not the mouth."""
    return (surface.covered & ~surface.hidden & (surface.part != MOUTH))[None, None]


def _membrane(values: Tensor, known: Tensor, region: _Region, far: Tensor | None = None):
    """Membrane fill on the coarse grid, upsampled, refined at full resolution near the known
    pixels (so discontinuities of the mesh flow do not bleed across a coarse cell)."""
    factor = _grid_factor(region)
    coarse_values, cells = downsample_known(values, known, factor)
    if far is not None:
        coarse_values = torch.where(far, 0.0, coarse_values)
        cells = cells | far
    up = _upsample(membrane_fill(coarse_values, cells), factor, region)
    if factor == 1:
        return up, factor
    band = F.max_pool2d(known.to(values.dtype), 2 * factor + 1, stride=1, padding=factor) > 0
    refined = relax(torch.where(known, values, up), values, known, 4 * factor)
    return torch.where(band, refined, up), factor


def _extend_flow(surface: _Surface, region: _Region) -> Tensor:
    """(1, 2, h, w) flow: the mesh's where its point was visible, a membrane elsewhere,
    pinned to zero ``FALLOFF`` x the head's size away from the mesh."""
    known = _known_flow(surface)
    factor = _grid_factor(region)
    _, mesh_cells = downsample_known(surface.mesh_flow[None], surface.covered[None, None], factor)
    limit = max(2, int(np.ceil(FALLOFF * region.size / factor)))
    dist = chessboard_distance(mesh_cells, limit)
    flow, _ = _membrane(surface.mesh_flow[None], known, region, far=dist >= limit)
    falloff = _upsample(_smoothstep(1 - dist / limit), factor, region)
    return torch.where(known, surface.mesh_flow[None], flow * falloff)


def _mouth_flow(surface: _Surface, flow: Tensor, region: _Region) -> tuple[Tensor, Tensor]:
    """Flow inside the target's mouth and where the mouth must be rendered.

    Teeth are rigid with their lip: a mouth pixel follows the skin flow of the upper face or
    of the jaw (its point's jaw weight decides), membrane-extended from the visible skin of
    that side. Where that lands on the source's own mouth opening it samples the photo (its
    teeth, moved with the lip); elsewhere (the gap a wider opening shows) it is rendered.
    """
    mouth = surface.covered & (surface.part == MOUTH)
    if not bool(mouth.any()):
        return flow, mouth
    skin = surface.covered & ~surface.hidden & (surface.part == SKIN)
    halves = []
    for side in (surface.jaw < 0.5, surface.jaw >= 0.5):
        known = (skin & side)[None, None]
        halves.append(_membrane(surface.mesh_flow[None], known, region)[0])
    half = torch.where(surface.jaw >= 0.5, halves[1], halves[0])
    pos = _pixel_centres(region, flow.device) + half
    col = (pos[0, 0] - region.x0).floor().long().clamp(0, region.w - 1)
    row = (pos[0, 1] - region.y0).floor().long().clamp(0, region.h - 1)
    inside = surface.source_mouth[row, col]
    return torch.where(mouth, half, flow), mouth & ~inside


def _blur(image: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (B, C, h, w) over 3 sigma, replicate borders (kornia's)."""
    import kornia

    if sigma < 0.3:
        return image
    k = 2 * max(1, int(3 * sigma)) + 1
    return kornia.filters.gaussian_blur2d(image, (k, k), (sigma, sigma), border_type="replicate")


def _coarse_blur(mask: Tensor, sigma: float, region: _Region) -> Tensor:
    """Gaussian blur of a (1, 1, h, w) mask with a large ``sigma``, on the coarse grid."""
    factor = _grid_factor(region)
    coarse = F.avg_pool2d(mask, factor, ceil_mode=True) if factor > 1 else mask
    return _upsample(_blur(coarse, sigma / factor), factor, region)


def _sample(photo: Tensor, flow: Tensor, region: _Region) -> Tensor:
    """(1, 3, h, w) photo window sampled bilinearly at the pixel centres + flow."""
    pos = _pixel_centres(region, flow.device) + flow
    scale = flow.new_tensor([2.0 / region.w, 2.0 / region.h]).view(1, 2, 1, 1)
    offset = flow.new_tensor([region.x0, region.y0]).view(1, 2, 1, 1)
    grid = ((pos - offset) * scale - 1.0).permute(0, 2, 3, 1)
    return F.grid_sample(photo, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _uncovered(surface: _Surface, flow: Tensor, region: _Region) -> Tensor:
    """(1, 1, h, w) pixels the head left: outside the target mesh, yet sampling a pixel the
    source mesh covered (the cheek or chin of a turned or closing face, whose colours would
    be dragged over the collar or background)."""
    pos = _pixel_centres(region, flow.device) + flow
    col = (pos[0, 0] - region.x0).floor().long().clamp(0, region.w - 1)
    row = (pos[0, 1] - region.y0).floor().long().clamp(0, region.h - 1)
    moved = flow[0].norm(dim=0) > 0.5
    return (~surface.covered & surface.source_covered[row, col] & moved)[None, None]


def _background_fill(edited: Tensor, surface: _Surface, flow: Tensor, region: _Region) -> Tensor:
    """``edited`` with the pixels the head left (:func:`_uncovered`) filled from the
    surrounding background by a membrane of its colours (no face colour enters)."""
    left = _uncovered(surface, flow, region)
    if not bool(left.any()):
        return edited
    known = ~left & ~surface.covered[None, None]
    filled, _ = _membrane(edited, known, region)
    return torch.where(left, filled, edited)


def _fill(
    renderer: FaceRenderer,
    source: FaceCode,
    target: FaceCode,
    surface: _Surface,
    warped: Tensor,
    mouth_fill: Tensor,
    region: _Region,
) -> tuple[Tensor, Tensor] | None:
    """The rendered interior where the target shows a part the source hid: colour
    (1, 3, h, w) and soft alpha (1, 1, h, w); None when nothing is hidden."""
    fill = (surface.hidden & surface.interior & (surface.part != MOUTH)) | mouth_fill
    if not bool(fill.any()):
        return None
    texture = renderer.albedo_texture(target).to(warped)
    grid = surface.uv_grid.permute(1, 2, 0)[None]
    albedo = F.grid_sample(texture, grid, mode="bilinear", align_corners=False)
    normal = surface.normal[None]
    # colour match: photo / render on visible, frontal skin, per channel
    skin = surface.covered & ~surface.hidden & ~surface.interior & (surface.normal[2] > 0.5)
    gain = warped.new_ones(1, 3, 1, 1)
    if bool(skin.any()):
        shown = (warped[0][:, skin]).sum(1)
        rendered = (albedo[0] * sh_shading(normal, source.light.to(warped))[0])[:, skin].sum(1)
        gain = (shown / rendered.clamp_min(1e-6)).clamp(*_GAIN_RANGE).view(1, 3, 1, 1)
    colour = albedo * sh_shading(normal, target.light.to(warped)) * gain
    # the depth of an open mouth gets little light: darken towards the middle of the opening
    mouth = mouth_fill[None, None].to(warped.dtype)
    depth = _coarse_blur(mouth, _MOUTH_SHADOW * region.size, region)
    colour = colour * (1 - _MOUTH_DARKEST * _smoothstep((depth - 0.25) / 0.5) * mouth)
    alpha = _blur(fill[None, None].to(warped.dtype), _FILL_FEATHER * region.size)
    return colour.clamp(0.0, 1.0), alpha * fill.any().to(warped.dtype)


def _relight_ratio(
    source: FaceCode, target: FaceCode, surface: _Surface, region: _Region
) -> Tensor | None:
    """(1, 3, h, w) shading ratio, feathered to 1 at the silhouette; None for the same SH."""
    if torch.equal(source.light, target.light):
        return None
    normal = surface.normal[None]
    before = sh_shading(normal, source.light).clamp_min(0.05)
    ratio = (sh_shading(normal, target.light) / before).clamp(*RELIGHT_RANGE)
    covered = surface.covered[None, None].to(ratio.dtype)
    # the head's facets and crude features (a sharp nose ridge) are not the photo's: keep
    # only the ratio's low frequencies (normalised blur over the covered pixels)
    sigma = _RELIGHT_SMOOTH * region.size
    ratio = _coarse_blur(ratio * covered, sigma, region) / _coarse_blur(
        covered, sigma, region
    ).clamp_min(1e-3)
    soft = _coarse_blur(covered, _RELIGHT_FEATHER * region.size, region)
    weight = _smoothstep(2 * soft - 1) * covered
    return 1 + weight * (ratio - 1)


def _mask(flow: Tensor, ratio: Tensor | None, alpha: Tensor | None) -> Tensor:
    """(1, 1, h, w) where the photo changes, in [0, 1]."""
    mask = (flow.norm(dim=1, keepdim=True) / _MASK_FLOW).clamp(0.0, 1.0)
    if ratio is not None:
        change = (ratio - 1).abs().amax(1, keepdim=True) / _MASK_RATIO
        mask = torch.maximum(mask, change.clamp(0.0, 1.0))
    if alpha is not None:
        mask = torch.maximum(mask, alpha)
    return mask


def _unchanged(photo: np.ndarray, start: float, timings: dict[str, float]) -> WarpEdit:
    h, w = photo.shape[:2]
    return WarpEdit(
        image=photo.copy(),
        mask=np.zeros((h, w), np.float32),
        flow=np.zeros((h, w, 2), np.float32),
        filled=np.zeros((h, w), np.float32),
        seconds=time.perf_counter() - start,
        timings=timings,
    )


def _same_pixels(src_px: Tensor, tgt_px: Tensor) -> bool:
    return bool((src_px[..., :2] - tgt_px[..., :2]).abs().max() < 1e-4)


def warp_edit(
    photo: np.ndarray,
    face,
    renderer: FaceRenderer,
    source: FaceCode,
    target: FaceCode,
    *,
    relight: bool = True,
) -> WarpEdit:
    """Move the photo's pixels from the ``source`` face to the ``target`` one, and relight.

    Args:
        photo: (H, W, 3) uint8 RGB, the original photo at its own resolution.
        face: where the face is: an :class:`~emorig.faces.pipeline.AlignedFace` (e.g.
            ``Reconstruction.face``), a :class:`~emorig.geometry.camera.CropTransform` or the
            (3, 3) photo -> 224-crop pixel matrix.
        renderer: the :class:`FaceRenderer` of the head the codes belong to, on the codes'
            device.
        source: (1, ...) the photo's fitted code.
        target: (1, ...) the wanted code (same head, camera in the same crop).
        relight: apply the target's SH light with a ratio image (the same SH changes nothing).

    Returns:
        :class:`WarpEdit`. Pixels further than ``FALLOFF`` x the head's size from the mesh are
        the input's, unchanged; unchanged codes return the input itself.

    Raises:
        EmorigError: on a photo that is not (H, W, 3) uint8, codes that are not one face, a
            crop of another photo size, or inputs on different devices.
    """
    start = time.perf_counter()
    _check_photo(photo)
    device = _check_codes(source, target, renderer)
    size = (int(photo.shape[0]), int(photo.shape[1]))
    crop = _crop_of(face, size, device)
    timings: dict[str, float] = {}
    with torch.no_grad():
        _, src_px = _photo_points(renderer, source, crop)
        tgt_vertices, tgt_px = _photo_points(renderer, target, crop)
        same_light = not relight or torch.equal(source.light, target.light)
        region = _region(src_px, tgt_px, size)
        if region is None or (same_light and _same_pixels(src_px, tgt_px)):
            return _unchanged(photo, start, timings)
        if not relight:
            target = target.replace(light=source.light)
        tolerance = OCCLUSION_TOLERANCE * float(source.camera[0, 0].abs())
        surface = _trace(renderer, src_px, tgt_px, tgt_vertices, region, tolerance)
        timings["trace"] = time.perf_counter() - start
        if _same_pixels(src_px, tgt_px):  # relighting only
            flow = surface.mesh_flow.new_zeros(1, 2, region.h, region.w)
            mouth_fill = torch.zeros_like(surface.covered)
        else:
            flow = _extend_flow(surface, region)
            flow, mouth_fill = _mouth_flow(surface, flow, region)
        timings["flow"] = time.perf_counter() - start - sum(timings.values())
        result = _compose(photo, renderer, source, target, surface, flow, mouth_fill, region)
        timings["compose"] = time.perf_counter() - start - sum(timings.values())
    return WarpEdit(*result, seconds=time.perf_counter() - start, timings=timings)


def _compose(
    photo: np.ndarray,
    renderer: FaceRenderer,
    source: FaceCode,
    target: FaceCode,
    surface: _Surface,
    flow: Tensor,
    mouth_fill: Tensor,
    region: _Region,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Warp, fill, relight and blend the window back: image, mask, flow, filled (numpy)."""
    rows, cols = region.slices
    window = photo[rows, cols]
    device = flow.device
    original = torch.from_numpy(np.ascontiguousarray(window)).to(device)
    original = original.permute(2, 0, 1)[None].to(torch.float32) / 255.0
    edited = _background_fill(_sample(original, flow, region), surface, flow, region)
    ratio = _relight_ratio(source, target, surface, region)
    filled = _fill(renderer, source, target, surface, edited, mouth_fill, region)
    if ratio is not None:
        edited = edited * ratio
    alpha = None
    if filled is not None:
        colour, alpha = filled
        edited = edited + alpha * (colour - edited)
    mask = _mask(flow, ratio, alpha)
    blended = original + mask * (edited - original)
    out = photo.copy()
    out[rows, cols] = (
        (blended[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).byte().cpu().numpy()
    )
    h, w = photo.shape[:2]
    full_mask = np.zeros((h, w), np.float32)
    full_mask[rows, cols] = mask[0, 0].cpu().numpy()
    full_flow = np.zeros((h, w, 2), np.float32)
    full_flow[rows, cols] = flow[0].permute(1, 2, 0).cpu().numpy()
    full_fill = np.zeros((h, w), np.float32)
    if alpha is not None:
        full_fill[rows, cols] = alpha[0, 0].cpu().numpy()
    return out, full_mask, full_flow, full_fill

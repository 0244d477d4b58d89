"""Pure-PyTorch mesh rendering in stages: rasterize -> interpolate -> shade.

* :func:`rasterize`: z-buffered triangles -> :class:`~emorig.types.Fragments`;
* :func:`interpolate`: vertex or face-corner attributes -> (B, C, H, W) images;
* :func:`sh_shading`, :func:`directional_shading`: DECA's Lambertian lighting;
* :class:`MeshRenderer`: holds a topology and composes the stages into
  :class:`~emorig.types.RenderBuffers` and DECA's grey shape images.
"""

from emorig.render.interpolate import interpolate
from emorig.render.rasterize import DEGENERATE_AREA, rasterize
from emorig.render.renderer import MeshRenderer
from emorig.render.shading import SH_CONSTANTS, directional_shading, sh_basis, sh_shading

__all__ = [
    "DEGENERATE_AREA",
    "SH_CONSTANTS",
    "MeshRenderer",
    "directional_shading",
    "interpolate",
    "rasterize",
    "sh_basis",
    "sh_shading",
]

"""FLAME-format heads: the data records, the differentiable layer, albedo spaces, the built-in
synthetic head (:mod:`emorig.flame.builtin`) and the loader for official files
(:func:`emorig.flame.heads.load_head`)."""

from emorig.flame.albedo import AlbedoModel
from emorig.flame.data import (
    AlbedoSpaceData,
    FlameData,
    HeadAssets,
    LandmarkEmbedding,
    MediapipeEmbedding,
    UVLayout,
)
from emorig.flame.model import JOINT_NAMES, FlameModel

__all__ = [
    "JOINT_NAMES",
    "AlbedoModel",
    "AlbedoSpaceData",
    "FlameData",
    "FlameModel",
    "HeadAssets",
    "LandmarkEmbedding",
    "MediapipeEmbedding",
    "UVLayout",
]

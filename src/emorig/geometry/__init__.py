"""Pure tensor functions: rotations, linear blend skinning, landmarks, cameras, mesh normals."""

from emorig.geometry.camera import (
    CropTransform,
    ndc_to_pixels,
    orthographic_project,
    perspective_project,
    pixels_to_ndc,
)
from emorig.geometry.landmarks import (
    contour_lut_row,
    vertices_to_landmarks,
    yaw_of_rotation,
)
from emorig.geometry.lbs import blend_shapes, lbs, rigid_transform_chain, vertices_to_joints
from emorig.geometry.mesh import face_normals, face_vertices, vertex_normals
from emorig.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
)

__all__ = [
    "CropTransform",
    "axis_angle_to_matrix",
    "blend_shapes",
    "contour_lut_row",
    "face_normals",
    "face_vertices",
    "lbs",
    "matrix_to_axis_angle",
    "ndc_to_pixels",
    "orthographic_project",
    "perspective_project",
    "pixels_to_ndc",
    "rigid_transform_chain",
    "vertex_normals",
    "vertices_to_joints",
    "vertices_to_landmarks",
    "yaw_of_rotation",
]

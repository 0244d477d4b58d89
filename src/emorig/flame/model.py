"""The FLAME layer: coefficients and joint rotations -> vertices, joints and landmarks.

``FlameModel`` only holds buffers; the mathematics lives in :mod:`emorig.geometry`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from emorig.flame.data import FlameData, HeadAssets, LandmarkEmbedding, MediapipeEmbedding
from emorig.geometry.landmarks import contour_lut_row, vertices_to_landmarks, yaw_of_rotation
from emorig.geometry.lbs import lbs
from emorig.geometry.rotations import axis_angle_to_matrix
from emorig.types import FlameOutput

# FLAME's joints, in kinematic order.
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
# DECA composes the neck and root rotations to find the head's yaw for the contour landmarks.
_NECK_CHAIN = (1, 0)


def _check_batch(name: str, value: Tensor | None, batch: int, width: int | None) -> None:
    if value is None:
        return
    if (
        value.dim() != 2
        or value.shape[0] != batch
        or (width is not None and value.shape[1] != width)
    ):
        expected = f"({batch}, {width if width is not None else 'K'})"
        raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {expected}")


class FlameModel(nn.Module):
    """A FLAME-format head as a differentiable layer.

    Args:
        head: the head's assets (:class:`HeadAssets`) or bare :class:`FlameData`.
        n_shape: identity components kept (at most what the file has; FLAME 300, DECA uses 100).
        n_expression: expression components kept (FLAME 100, DECA uses 50).
        dtype: float32 or float64 buffers.

    Forward inputs may carry fewer coefficients than kept components: the leading
    components are used, the rest are zero.
    """

    def __init__(
        self,
        head: HeadAssets | FlameData,
        n_shape: int | None = None,
        n_expression: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        assets = head if isinstance(head, HeadAssets) else HeadAssets(flame=head)
        flame = assets.flame
        self.name = flame.name
        self.synthetic = flame.synthetic
        max_s, max_e = flame.shapedirs.shape[2], flame.exprdirs.shape[2]
        n_shape = max_s if n_shape is None else n_shape
        n_expression = max_e if n_expression is None else n_expression
        if not 0 < n_shape <= max_s:
            raise ValueError(f"n_shape={n_shape}: {flame.name} has {max_s} identity components")
        if not 0 < n_expression <= max_e:
            raise ValueError(
                f"n_expression={n_expression}: {flame.name} has {max_e} expression components"
            )
        self.n_shape, self.n_expression = n_shape, n_expression

        def buf(name: str, array: np.ndarray, as_dtype: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=as_dtype))

        v = flame.n_vertices
        buf("v_template", flame.v_template)
        buf("faces", flame.faces, torch.long)
        buf("shapedirs", flame.shapedirs[:, :, :n_shape])
        buf("exprdirs", flame.exprdirs[:, :, :n_expression])
        # both bases side by side, so one product applies identity and expression
        buf(
            "blenddirs",
            np.concatenate(
                [flame.shapedirs[:, :, :n_shape], flame.exprdirs[:, :, :n_expression]], axis=2
            ),
        )
        # (V, 3, P) -> (P, 3 V): row-major vertex-then-axis, as the LBS product expects.
        buf("posedirs", flame.posedirs.reshape(v * 3, -1).T)
        buf("j_regressor", flame.j_regressor)
        # rows sum to one only to the file's precision; renormalise so the rest pose is exact
        weights = np.asarray(flame.weights, dtype=np.float64)
        buf("weights", weights / weights.sum(1, keepdims=True))
        buf("parents", flame.parents, torch.long)

        self.has_landmarks = assets.landmarks is not None
        if assets.landmarks is not None:
            self._register_landmarks(assets.landmarks, dtype)
        self.has_mediapipe = assets.mediapipe is not None
        if assets.mediapipe is not None:
            self._register_mediapipe(assets.mediapipe, dtype)

    def _register_landmarks(self, emb: LandmarkEmbedding, dtype: torch.dtype) -> None:
        self.register_buffer("static_faces", torch.as_tensor(emb.static_faces, dtype=torch.long))
        self.register_buffer("static_bary", torch.as_tensor(emb.static_bary, dtype=dtype))
        self.register_buffer("dynamic_faces", torch.as_tensor(emb.dynamic_faces, dtype=torch.long))
        self.register_buffer("dynamic_bary", torch.as_tensor(emb.dynamic_bary, dtype=dtype))
        self.register_buffer("full_faces", torch.as_tensor(emb.full_faces, dtype=torch.long))
        self.register_buffer("full_bary", torch.as_tensor(emb.full_bary, dtype=dtype))

    def _register_mediapipe(self, emb: MediapipeEmbedding, dtype: torch.dtype) -> None:
        self.register_buffer("mediapipe_faces", torch.as_tensor(emb.faces, dtype=torch.long))
        self.register_buffer("mediapipe_bary", torch.as_tensor(emb.bary, dtype=dtype))
        self.register_buffer(
            "mediapipe_index", torch.as_tensor(emb.mediapipe_index, dtype=torch.long)
        )

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def n_joints(self) -> int:
        return self.parents.shape[0]

    def _pad(self, coeffs: Tensor, n: int, name: str) -> Tensor:
        if coeffs.shape[1] > n:
            raise ValueError(f"{name} has {coeffs.shape[1]} coefficients; this model keeps {n}")
        return torch.nn.functional.pad(coeffs, (0, n - coeffs.shape[1]))

    def forward(
        self,
        shape: Tensor,
        expression: Tensor,
        global_pose: Tensor,
        jaw_pose: Tensor,
        neck_pose: Tensor | None = None,
        eye_pose: Tensor | None = None,
        translation: Tensor | None = None,
    ) -> FlameOutput:
        """Pose the head.

        Args:
            shape: (B, S) identity coefficients, S <= ``n_shape``.
            expression: (B, E) expression coefficients, E <= ``n_expression``.
            global_pose: (B, 3) axis-angle about the root joint.
            jaw_pose: (B, 3) axis-angle of the jaw joint.
            neck_pose: (B, 3) axis-angle of the neck joint, default zero.
            eye_pose: (B, 6) left then right eyeball axis-angles, default zero.
            translation: (B, 3) added to every output point, default zero.

        Returns:
            :class:`FlameOutput` in world space with the buffers' dtype.
        """
        b = shape.shape[0]
        _check_batch("shape", shape, b, None)
        _check_batch("expression", expression, b, None)
        _check_batch("global_pose", global_pose, b, 3)
        _check_batch("jaw_pose", jaw_pose, b, 3)
        _check_batch("neck_pose", neck_pose, b, 3)
        _check_batch("eye_pose", eye_pose, b, 6)
        _check_batch("translation", translation, b, 3)
        zeros = global_pose.new_zeros(b, 3)
        neck_pose = zeros if neck_pose is None else neck_pose
        eye_pose = global_pose.new_zeros(b, 6) if eye_pose is None else eye_pose
        pose = torch.cat([global_pose, neck_pose, jaw_pose, eye_pose], dim=1).view(b, 5, 3)
        if self.n_joints != 5:
            raise ValueError(f"{self.name} has {self.n_joints} joints; FLAME-format heads have 5")
        coeffs = torch.cat(
            [
                self._pad(shape, self.n_shape, "shape"),
                self._pad(expression, self.n_expression, "expression"),
            ],
            dim=1,
        )
        directions = self.blenddirs
        pose = pose.to(self.v_template.dtype)
        rotations = axis_angle_to_matrix(pose)
        vertices, joints = lbs(
            coeffs.to(self.v_template.dtype),
            pose,
            self.v_template,
            directions,
            self.posedirs,
            self.j_regressor,
            self.parents,
            self.weights,
            rotations,
        )
        landmarks2d = landmarks3d = mediapipe = None
        if self.has_landmarks:
            landmarks2d = self.contour_landmarks(vertices, pose, rotations)
            landmarks3d = vertices_to_landmarks(
                vertices, self.faces, self.full_faces, self.full_bary
            )
        if self.has_mediapipe:
            mediapipe = vertices_to_landmarks(
                vertices, self.faces, self.mediapipe_faces, self.mediapipe_bary
            )
        out = FlameOutput(vertices, joints, landmarks2d, landmarks3d, mediapipe)
        if translation is not None:
            t = translation.to(vertices.dtype)[:, None, :]
            out = out.map(lambda x: x + t)
        return out

    def contour_landmarks(
        self, vertices: Tensor, pose: Tensor, rotations: Tensor | None = None
    ) -> Tensor:
        """DECA's 68 landmarks: 17 yaw-dependent contour points, then the 51 static ones.

        Args:
            vertices: (B, V, 3) posed vertices.
            pose: (B, 5, 3) axis-angle of every joint.
            rotations: (B, 5, 3, 3) their matrices, if already computed.
        """
        b = vertices.shape[0]
        if rotations is None:
            rotations = axis_angle_to_matrix(pose)
        rot = rotations[:, list(_NECK_CHAIN)]  # (B, 2, 3, 3): neck, root
        chain = rot[:, 1] @ rot[:, 0]
        row = contour_lut_row(yaw_of_rotation(chain))
        faces = torch.cat([self.dynamic_faces[row], self.static_faces.expand(b, -1)], dim=1)
        bary = torch.cat([self.dynamic_bary[row], self.static_bary.expand(b, -1, -1)], dim=1)
        return vertices_to_landmarks(vertices, self.faces, faces, bary)

    def template_output(self, batch_size: int = 1) -> FlameOutput:
        """The neutral head (all coefficients and rotations zero)."""
        z = self.v_template.new_zeros
        return self(
            z(batch_size, self.n_shape),
            z(batch_size, self.n_expression),
            z(batch_size, 3),
            z(batch_size, 3),
        )

"""Typed values that cross the arrows of the pipeline.

Every field is batch-first. Conventions (see ``docs/conventions.md``):

* images are float in ``[0, 1]``, NCHW;
* FLAME world space: metres, ``+x`` the subject's left, ``+y`` up, ``+z`` out of the face;
* rotations are axis-angle vectors (radians) unless a name says ``matrix``;
* screen space is DECA's: ``x`` right and ``y`` down in NDC ``[-1, 1]``, smaller ``z`` nearer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "EMOTION_CLASSES",
    "EmotionOutput",
    "FaceCode",
    "FlameOutput",
    "Fragments",
    "RenderBuffers",
    "TensorRecord",
]


class TensorRecord:
    """Mixin for frozen dataclasses of tensors: ``to``, ``detach``, ``map`` and indexing."""

    def map(self, fn: Callable[[Tensor], Tensor]):
        """Apply ``fn`` to every tensor field (``None`` fields stay ``None``)."""
        changes = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = fn(value)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to(self, *args, **kwargs):
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self):
        return self.map(Tensor.detach)

    def __getitem__(self, index):
        """Select batch entries; ``record[i:j]`` keeps the batch axis."""
        return self.map(lambda t: t[index])


@dataclass(frozen=True)
class FlameOutput(TensorRecord):
    """What a FLAME-format head produces for a batch of parameters.

    Attributes:
        vertices: (B, V, 3) posed vertices in world space.
        joints: (B, J, 3) posed joints (FLAME: root, neck, jaw, left eye, right eye).
        landmarks2d: (B, 68, 3) DECA's "2D" landmark set: 17 yaw-dependent contour points
            followed by 51 static points, in world space. ``None`` without an embedding.
        landmarks3d: (B, 68, 3) the fixed 68-point set (no contour switching), world space.
        mediapipe: (B, M, 3) MediaPipe landmarks when that embedding is loaded, else ``None``.
    """

    vertices: Tensor
    joints: Tensor
    landmarks2d: Tensor | None = None
    landmarks3d: Tensor | None = None
    mediapipe: Tensor | None = None


@dataclass(frozen=True)
class FaceCode(TensorRecord):
    """The parameters of one reconstructed face (DECA/EMOCA semantics).

    Attributes:
        shape: (B, S) identity coefficients (DECA: S = 100).
        expression: (B, E) expression coefficients (DECA: E = 50).
        global_pose: (B, 3) head rotation about the root joint, axis-angle.
        jaw_pose: (B, 3) jaw rotation, axis-angle (opening is a positive rotation about +x).
        camera: (B, 3) DECA's orthographic camera ``(s, tx, ty)``.
        light: (B, 9, 3) second-order SH coefficients, coefficient-major, RGB minor.
        albedo: (B, T) albedo-space coefficients (DECA: T = 50).
        neck_pose: (B, 3) neck rotation, axis-angle (zero in DECA).
        eye_pose: (B, 6) left and right eyeball rotations, axis-angle (zero in DECA).
        detail: (B, 128) DECA detail code, or ``None``.
    """

    shape: Tensor
    expression: Tensor
    global_pose: Tensor
    jaw_pose: Tensor
    camera: Tensor
    light: Tensor
    albedo: Tensor
    neck_pose: Tensor
    eye_pose: Tensor
    detail: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.shape.shape[0]

    @classmethod
    def neutral(
        cls,
        batch_size: int = 1,
        n_shape: int = 100,
        n_expression: int = 50,
        n_albedo: int = 50,
        *,
        camera: tuple[float, float, float] = (9.0, 0.0, 0.0),
        ambient: float = 1.0 / 0.28209479177387814 * 0.8,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> FaceCode:
        """A neutral face: zero coefficients and poses, a frontal camera and white ambient light.

        ``ambient`` is the DC SH coefficient; the default makes the shading 0.8 everywhere
        (the DC basis constant is 1/sqrt(4*pi) = 0.2821).
        """
        z = lambda *s: torch.zeros(batch_size, *s, device=device, dtype=dtype)  # noqa: E731
        light = z(9, 3)
        light[:, 0, :] = ambient
        cam = torch.tensor(camera, device=device, dtype=dtype).expand(batch_size, 3).clone()
        return cls(
            shape=z(n_shape),
            expression=z(n_expression),
            global_pose=z(3),
            jaw_pose=z(3),
            camera=cam,
            light=light,
            albedo=z(n_albedo),
            neck_pose=z(3),
            eye_pose=z(6),
        )

    def replace(self, **changes: Tensor | None) -> FaceCode:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Fragments(TensorRecord):
    """Rasterizer output: which face covers each pixel and where inside it.

    Attributes:
        pix_to_face: (B, H, W) int64 index into the face list, ``-1`` for background.
        bary: (B, H, W, 3) barycentric coordinates of the pixel centre in that face
            (zeros for background); differentiable with respect to the vertices.
        zbuf: (B, H, W) screen depth of the visible surface (``inf`` for background).
    """

    pix_to_face: Tensor
    bary: Tensor
    zbuf: Tensor

    @property
    def mask(self) -> Tensor:
        """(B, 1, H, W) float coverage mask."""
        return (self.pix_to_face >= 0).unsqueeze(1).to(self.bary.dtype)


@dataclass(frozen=True)
class RenderBuffers(TensorRecord):
    """Image-space buffers of a rendered FLAME face (DiffusionRig's conditions and more).

    All (B, C, H, W), zero on the background.

    Attributes:
        rendered: (B, 3, H, W) Lambertian render, albedo x SH shading (nominal [0, 1]).
        normal: (B, 3, H, W) world-space normals in [-1, 1].
        albedo: (B, 3, H, W) albedo in [0, 1].
        mask: (B, 1, H, W) 1 where the mesh covers the pixel.
        depth: (B, 1, H, W) screen depth of the visible surface (0 on background).
        uv: (B, 2, H, W) texture coordinates in [0, 1] (u right, v up, as in OBJ files).
        shading: (B, 3, H, W) SH shading alone.
    """

    rendered: Tensor
    normal: Tensor
    albedo: Tensor
    mask: Tensor
    depth: Tensor
    uv: Tensor
    shading: Tensor
    condition_names: tuple[str, ...] = field(default=("rendered", "normal", "albedo"))

    @property
    def condition_channels(self) -> int:
        """Channel count of :meth:`condition` (DiffusionRig: 3 + 3 + 3 = 9)."""
        return sum(getattr(self, n).shape[1] for n in self.condition_names)

    def condition(self) -> Tensor:
        """(B, C, H, W) the conditioning buffers concatenated in ``condition_names`` order."""
        return torch.cat([getattr(self, n) for n in self.condition_names], dim=1)


#: AffectNet's eight expression classes, in AffectNet's (and EMOCA's) index order.
EMOTION_CLASSES = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)


@dataclass(frozen=True)
class EmotionOutput(TensorRecord):
    """What an emotion recogniser says about a batch of faces.

    Attributes:
        logits: (B, 8) log-probabilities over :data:`EMOTION_CLASSES` (log-softmax); a class a
            recogniser cannot predict (FER2013 has no contempt) is ``-inf``.
        valence_arousal: (B, 2) valence and arousal in [-1, 1], or None when the recogniser
            does not predict them.
        features: (B, D) the pooled features before the heads (what EMOCA's emotion
            consistency compares).
    """

    logits: Tensor
    valence_arousal: Tensor | None
    features: Tensor

    @property
    def probabilities(self) -> Tensor:
        return self.logits.exp()

    @property
    def predicted(self) -> Tensor:
        """(B,) index of the most likely class."""
        return self.logits.argmax(-1)

"""In-memory forms of FLAME-format head assets, independent of the file they came from.

Readers in :mod:`emorig.io` fill these from official files; :mod:`emorig.flame.builtin`
generates them procedurally. All arrays are NumPy; :class:`emorig.flame.FlameModel` turns them
into torch buffers. ``validate`` raises :class:`emorig.assets.AssetError` with one readable line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emorig.errors import AssetError

N_CONTOUR_ROWS = 79  # DECA's yaw table: 0..39 and -1..-39 degrees
N_CONTOUR = 17
N_STATIC = 51
N_LANDMARKS = 68


def _expect(cond: bool, source: str, what: str, obtain: str | None = None) -> None:
    if not cond:
        raise AssetError(source, what, obtain)


def _shape_is(a: np.ndarray, shape: tuple[int | None, ...]) -> bool:
    return a.ndim == len(shape) and all(
        s is None or s == d for s, d in zip(shape, a.shape, strict=True)
    )


@dataclass(frozen=True)
class FlameData:
    """A FLAME-format statistical head: template, bases, skeleton and skinning.

    Attributes:
        v_template: (V, 3) float template vertices, metres.
        faces: (F, 3) int64 triangles, counter-clockwise seen from outside.
        shapedirs: (V, 3, S) identity basis (FLAME: S = 300).
        exprdirs: (V, 3, E) expression basis (FLAME: E = 100).
        posedirs: (V, 3, 9 (J - 1)) pose-corrective basis, FLAME's layout.
        j_regressor: (J, V) dense joint regressor.
        weights: (V, J) skinning weights, rows sum to one.
        parents: (J,) int64 kinematic tree, -1 for the root; parents precede children.
        name: human-readable origin, e.g. ``"FLAME 2020"`` or ``"emorig built-in head"``.
        synthetic: True for procedurally generated heads (never a scan-based model).
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    name: str = "FLAME"
    synthetic: bool = False

    @property
    def n_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def n_joints(self) -> int:
        return self.parents.shape[0]

    def validate(self, source: str, obtain: str | None = None) -> FlameData:
        v = self.v_template.shape[0] if self.v_template.ndim == 2 else -1
        j = self.parents.shape[0] if self.parents.ndim == 1 else -1
        _expect(
            _shape_is(self.v_template, (None, 3)) and v > 0,
            source,
            f"v_template has shape {self.v_template.shape}, expected (V, 3)",
            obtain,
        )
        _expect(
            _shape_is(self.faces, (None, 3)),
            source,
            f"faces have shape {self.faces.shape}, expected (F, 3)",
            obtain,
        )
        _expect(
            self.faces.size == 0 or (self.faces.min() >= 0 and self.faces.max() < v),
            source,
            f"faces index vertices outside 0..{v - 1}",
            obtain,
        )
        _expect(
            _shape_is(self.shapedirs, (v, 3, None)),
            source,
            f"shapedirs have shape {self.shapedirs.shape}, expected ({v}, 3, S)",
            obtain,
        )
        _expect(
            _shape_is(self.exprdirs, (v, 3, None)),
            source,
            f"expression directions have shape {self.exprdirs.shape}, expected ({v}, 3, E)",
            obtain,
        )
        _expect(j >= 1, source, "kinematic tree is empty", obtain)
        _expect(
            _shape_is(self.posedirs, (v, 3, 9 * (j - 1))),
            source,
            f"posedirs have shape {self.posedirs.shape}, expected ({v}, 3, {9 * (j - 1)})",
            obtain,
        )
        _expect(
            _shape_is(self.j_regressor, (j, v)),
            source,
            f"J_regressor has shape {self.j_regressor.shape}, expected ({j}, {v})",
            obtain,
        )
        _expect(
            _shape_is(self.weights, (v, j)),
            source,
            f"weights have shape {self.weights.shape}, expected ({v}, {j})",
            obtain,
        )
        _expect(
            int(self.parents[0]) == -1
            and all(0 <= int(p) < i for i, p in enumerate(self.parents[1:], start=1)),
            source,
            f"kinematic tree {self.parents.tolist()} is not rooted at joint 0 with parents "
            "before children",
            obtain,
        )
        for name in ("v_template", "shapedirs", "exprdirs", "posedirs", "j_regressor", "weights"):
            _expect(
                bool(np.isfinite(getattr(self, name)).all()),
                source,
                f"{name} contains NaN or infinite values",
                obtain,
            )
        return self


@dataclass(frozen=True)
class LandmarkEmbedding:
    """DECA's 68-landmark embedding on the FLAME surface.

    Attributes:
        static_faces: (51,) int64 faces of the 51 inner-face landmarks (iBUG 17..67).
        static_bary: (51, 3) barycentric coordinates.
        dynamic_faces: (79, 17) int64 contour faces per yaw row (see
            :func:`emorig.geometry.contour_lut_row`).
        dynamic_bary: (79, 17, 3).
        full_faces: (68,) int64 faces of the fixed 68-point set.
        full_bary: (68, 3).
    """

    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: np.ndarray
    dynamic_bary: np.ndarray
    full_faces: np.ndarray
    full_bary: np.ndarray

    def validate(
        self, source: str, n_faces: int | None = None, obtain: str | None = None
    ) -> LandmarkEmbedding:
        checks = [
            ("static_lmk_faces_idx", self.static_faces, (N_STATIC,)),
            ("static_lmk_bary_coords", self.static_bary, (N_STATIC, 3)),
            ("dynamic_lmk_faces_idx", self.dynamic_faces, (N_CONTOUR_ROWS, N_CONTOUR)),
            ("dynamic_lmk_bary_coords", self.dynamic_bary, (N_CONTOUR_ROWS, N_CONTOUR, 3)),
            ("full_lmk_faces_idx", self.full_faces, (N_LANDMARKS,)),
            ("full_lmk_bary_coords", self.full_bary, (N_LANDMARKS, 3)),
        ]
        for key, arr, shape in checks:
            _expect(
                _shape_is(arr, shape),
                source,
                f"'{key}' has shape {arr.shape}, expected {shape}",
                obtain,
            )
        if n_faces is not None:
            for key, arr in (
                ("static", self.static_faces),
                ("dynamic", self.dynamic_faces),
                ("full", self.full_faces),
            ):
                _expect(
                    arr.min() >= 0 and arr.max() < n_faces,
                    source,
                    f"{key} landmark faces index outside the mesh's {n_faces} faces",
                    obtain,
                )
        return self


@dataclass(frozen=True)
class MediapipeEmbedding:
    """MediaPipe face-mesh points embedded on FLAME (EMOCA v2).

    Attributes:
        faces: (M,) int64 FLAME faces (M = 105 in the official file).
        bary: (M, 3) barycentric coordinates.
        mediapipe_index: (M,) int64 MediaPipe point id of each embedded landmark.
    """

    faces: np.ndarray
    bary: np.ndarray
    mediapipe_index: np.ndarray

    def validate(
        self, source: str, n_faces: int | None = None, obtain: str | None = None
    ) -> MediapipeEmbedding:
        m = self.faces.shape[0] if self.faces.ndim == 1 else -1
        _expect(
            m > 0, source, f"'lmk_face_idx' has shape {self.faces.shape}, expected (M,)", obtain
        )
        _expect(
            _shape_is(self.bary, (m, 3)),
            source,
            f"'lmk_b_coords' has shape {self.bary.shape}, expected ({m}, 3)",
            obtain,
        )
        _expect(
            _shape_is(self.mediapipe_index, (m,)),
            source,
            f"'landmark_indices' has shape {self.mediapipe_index.shape}, expected ({m},)",
            obtain,
        )
        if n_faces is not None:
            _expect(
                self.faces.min() >= 0 and self.faces.max() < n_faces,
                source,
                f"faces index outside the mesh's {n_faces} faces",
                obtain,
            )
        return self


@dataclass(frozen=True)
class UVLayout:
    """Texture coordinates of a mesh (OBJ ``vt`` and the ``f v/vt`` indices).

    Attributes:
        uv: (T, 2) float texture coordinates in [0, 1], v up.
        uv_faces: (F, 3) int64 indices into ``uv``, one triangle per mesh face.
    """

    uv: np.ndarray
    uv_faces: np.ndarray

    def validate(
        self, source: str, n_faces: int | None = None, obtain: str | None = None
    ) -> UVLayout:
        _expect(
            _shape_is(self.uv, (None, 2)),
            source,
            f"uv coordinates have shape {self.uv.shape}, expected (T, 2)",
            obtain,
        )
        _expect(
            _shape_is(self.uv_faces, (n_faces, 3)),
            source,
            f"uv faces have shape {self.uv_faces.shape}, expected ({n_faces or 'F'}, 3)",
            obtain,
        )
        _expect(
            self.uv_faces.min() >= 0 and self.uv_faces.max() < self.uv.shape[0],
            source,
            "uv faces index outside the uv list",
            obtain,
        )
        return self


@dataclass(frozen=True)
class AlbedoSpaceData:
    """A linear albedo model in UV space, RGB in [0, 1].

    Attributes:
        mean: (H, W, 3) float32 mean albedo, RGB.
        basis: (H, W, 3, K) float32 principal directions, RGB.
        kind: ``"FLAME"`` (FLAME texture space), ``"BFM"`` (albedo converted from the Basel
            Face Model) or ``"builtin"``.
    """

    mean: np.ndarray
    basis: np.ndarray
    kind: str

    @property
    def n_components(self) -> int:
        return self.basis.shape[-1]

    def validate(self, source: str, obtain: str | None = None) -> AlbedoSpaceData:
        _expect(
            _shape_is(self.mean, (None, None, 3)),
            source,
            f"albedo mean has shape {self.mean.shape}, expected (H, W, 3)",
            obtain,
        )
        h, w = self.mean.shape[:2]
        _expect(
            _shape_is(self.basis, (h, w, 3, None)),
            source,
            f"albedo basis has shape {self.basis.shape}, expected ({h}, {w}, 3, K)",
            obtain,
        )
        return self


@dataclass(frozen=True)
class HeadAssets:
    """Everything one head model brings: geometry and, when available, its extras."""

    flame: FlameData
    landmarks: LandmarkEmbedding | None = None
    mediapipe: MediapipeEmbedding | None = None
    uv: UVLayout | None = None
    albedo: AlbedoSpaceData | None = None
    notes: dict[str, str] = field(default_factory=dict)
    # UV-space data of the detail model, (S, S) float32 (DECA: 256)
    uv_face_eye_mask: np.ndarray | None = None
    uv_face_mask: np.ndarray | None = None
    fixed_displacement: np.ndarray | None = None

    @property
    def synthetic(self) -> bool:
        return self.flame.synthetic

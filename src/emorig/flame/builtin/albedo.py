"""The built-in head's albedo space, painted procedurally in UV space.

Every texel is traced back to its point on the template (the skin grid is bilinear in UV,
the eyeballs and the mouth cavity use a polar layout), and colours are functions of that
point: skin, lips, brows, lashes, nostrils, short hair, iris, sclera, teeth and mouth.
The first components are named (:data:`ALBEDO_COMPONENTS`); the rest are smooth random
colour fields of decreasing amplitude.
"""

from __future__ import annotations

import numpy as np

from emorig.flame.builtin.mesh import (
    EYE_UV,
    MOUTH_UV,
    PART_LEFT_EYE,
    PART_RIGHT_EYE,
    SKIN_UV_V,
    HeadMesh,
    polar_angle,
)
from emorig.flame.builtin.rig import smoothstep
from emorig.flame.builtin.sculpt import ANATOMY, Anatomy
from emorig.flame.data import AlbedoSpaceData

ALBEDO_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("skin_tone", "lighter (+) or darker (-) skin"),
    ("redness", "ruddier (+) skin"),
    ("olive", "more yellow-olive (+) skin"),
    ("lip_colour", "redder, darker lips (+)"),
    ("brow_darkness", "darker (+) brows and lashes"),
    ("hair_lightness", "lighter (+) hair"),
    ("blush", "pinker cheeks (+)"),
    ("stubble", "beard shadow (+)"),
    ("iris_blue", "blue (+) or brown (-) irises"),
    ("under_eye", "darker circles under the eyes (+)"),
)

SKIN = np.array([0.80, 0.61, 0.50])
LIPS = np.array([0.70, 0.36, 0.36])
BROW = np.array([0.20, 0.14, 0.10])
HAIR = np.array([0.17, 0.12, 0.09])
SCLERA = np.array([0.93, 0.90, 0.86])
IRIS = np.array([0.36, 0.26, 0.17])
TEETH = np.array([0.92, 0.89, 0.80])
MOUTH = np.array([0.35, 0.09, 0.09])
TONGUE = np.array([0.62, 0.30, 0.30])


def _texel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """u, v of every texel centre; row 0 is the top of the image (v = 1)."""
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1.0 - c, indexing="xy")
    return u, v


def _skin_points(mesh: HeadMesh, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Template points under skin texels (bilinear over the ring/column grid)."""
    n_ring, n_col = mesh.grid.shape[:2]
    span = SKIN_UV_V[1] - SKIN_UV_V[0] - 0.02
    fi = np.clip((v - SKIN_UV_V[0]) / span * (n_ring - 1), 0, n_ring - 1 - 1e-9)
    fj = u * n_col
    i0 = np.floor(fi).astype(int)
    j0 = np.floor(fj).astype(int) % n_col
    j1 = (j0 + 1) % n_col
    ti, tj = (fi - i0)[..., None], (fj - np.floor(fj))[..., None]
    i1 = np.minimum(i0 + 1, n_ring - 1)
    g = mesh.grid
    return (1 - ti) * ((1 - tj) * g[i0, j0] + tj * g[i0, j1]) + ti * (
        (1 - tj) * g[i1, j0] + tj * g[i1, j1]
    )


def _polar(u, v, box):
    """Angle from the front pole (radians) and azimuth of texels in a polar uv box."""
    u0, v0, size = box
    du, dv = u - (u0 + 0.5 * size), v - (v0 + 0.5 * size)
    alpha = polar_angle(np.hypot(du, dv), size)
    beta = np.arctan2(dv, du)
    inside = (u >= u0) & (u < u0 + size) & (v >= v0) & (v < v0 + size)
    return alpha, beta, inside


def _value_noise(p: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth 3D noise in [-1, 1] from a seeded sum of sinusoids (deterministic)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(p.shape[:-1])
    for _ in range(6):
        k = rng.normal(size=3)
        k *= scale / np.linalg.norm(k)
        out += np.sin(p @ k + rng.uniform(0, 2 * np.pi))
    return out / 6**0.5


class _Regions:
    """Soft masks on skin points (values in [0, 1])."""

    def __init__(self, p: np.ndarray, mesh: HeadMesh, anatomy: Anatomy):
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        ax = np.abs(x)
        ring, cols = mesh.mouth_ring, mesh.mouth_columns
        corner = mesh.grid[ring, cols[-1]]
        my, half = corner[1], corner[0]
        e = anatomy.eye(+1)
        front = smoothstep(0.04, 0.07, z)
        # lips: between the outer lip lines, narrowing towards the corners
        t = np.clip(ax / (half + 0.0015), 0, 1)
        bow = 0.0010 * np.exp(-(((ax - 0.006) / 0.004) ** 2))
        top = my + 0.0022 + 0.0055 * (1 - t**2) + bow
        bottom = my - 0.0015 - 0.0095 * (1 - t**1.8)
        self.lips = (
            smoothstep(top + 0.0008, top - 0.0008, y)
            * smoothstep(bottom - 0.0008, bottom + 0.0008, y)
            * smoothstep(half + 0.002, half - 0.001, ax)
            * front
        )
        # brows: an arch above each eye, thinning outwards
        bx = (ax - 0.012) / 0.040
        arch = e[1] + 0.0115 + 0.007 * np.sin(np.clip(bx, 0, 1) * np.pi * 0.85)
        thick = 0.0030 * (1 - 0.55 * np.clip(bx, 0, 1))
        self.brows = (
            smoothstep(thick + 0.001, thick - 0.0005, np.abs(y - arch - 0.001))
            * smoothstep(-0.1, 0.0, bx)
            * smoothstep(1.05, 0.95, bx)
            * smoothstep(0.05, 0.065, z)
        )
        # lash line just above the upper lid margin
        r_eye = np.hypot((ax - e[0]) / 0.0135, (y - e[1] - 0.0005) / 0.0068)
        self.lashes = (
            smoothstep(1.25, 1.0, r_eye)
            * smoothstep(0.75, 0.95, r_eye)
            * smoothstep(e[1] - 0.001, e[1] + 0.002, y)
            * front
        )
        self.under_eye = _gauss2(ax - e[0], y - e[1] + 0.011, 0.010, 0.004) * front
        self.cheeks = _gauss2(ax - 0.042, y + 0.008, 0.014, 0.011) * front
        nostril = _gauss2(ax - 0.0075, y + 0.0175, 0.0035, 0.0016) * smoothstep(0.09, 0.1, z)
        self.nostrils = np.clip(nostril * 1.4, 0, 1)
        self.ears = _gauss2(ax - anatomy.ear_center[0], y - anatomy.ear_center[1], 0.014, 0.032)
        # hair: a close crop above a hairline that drops from the forehead to the nape
        theta = np.arctan2(x, z)
        hairline = (
            0.086
            - 0.050 * smoothstep(0.5, 1.6, np.abs(theta))
            - 0.075 * smoothstep(1.9, 2.9, np.abs(theta))
        )
        near_ear = _gauss2(
            ax - anatomy.ear_center[0], y - anatomy.ear_center[1] - 0.004, 0.016, 0.036
        )
        self.hair = smoothstep(hairline - 0.004, hairline + 0.006, y) * (1 - near_ear)
        self.stubble = (
            smoothstep(-0.005, 0.015, -(y - my) - 0.004 * (1 - ax / 0.06))
            * smoothstep(0.02, 0.05, z)
            * smoothstep(-0.105, -0.09, y)
            * (1 - self.lips)
        ) + _gauss2(x, y - my - 0.011, 0.022, 0.004) * front
        self.stubble = np.clip(self.stubble, 0, 1) * (1 - self.lips)


def _gauss2(dx, dy, sx, sy):
    return np.exp(-0.5 * ((dx / sx) ** 2 + (dy / sy) ** 2))


def albedo_space(
    mesh: HeadMesh,
    size: int = 256,
    n_components: int = 50,
    seed: int = 0,
    anatomy: Anatomy = ANATOMY,
) -> AlbedoSpaceData:
    """Mean albedo and basis, (size, size, 3) and (size, size, 3, n_components), RGB [0, 1]."""
    u, v = _texel_grid(size)
    mean = np.zeros((size, size, 3))
    basis = np.zeros((size, size, 3, n_components))
    named = {name: np.zeros((size, size, 3)) for name, _ in ALBEDO_COMPONENTS}

    # --- skin
    skin_area = v >= SKIN_UV_V[0] - 0.01
    p = _skin_points(mesh, u, v)
    r = _Regions(p, mesh, anatomy)
    noise = _value_noise(p, 180.0, seed + 11)[..., None]
    fine = _value_noise(p, 1400.0, seed + 12)[..., None]
    col = SKIN + 0.018 * noise + 0.008 * fine
    col = col + r.cheeks[..., None] * np.array([0.03, -0.015, -0.01])
    col = col + r.ears[..., None] * np.array([0.02, -0.02, -0.02])
    col = col * (1 - 0.06 * r.under_eye[..., None])
    col = _mix(col, LIPS + 0.01 * fine, r.lips)
    col = _mix(col, BROW * (1 + 0.12 * fine), r.brows * (0.9 + 0.1 * fine[..., 0]))
    col = _mix(col, BROW * 0.7, r.lashes * 0.85)
    col = _mix(col, np.array([0.28, 0.13, 0.11]), r.nostrils)
    hair_tex = HAIR * (1 + 0.25 * _value_noise(p, 2500.0, seed + 13)[..., None])
    col = _mix(col, hair_tex, r.hair)
    mean[skin_area] = col[skin_area]
    skin_only = (1 - r.hair) * (1 - r.lips) * (1 - r.brows)
    sk = skin_area[..., None]
    named["skin_tone"] += sk * (col * 0.22 * skin_only[..., None])
    named["redness"] += sk * np.array([0.05, -0.015, -0.02]) * skin_only[..., None]
    named["olive"] += sk * np.array([0.01, 0.02, -0.04]) * skin_only[..., None]
    named["lip_colour"] += sk * np.array([0.06, -0.06, -0.04]) * r.lips[..., None]
    named["brow_darkness"] += sk * -0.08 * (r.brows + r.lashes)[..., None]
    named["hair_lightness"] += sk * np.array([0.22, 0.17, 0.11]) * r.hair[..., None]
    named["blush"] += sk * np.array([0.05, -0.03, -0.01]) * r.cheeks[..., None]
    named["stubble"] += sk * np.array([-0.16, -0.14, -0.11]) * (r.stubble * skin_only)[..., None]
    named["under_eye"] += sk * np.array([-0.05, -0.06, -0.04]) * r.under_eye[..., None]

    # --- eyeballs
    for label in (PART_LEFT_EYE, PART_RIGHT_EYE):
        alpha, beta, inside = _polar(u, v, EYE_UV[label])
        a = np.degrees(alpha)
        streaks = 0.5 + 0.5 * np.sin(beta * 23.0 + 3.0 * np.sin(beta * 7.0))
        iris = (
            IRIS
            * (0.85 + 0.3 * streaks[..., None])
            * (1 - 0.35 * smoothstep(24.0, 30.0, a)[..., None])
        )
        eye = _mix(
            np.broadcast_to(SCLERA, (*a.shape, 3))
            * (1 - 0.08 * smoothstep(60.0, 90.0, a)[..., None])
            + smoothstep(70.0, 100.0, a)[..., None] * np.array([0.02, -0.06, -0.06]),
            iris,
            smoothstep(30.5, 29.0, a),
        )
        eye = _mix(eye, np.array([0.02, 0.02, 0.02]), smoothstep(11.0, 9.5, a))
        eye = _mix(
            eye,
            np.array([0.95, 0.95, 0.95]),
            _gauss2(a * np.cos(beta) + 9.0, a * np.sin(beta) - 9.0, 2.0, 2.0),
        )
        mean[inside] = eye[inside]
        iris_mask = (smoothstep(30.5, 29.0, a) * smoothstep(9.5, 11.0, a))[..., None]
        named["iris_blue"][inside] = (iris_mask * np.array([-0.10, 0.08, 0.30]))[inside]

    # --- mouth cavity: teeth in front, tongue below, dark elsewhere
    alpha, beta, inside = _polar(u, v, MOUTH_UV)
    a = np.degrees(alpha)
    up = np.sin(beta)
    teeth_band = (
        smoothstep(22.0, 30.0, a) * smoothstep(75.0, 65.0, a) * smoothstep(0.15, 0.35, np.abs(up))
    )
    gaps = 0.9 + 0.1 * np.cos(np.cos(beta) * 40.0)
    mouth = _mix(
        np.broadcast_to(MOUTH, (*a.shape, 3)),
        TONGUE,
        smoothstep(-0.5, -0.8, up) * smoothstep(60.0, 80.0, a),
    )
    mouth = _mix(mouth, TEETH * gaps[..., None], teeth_band)
    mean[inside] = mouth[inside]

    for k, (name, _) in enumerate(ALBEDO_COMPONENTS[:n_components]):
        basis[..., k] = named[name]
    rng = np.random.default_rng(seed + 5)
    for k in range(len(ALBEDO_COMPONENTS), n_components):
        amp = 0.035 / (1.0 + (k - len(ALBEDO_COMPONENTS)) / 10.0)
        field = _value_noise(p, rng.uniform(60.0, 400.0), seed + 100 + k)[..., None]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        basis[..., k] = sk * skin_only[..., None] * field * direction * amp
    return AlbedoSpaceData(mean.astype(np.float32), basis.astype(np.float32), "builtin")


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t)[..., None] if np.ndim(t) == np.ndim(a) - 1 else t
    return a * (1 - t) + b * t


def uv_region_masks(
    mesh: HeadMesh, size: int = 256, anatomy: Anatomy = ANATOMY
) -> tuple[np.ndarray, np.ndarray]:
    """The built-in head's (face-and-eyes, face) UV masks, (size, size) float32 in {0, 1}:
    the front of the skin between chin and hairline, ears and neck excluded; the face mask
    also leaves out the eye openings (as DECA's two masks do)."""
    u, v = _texel_grid(size)
    skin = v >= SKIN_UV_V[0]
    p = _skin_points(mesh, u, v)
    r = _Regions(p, mesh, anatomy)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    e = anatomy.eye(+1)
    face = skin & (z > 0.035) & (y > -0.098) & (y < e[1] + 0.03) & (np.abs(x) < 0.062)
    face &= (r.hair < 0.5) & (r.ears < 0.5)
    eyes = np.hypot((np.abs(x) - e[0]) / 0.016, (y - e[1]) / 0.009) < 1.0
    return face.astype(np.float32), (face & ~eyes).astype(np.float32)

"""Tessellation of the built-in head: a ray-cast skin grid, two eyeballs and a mouth cavity.

The skin is star-shaped about ``Anatomy.cast_center``: every grid node is the first exit of a
ray through the signed distance field, so the grid has a ring/column structure that the rig,
bases, landmarks and texture all use. Columns are denser at the front, rings denser over the
face. The mouth is a slit along one ring: lower-lip vertices are duplicated so the jaw can
open it. The mesh is exactly mirror-symmetric in x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emorig.flame.builtin.sculpt import ANATOMY, Anatomy, head_sdf

PART_SKIN, PART_LEFT_EYE, PART_RIGHT_EYE, PART_MOUTH = 0, 1, 2, 3

# UV atlas: skin on top, then left eye, right eye and mouth cavity along the bottom strip.
SKIN_UV_V = (0.26, 1.0)
EYE_UV = {PART_LEFT_EYE: (0.0, 0.0, 0.25), PART_RIGHT_EYE: (0.25, 0.0, 0.25)}  # (u0, v0, size)
MOUTH_UV = (0.5, 0.0, 0.25)

N_COLUMNS = 100
COLUMN_WARP = 0.4  # share of linear term in theta(u); smaller = denser front
# Rings: (elevation knot in degrees, rings from the previous knot). "mouth" is found numerically.
LOWER_KNOTS = ((-62.0, 4), (-40.0, 6), ("mouth", 6))
UPPER_KNOTS = ((-15.0, 6), (-5.0, 6), (14.0, 14), (30.0, 6), (82.0, 7))
EYE_ALPHAS = (6, 12, 18, 24, 30, 36, 48, 64, 84, 108, 134, 160)  # degrees from the front pole
EYE_SEGMENTS = 16
MOUTH_ALPHAS = (15, 35, 55, 75, 95, 115, 135, 160)
MOUTH_SEGMENTS = 16


@dataclass(frozen=True)
class HeadMesh:
    """The tessellated rest shape and the bookkeeping the rest of the generator needs.

    Attributes:
        vertices: (V, 3) rest positions.
        faces: (F, 3) int64 counter-clockwise triangles.
        uv: (T, 2) texture coordinates, v up.
        uv_faces: (F, 3) int64.
        part: (V,) PART_* label per vertex.
        ring, column: (V,) grid indices of skin vertices (-1 elsewhere).
        lower_lip: (V,) bool, the duplicated slit vertices used by the lower lip.
        grid: (R, C, 3) skin grid positions (without the pole and slit duplicates).
        grid_phi: (R, C) elevation of every grid node, radians.
        theta: (C,) azimuth of every column, radians (0 = front).
        mouth_ring: ring index of the slit; mouth_columns: columns with duplicated vertices.
        mirror: (V,) index of each vertex's mirror image (x -> -x).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    uv_faces: np.ndarray
    part: np.ndarray
    ring: np.ndarray
    column: np.ndarray
    lower_lip: np.ndarray
    grid: np.ndarray
    grid_phi: np.ndarray
    theta: np.ndarray
    mouth_ring: int
    mouth_columns: np.ndarray
    mirror: np.ndarray
    pole: int


def column_theta(u: np.ndarray) -> np.ndarray:
    """Texture u in [0, 1] -> azimuth; u = 0.5 faces forward, u = 0 and 1 meet at the back."""
    x = 2.0 * u - 1.0
    return np.pi * (COLUMN_WARP * x + (1.0 - COLUMN_WARP) * x**3)


def ray_directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Azimuth (about +y, 0 = +z) and elevation -> unit directions (..., 3)."""
    c = np.cos(phi)
    return np.stack([c * np.sin(theta), np.sin(phi), c * np.cos(theta)], axis=-1)


def cast(
    directions: np.ndarray, anatomy: Anatomy = ANATOMY, t_max: float = 0.34, step: float = 0.002
) -> np.ndarray:
    """First exit point of each ray from ``anatomy.cast_center`` through the skin SDF."""
    center = np.asarray(anatomy.cast_center)
    flat = directions.reshape(-1, 3)
    ts = np.arange(step, t_max, step)
    out = np.empty_like(flat)
    for start in range(0, flat.shape[0], 2048):
        d = flat[start : start + 2048]
        pts = center + ts[None, :, None] * d[:, None, :]
        inside = head_sdf(pts.reshape(-1, 3), anatomy).reshape(d.shape[0], -1) < 0
        exit_idx = np.argmax(~inside, axis=1)  # first sample outside
        if not inside[:, 0].all() or (exit_idx == 0).any():
            raise RuntimeError("built-in head: a ray starts outside the skin")
        lo, hi = ts[exit_idx - 1], ts[exit_idx]
        for _ in range(28):  # bisection to below 1e-11 m
            mid = 0.5 * (lo + hi)
            outside = head_sdf(center + mid[:, None] * d, anatomy) >= 0
            hi = np.where(outside, mid, hi)
            lo = np.where(outside, lo, mid)
        out[start : start + 2048] = center + hi[:, None] * d
    return out.reshape(directions.shape)


def neck_bottom_phi(theta: np.ndarray, anatomy: Anatomy = ANATOMY) -> np.ndarray:
    """Elevation at which a ray meets the neck cylinder at ``anatomy.neck_bottom``."""
    cx, _, cz = anatomy.cast_center
    nx, nz = anatomy.neck_center
    dx, dz = np.sin(theta), np.cos(theta)
    ox, oz = cx - nx, cz - nz
    # |o + s d| = r, larger root
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - anatomy.neck_radius**2
    s = -b + np.sqrt(b * b - c)
    return np.arctan2(anatomy.neck_bottom - anatomy.cast_center[1], s)


def find_mouth_phi(anatomy: Anatomy = ANATOMY) -> float:
    """Elevation of the lip crease on the mid-line: the local minimum of depth between the
    lips nearest to ``anatomy.mouth_y``."""
    phi = np.radians(np.linspace(-40.0, -15.0, 1001))
    pts = cast(ray_directions(np.zeros_like(phi), phi), anatomy)
    z = pts[:, 2]
    minima = np.flatnonzero((z[1:-1] < z[:-2]) & (z[1:-1] < z[2:])) + 1
    if minima.size == 0:
        raise RuntimeError("built-in head: no lip crease found")
    best = minima[np.argmin(np.abs(pts[minima, 1] - anatomy.mouth_y))]
    return float(phi[best])


def _ring_phis(theta: np.ndarray, mouth_phi: float, anatomy: Anatomy) -> np.ndarray:
    """(R, C) elevation of every ring node."""
    bottom = neck_bottom_phi(theta, anatomy)
    columns = []
    for k, th in enumerate(theta):
        phis = [bottom[k]]
        prev = bottom[k]
        for knot, n in LOWER_KNOTS + UPPER_KNOTS:
            target = mouth_phi if knot == "mouth" else np.radians(knot)
            phis.extend(np.linspace(prev, target, n + 1)[1:])
            prev = target
        columns.append(phis)
        del th
    return np.asarray(columns).T


POLAR_EXPONENT = 0.6  # < 1 gives the front (iris, teeth) more texels


def polar_radius(alpha: np.ndarray, size: float) -> np.ndarray:
    """UV distance from a polar box's centre for the angle ``alpha`` from the front pole."""
    return 0.5 * size * 0.96 * (np.asarray(alpha) / np.pi) ** POLAR_EXPONENT


def polar_angle(radius: np.ndarray, size: float) -> np.ndarray:
    """Inverse of :func:`polar_radius`."""
    return np.pi * (np.asarray(radius) / (0.5 * size * 0.96)) ** (1.0 / POLAR_EXPONENT)


def _sphere_part(
    center: np.ndarray,
    radii: np.ndarray,
    alphas_deg,
    segments: int,
    uv_box: tuple[float, float, float],
    yaw: float = 0.0,
):
    """A sphere-like part with its pole facing +z turned by ``yaw`` about +y: vertices,
    faces (CCW outward), uvs."""
    alphas = np.radians(np.asarray(alphas_deg, dtype=float))
    betas = 2 * np.pi * np.arange(segments) / segments
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    local = np.stack([np.sin(a) * np.cos(b), np.sin(a) * np.sin(b), np.cos(a)], -1)
    c, s = np.cos(yaw), np.sin(yaw)
    turn = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    verts = [np.array([0.0, 0.0, 1.0])]  # front pole
    verts.extend(local.reshape(-1, 3))
    verts.append(np.array([0.0, 0.0, -1.0]))  # back pole
    verts = center + radii * (np.asarray(verts) @ turn.T)
    n_rings = len(alphas)
    back = 1 + n_rings * segments

    def vid(r, s):
        return 1 + r * segments + (s % segments)

    faces = []
    for s in range(segments):
        faces.append((0, vid(0, s), vid(0, s + 1)))
    for r in range(n_rings - 1):
        for s in range(segments):
            faces.append((vid(r, s), vid(r + 1, s), vid(r + 1, s + 1)))
            faces.append((vid(r, s), vid(r + 1, s + 1), vid(r, s + 1)))
    for s in range(segments):
        faces.append((vid(n_rings - 1, s), back, vid(n_rings - 1, s + 1)))
    # polar uv layout: radius grows with the angle from the front pole
    u0, v0, size = uv_box
    alpha_all = np.concatenate([[0.0], a.reshape(-1), [np.pi]])
    beta_all = np.concatenate([[0.0], b.reshape(-1), [0.0]])
    rad = polar_radius(alpha_all, size)
    uv = np.stack(
        [u0 + 0.5 * size + rad * np.cos(beta_all), v0 + 0.5 * size + rad * np.sin(beta_all)], -1
    )
    faces = np.asarray(faces, dtype=np.int64)
    return verts, faces, uv, faces.copy()


@dataclass(frozen=True)
class _SkinGrid:
    """The cast skin grid: column azimuths, ring elevations, positions and the top pole."""

    theta: np.ndarray  # (C,)
    phi: np.ndarray  # (R, C)
    grid: np.ndarray  # (R, C, 3)
    pole: np.ndarray  # (3,)
    mouth_ring: int

    @property
    def n_ring(self) -> int:
        return self.phi.shape[0]

    @property
    def n_col(self) -> int:
        return self.theta.shape[0]


@dataclass(frozen=True)
class _Slit:
    """Vertex ids of the skin grid with the mouth slit's lower-lip duplicates."""

    vid: np.ndarray  # (R, C) grid vertex ids
    lower_id: np.ndarray  # (R, C) the same with the slit's lower-lip copies
    pole_id: int
    mouth_cols: np.ndarray  # columns inside the mouth, corners included
    slit_cols: np.ndarray  # columns with a duplicated vertex (corners excluded)
    dup_ids: np.ndarray  # ids of the duplicates
    n_skin: int


def _cast_skin_grid(anatomy: Anatomy) -> _SkinGrid:
    """Cast the ring/column grid and the top pole, exactly mirror-symmetric in x."""
    n_col = N_COLUMNS
    u = np.arange(n_col) / n_col
    theta = column_theta(u)
    theta[n_col // 2] = 0.0
    mouth_phi = find_mouth_phi(anatomy)
    phi = _ring_phis(theta, mouth_phi, anatomy)  # (R, C)
    grid = cast(ray_directions(np.broadcast_to(theta, phi.shape), phi), anatomy)
    # enforce exact mirror symmetry: column j mirrors column (C - j) % C
    mirror_col = (n_col - np.arange(n_col)) % n_col
    grid = 0.5 * (grid + grid[:, mirror_col] * np.array([-1.0, 1.0, 1.0]))
    pole = cast(ray_directions(np.zeros(1), np.full(1, np.pi / 2)), anatomy)[0]
    pole[0] = 0.0
    mouth_ring = sum(n for _, n in LOWER_KNOTS)
    return _SkinGrid(theta, phi, grid, pole, mouth_ring)


def _open_slit(skin: _SkinGrid, anatomy: Anatomy) -> _Slit:
    """Number the grid vertices and duplicate the slit's inner columns for the lower lip."""
    n_ring, n_col = skin.n_ring, skin.n_col
    vid = np.arange(n_ring * n_col).reshape(n_ring, n_col)
    pole_id = n_ring * n_col
    corner = anatomy.mouth_half_width
    xs = skin.grid[skin.mouth_ring, :, 0]
    front = np.abs(skin.theta) < np.pi / 2
    inside = front & (np.abs(xs) < corner)
    # the corners are the last columns inside; they stay shared by both lips
    mouth_cols = np.flatnonzero(inside)
    slit_cols = mouth_cols[1:-1]
    dup_ids = pole_id + 1 + np.arange(len(slit_cols))
    lower_id = vid.copy()
    lower_id[skin.mouth_ring, slit_cols] = dup_ids
    n_skin = pole_id + 1 + len(slit_cols)
    return _Slit(vid, lower_id, pole_id, mouth_cols, slit_cols, dup_ids, n_skin)


def _skin_uv_grid(n_ring: int, n_col: int) -> np.ndarray:
    """(R, C + 1, 2) texture coordinates of the grid nodes (the seam column twice)."""
    return np.stack(
        np.meshgrid(
            np.arange(n_col + 1) / n_col,
            SKIN_UV_V[0] + (SKIN_UV_V[1] - SKIN_UV_V[0] - 0.02) * np.arange(n_ring) / (n_ring - 1),
            indexing="xy",
        ),
        -1,
    )


def _skin_faces(skin: _SkinGrid, slit: _Slit) -> tuple[list, list, list[np.ndarray]]:
    """Triangles and uv triangles of the skin (grid quads, then the pole fan) and its uvs."""
    n_ring, n_col, mouth_ring = skin.n_ring, skin.n_col, skin.mouth_ring
    vid, lower_id = slit.vid, slit.lower_id
    faces, uv_faces = [], []
    uv_cols = n_col + 1
    uv_grid = _skin_uv_grid(n_ring, n_col)
    uv_id = np.arange(n_ring * uv_cols).reshape(n_ring, uv_cols)
    for i in range(n_ring - 1):
        ids = lower_id if i < mouth_ring else vid  # rings below the slit use the lower lip copy
        for j in range(n_col):
            jn = (j + 1) % n_col
            a, b = ids[i, j], ids[i, jn]
            c, d = vid[i + 1, jn], vid[i + 1, j]
            if i + 1 == mouth_ring:
                c, d = lower_id[i + 1, jn], lower_id[i + 1, j]
            ua, ub, uc, ud = uv_id[i, j], uv_id[i, j + 1], uv_id[i + 1, j + 1], uv_id[i + 1, j]
            if j >= n_col // 2:  # +x side: diagonal a-c; mirrored on the other side
                faces += [(a, b, c), (a, c, d)]
                uv_faces += [(ua, ub, uc), (ua, uc, ud)]
            else:
                faces += [(a, b, d), (b, c, d)]
                uv_faces += [(ua, ub, ud), (ub, uc, ud)]
    pole_uv0 = n_ring * uv_cols
    for j in range(n_col):
        jn = (j + 1) % n_col
        faces.append((vid[-1, j], vid[-1, jn], slit.pole_id))
        uv_faces.append((uv_id[-1, j], uv_id[-1, j + 1], pole_uv0 + j))
    uv = [
        uv_grid.reshape(-1, 2),
        np.stack([(np.arange(n_col) + 0.5) / n_col, np.full(n_col, SKIN_UV_V[1])], -1),
    ]
    return faces, uv_faces, uv


def _inner_parts(anatomy: Anatomy) -> list[tuple]:
    """(label, center, radii, alphas, segments, uv box, yaw) of the eyeballs and mouth cavity."""
    return [
        (
            PART_LEFT_EYE,
            anatomy.eye(+1),
            np.full(3, anatomy.eye_radius),
            EYE_ALPHAS,
            EYE_SEGMENTS,
            EYE_UV[PART_LEFT_EYE],
            np.arctan(anatomy.eye_gaze_outward),
        ),
        (
            PART_RIGHT_EYE,
            anatomy.eye(-1),
            np.full(3, anatomy.eye_radius),
            EYE_ALPHAS,
            EYE_SEGMENTS,
            EYE_UV[PART_RIGHT_EYE],
            -np.arctan(anatomy.eye_gaze_outward),
        ),
        (
            PART_MOUTH,
            np.array(anatomy.mouth_cavity_center),
            np.array(anatomy.mouth_cavity_radii),
            MOUTH_ALPHAS,
            MOUTH_SEGMENTS,
            MOUTH_UV,
            0.0,
        ),
    ]


def _grid_labels(skin: _SkinGrid, slit: _Slit, n_vertices: int):
    """(V,) ring and column of every skin vertex (-1 elsewhere) and the lower-lip mask."""
    n_ring, n_col = skin.n_ring, skin.n_col
    ring = np.full(n_vertices, -1)
    column = np.full(n_vertices, -1)
    ring[: n_ring * n_col] = np.repeat(np.arange(n_ring), n_col)
    column[: n_ring * n_col] = np.tile(np.arange(n_col), n_ring)
    ring[slit.dup_ids] = skin.mouth_ring
    column[slit.dup_ids] = slit.slit_cols
    lower_lip = np.zeros(n_vertices, dtype=bool)
    lower_lip[slit.dup_ids] = True
    return ring, column, lower_lip


def build_mesh(anatomy: Anatomy = ANATOMY) -> HeadMesh:
    """Tessellate the sculpture. Deterministic; about a second on one CPU core."""
    skin = _cast_skin_grid(anatomy)
    slit = _open_slit(skin, anatomy)
    # --- skin vertices: grid, pole, slit duplicates
    verts = [
        skin.grid.reshape(-1, 3),
        skin.pole[None],
        skin.grid[skin.mouth_ring, slit.slit_cols],
    ]
    faces, uv_faces, uv = _skin_faces(skin, slit)
    part = [np.full(slit.n_skin, PART_SKIN)]
    all_verts = np.concatenate(verts)
    faces = np.asarray(faces, dtype=np.int64)
    uv_faces = np.asarray(uv_faces, dtype=np.int64)
    n_uv = sum(x.shape[0] for x in uv)

    # --- eyeballs and mouth cavity
    face_list, uvf_list, vert_list, uv_list = [faces], [uv_faces], [all_verts], uv
    n_v = all_verts.shape[0]
    for label, center, radii, alphas, segs, box, yaw in _inner_parts(anatomy):
        v, f, t, tf = _sphere_part(center, radii, alphas, segs, box, yaw)
        vert_list.append(v)
        face_list.append(f + n_v)
        uv_list.append(t)
        uvf_list.append(tf + n_uv)
        part.append(np.full(v.shape[0], label))
        n_v += v.shape[0]
        n_uv += t.shape[0]

    vertices = np.concatenate(vert_list)
    part_arr = np.concatenate(part)
    ring, column, lower_lip = _grid_labels(skin, slit, vertices.shape[0])
    mirror = _mirror_map(
        skin.n_ring, skin.n_col, slit.pole_id, slit.slit_cols, slit.dup_ids, part_arr
    )
    return HeadMesh(
        vertices=vertices,
        faces=np.concatenate(face_list),
        uv=np.concatenate(uv_list),
        uv_faces=np.concatenate(uvf_list),
        part=part_arr,
        ring=ring,
        column=column,
        lower_lip=lower_lip,
        grid=skin.grid,
        grid_phi=skin.phi,
        theta=skin.theta,
        mouth_ring=skin.mouth_ring,
        mouth_columns=slit.mouth_cols,
        mirror=mirror,
        pole=slit.pole_id,
    )


def _mirror_map(
    n_ring: int,
    n_col: int,
    pole_id: int,
    slit_cols: np.ndarray,
    dup_ids: np.ndarray,
    part: np.ndarray,
) -> np.ndarray:
    """Index of the mirror image (x -> -x) of every vertex, from the construction itself:
    grid column j mirrors column (C - j) % C, sphere segment s mirrors (S/2 - s) % S."""
    out = np.arange(part.shape[0])
    grid = np.arange(n_ring * n_col).reshape(n_ring, n_col)
    out[: n_ring * n_col] = grid[:, (n_col - np.arange(n_col)) % n_col].reshape(-1)
    dup_of_col = dict(zip(slit_cols.tolist(), dup_ids.tolist(), strict=True))
    for col, vid in dup_of_col.items():
        out[vid] = dup_of_col[(n_col - col) % n_col]
    out[pole_id] = pole_id

    def sphere_mirror(start: int, n_rings: int, segments: int) -> np.ndarray:
        ids = np.arange(n_rings * segments).reshape(n_rings, segments)
        mirrored = ids[:, (segments // 2 - np.arange(segments)) % segments].reshape(-1)
        return np.concatenate([[start], start + 1 + mirrored, [start + 1 + n_rings * segments]])

    left = np.flatnonzero(part == PART_LEFT_EYE)
    right = np.flatnonzero(part == PART_RIGHT_EYE)
    mouth = np.flatnonzero(part == PART_MOUTH)
    out[left] = sphere_mirror(right[0], len(EYE_ALPHAS), EYE_SEGMENTS)
    out[right] = sphere_mirror(left[0], len(EYE_ALPHAS), EYE_SEGMENTS)
    out[mouth] = sphere_mirror(mouth[0], len(MOUTH_ALPHAS), MOUTH_SEGMENTS)
    return out

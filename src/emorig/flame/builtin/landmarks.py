"""The built-in head's 68-landmark embedding, in DECA's layout.

Inner-face points (iBUG 17-67) are placed on the sculpture's features and embedded in the
skin as (face, barycentric) pairs: lip points on the correct side of the mouth slit, lid
points on the lid margins, so they follow the jaw and the blink. The 17 contour points
(iBUG 0-16) are silhouette points of the face region, recomputed for each of DECA's 79 yaw
rows (rows 0..39 = yaw 0..39 degrees, rows 40..78 = yaw -1..-39 degrees, as
:func:`emorig.geometry.contour_lut_row` indexes them).
"""

from __future__ import annotations

import numpy as np

from emorig.flame.builtin.bases import _vertex_normals
from emorig.flame.builtin.mesh import PART_SKIN, HeadMesh, cast
from emorig.flame.builtin.sculpt import ANATOMY, Anatomy
from emorig.flame.data import LandmarkEmbedding

CONTOUR_START_DEG = 168.0  # direction of iBUG point 0 from the centre of the sweep
CONTOUR_TOP = 0.031  # contour points stay below the eyes' upper lids (metres)


def closest_on_triangles(point: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of each triangle to ``point``. tri (F, 3, 3) -> (distances (F,), bary (F, 3)).

    Ericson, Real-Time Collision Detection, 5.1.5, vectorised over triangles.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac, ap = b - a, c - a, point - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = point - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = point - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    denom = np.where(np.abs(va + vb + vc) < 1e-30, 1e-30, va + vb + vc)
    v = vb / denom
    w = vc / denom
    bary = np.stack([1 - v - w, v, w], 1)
    # vertex and edge regions
    regions = [
        ((d1 <= 0) & (d2 <= 0), lambda: (np.ones_like(d1), 0 * d1, 0 * d1)),
        ((d3 >= 0) & (d4 <= d3), lambda: (0 * d1, np.ones_like(d1), 0 * d1)),
        ((d6 >= 0) & (d5 <= d6), lambda: (0 * d1, 0 * d1, np.ones_like(d1))),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    edge_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    edge_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    edge_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    bary = np.where(edge_bc[:, None], np.stack([0 * d1, 1 - t_bc, t_bc], 1), bary)
    bary = np.where(edge_ac[:, None], np.stack([1 - t_ac, 0 * d1, t_ac], 1), bary)
    bary = np.where(edge_ab[:, None], np.stack([1 - t_ab, t_ab, 0 * d1], 1), bary)
    for mask, make in regions:
        bary = np.where(mask[:, None], np.stack(make(), 1), bary)
    bary = np.nan_to_num(bary)
    closest = (tri * bary[:, :, None]).sum(1)
    return np.linalg.norm(closest - point, axis=1), bary


def embed_point(mesh: HeadMesh, point: np.ndarray, allowed: np.ndarray) -> tuple[int, np.ndarray]:
    """(face, bary) of the closest surface point among ``allowed`` faces."""
    ids = np.flatnonzero(allowed)
    dist, bary = closest_on_triangles(point, mesh.vertices[mesh.faces[ids]])
    k = int(np.argmin(dist))
    return int(ids[k]), bary[k]


def _surface_at(x: float, y: float, anatomy: Anatomy, z_guess: float = 0.09) -> np.ndarray:
    """The frontal skin point with the given x and y (the first skin hit seen from the front),
    found by re-aiming a ray from the cast centre until its hit has that x and y."""
    c = np.asarray(anatomy.cast_center)
    target = np.array([x, y, z_guess])
    hit = target
    for _ in range(12):
        d = target - c
        hit = cast((d / np.linalg.norm(d))[None], anatomy)[0]
        err = np.array([x - hit[0], y - hit[1]])
        if np.abs(err).max() < 1e-7:
            break
        # move the aim point by the error, scaled by how far the target is beyond the hit
        gain = (target[2] - c[2]) / max(hit[2] - c[2], 1e-3)
        target = target + np.array([err[0] * gain, err[1] * gain, 0.0])
    return hit


def _face_masks(mesh: HeadMesh, jaw: np.ndarray) -> dict[str, np.ndarray]:
    skin_face = (mesh.part[mesh.faces] == PART_SKIN).all(1)
    fj = jaw[mesh.faces].mean(1)
    return {"skin": skin_face, "upper": skin_face & (fj < 0.3), "lower": skin_face & (fj > 0.7)}


def static_landmarks(mesh: HeadMesh, jaw: np.ndarray, openings: dict, anatomy: Anatomy = ANATOMY):
    """iBUG points 17..67 as (faces (51,), bary (51, 3)) plus their template positions."""
    masks = _face_masks(mesh, jaw)
    v = mesh.vertices
    pts: list[tuple[np.ndarray, str]] = []
    # brows 17-21 (subject's right, outer -> inner), 22-26 (left, inner -> outer)
    e = anatomy.eye(+1)
    brow_x = np.array([0.050, 0.042, 0.033, 0.023, 0.013])
    brow_y = e[1] + np.array([0.011, 0.016, 0.018, 0.0175, 0.015])
    for side, order in ((-1, range(5)), (+1, reversed(range(5)))):
        for k in order:
            pts.append((_surface_at(side * brow_x[k], brow_y[k], anatomy), "skin"))
    # nose bridge 27-30: nasion down to the tip (the most forward mid-line point)
    mid = np.flatnonzero(
        (np.abs(v[:, 0]) < 1e-6) & (mesh.part == PART_SKIN) & (v[:, 1] > -0.02) & (v[:, 1] < e[1])
    )
    tip = v[mid[np.argmax(v[mid, 2])]]
    nasion = _surface_at(0.0, e[1] + 0.002, anatomy)
    for t in np.linspace(0.0, 1.0, 4):
        q = nasion + t * (tip - nasion)
        pts.append((_surface_at(0.0, q[1], anatomy), "skin"))
    # nostrils 31-35 along the nose base, subject's right to left
    for x, dy in ((-0.0135, 0.0), (-0.007, -0.002), (0.0, -0.003), (0.007, -0.002), (0.0135, 0.0)):
        pts.append((_surface_at(x, -0.0165 + dy, anatomy), "upper"))
    # eyes 36-41 (right: outer corner, upper x2, inner corner, lower x2), 42-47 (left)
    for side in (-1, +1):
        op = openings[side]
        cols = sorted(op, key=lambda j: op[j][0])
        xs = np.array([op[j][0] for j in cols])
        lo = np.array([op[j][1] for j in cols])
        up = np.array([op[j][2] for j in cols])
        x_in, x_out = (xs.max(), xs.min()) if side < 0 else (xs.min(), xs.max())
        y_in = 0.5 * (np.interp(x_in, xs, lo) + np.interp(x_in, xs, up))
        y_out = 0.5 * (np.interp(x_out, xs, lo) + np.interp(x_out, xs, up))

        def lid(frac, which, x_out=x_out, x_in=x_in, xs=xs, up=up, lo=lo):
            x = x_out + frac * (x_in - x_out)
            y = np.interp(x, xs, up if which == "up" else lo)
            return _surface_at(x, y + (0.0004 if which == "up" else -0.0004), anatomy)

        corner_out = _surface_at(x_out, y_out, anatomy)
        corner_in = _surface_at(x_in, y_in, anatomy)
        if side < 0:  # 36 outer, 37 38 upper (outer->inner), 39 inner, 40 41 lower (inner->outer)
            seq = [
                corner_out,
                lid(1 / 3, "up"),
                lid(2 / 3, "up"),
                corner_in,
                lid(2 / 3, "lo"),
                lid(1 / 3, "lo"),
            ]
        else:  # 42 inner, 43 44 upper (inner->outer), 45 outer, 46 47 lower (outer->inner)
            seq = [
                corner_in,
                lid(2 / 3, "up"),
                lid(1 / 3, "up"),
                corner_out,
                lid(1 / 3, "lo"),
                lid(2 / 3, "lo"),
            ]
        pts.extend((q, "skin") for q in seq)
    # mouth: outer 48-59, inner 60-67
    ring, cols = mesh.mouth_ring, mesh.mouth_columns
    corner_l = v[(mesh.ring == ring) & (mesh.column == cols[-1]) & ~mesh.lower_lip][0]
    corner_r = corner_l * np.array([-1.0, 1.0, 1.0])
    my = corner_l[1]
    half = corner_l[0]
    outer_up = [(-0.6, 0.0060), (-0.25, 0.0085), (0.0, 0.0075), (0.25, 0.0085), (0.6, 0.0060)]
    outer_lo = [(0.6, -0.0085), (0.25, -0.0110), (0.0, -0.0115), (-0.25, -0.0110), (-0.6, -0.0085)]
    pts.append((corner_r, "upper"))
    pts.extend((_surface_at(f * half, my + dy, anatomy), "upper") for f, dy in outer_up)
    pts.append((corner_l, "upper"))
    pts.extend((_surface_at(f * half, my + dy, anatomy), "lower") for f, dy in outer_lo)
    slit = mesh.grid[ring]
    slit_x = slit[cols, 0]

    def on_slit(f):
        x = f * half
        return np.array(
            [x, np.interp(x, slit_x, slit[cols, 1]), np.interp(x, slit_x, slit[cols, 2])]
        )

    pts.append((corner_r, "upper"))
    pts.extend((on_slit(f), "upper") for f in (-0.45, 0.0, 0.45))
    pts.append((corner_l, "upper"))
    pts.extend((on_slit(f), "lower") for f in (0.45, 0.0, -0.45))
    assert len(pts) == 51
    faces, bary = zip(*(embed_point(mesh, q, masks[m]) for q, m in pts), strict=True)
    return np.asarray(faces, dtype=np.int64), np.asarray(bary), np.asarray([q for q, _ in pts])


def contour_candidates(mesh: HeadMesh, jaw: np.ndarray) -> np.ndarray:
    """Skin vertices that may carry a contour landmark: the face in front of the ears, down
    to and including the underside of the jaw, but not the neck below it.

    Per column the neck starts below the ring where the surface faces most downwards under
    the mouth (the underside of the jaw); columns without such a ledge stop at y = -0.075.
    """
    v = mesh.vertices
    n = _vertex_normals(mesh)
    skin = (mesh.part == PART_SKIN) & (mesh.column >= 0) & ~mesh.lower_lip
    theta = mesh.theta[np.maximum(mesh.column, 0)]
    keep = skin & (np.abs(theta) < np.radians(80)) & (v[:, 1] < CONTOUR_TOP)
    keep &= ~((np.abs(v[:, 0]) > 0.064) & (v[:, 1] > -0.035))  # ears
    for j in range(mesh.theta.size):
        ids = np.flatnonzero(skin & (mesh.column == j))
        low = ids[v[ids, 1] < -0.045]
        if low.size == 0:
            continue
        ledge = low[np.argmin(n[low, 1])]
        if n[ledge, 1] < -0.45:
            keep[ids[mesh.ring[ids] < mesh.ring[ledge]]] = False
        else:
            keep[ids[v[ids, 1] < -0.075]] = False
    return keep


def _rot_y(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def contour_vertices(mesh: HeadMesh, jaw: np.ndarray, yaw_deg: float) -> np.ndarray:
    """(17,) vertex ids of the contour landmarks seen at ``yaw_deg`` (image left to right)."""
    cand = np.flatnonzero(contour_candidates(mesh, jaw))
    v = mesh.vertices @ _rot_y(yaw_deg).T
    # centre of the angular sweep: on the mid-line, between the eyes and the nose tip
    nose = mesh.vertices[np.argmax(np.where(mesh.part == PART_SKIN, mesh.vertices[:, 2], -1))]
    center = (np.array([0.0, 0.012, nose[2]]) @ _rot_y(yaw_deg).T)[:2]
    rel = v[cand, :2] - center
    ang = np.degrees(np.arctan2(rel[:, 1], rel[:, 0])) % 360.0
    rad = np.linalg.norm(rel, axis=1)
    # from image-left at the height of the outer eye corners (iBUG 0, beside the ear), round
    # the chin, to image-right (iBUG 16)
    targets = np.linspace(CONTOUR_START_DEG, 540.0 - CONTOUR_START_DEG, 17) % 360.0
    out = []
    for t in targets:
        diff = np.abs((ang - t + 180.0) % 360.0 - 180.0)
        window = diff < 4.0
        if not window.any():
            window = diff <= diff.min() + 1e-9
        k = np.flatnonzero(window)[np.argmax(rad[window])]
        out.append(cand[k])
    return np.asarray(out)


def _vertex_as_face(mesh: HeadMesh, vid: int) -> tuple[int, np.ndarray]:
    f = int(np.flatnonzero((mesh.faces == vid).any(1))[0])
    bary = (mesh.faces[f] == vid).astype(float)
    return f, bary


def landmark_embedding(
    mesh: HeadMesh, jaw: np.ndarray, openings: dict, anatomy: Anatomy = ANATOMY
) -> LandmarkEmbedding:
    static_faces, static_bary, _ = static_landmarks(mesh, jaw, openings, anatomy)
    rows = list(range(0, 40)) + [-(r - 39) for r in range(40, 79)]  # row -> yaw in degrees
    dyn_f = np.zeros((79, 17), dtype=np.int64)
    dyn_b = np.zeros((79, 17, 3))
    for r, yaw in enumerate(rows):
        for k, vid in enumerate(contour_vertices(mesh, jaw, float(yaw))):
            dyn_f[r, k], dyn_b[r, k] = _vertex_as_face(mesh, int(vid))
    full_f = np.concatenate([dyn_f[0], static_faces])
    full_b = np.concatenate([dyn_b[0], static_bary])
    return LandmarkEmbedding(static_faces, static_bary, dyn_f, dyn_b, full_f, full_b)

"""Identity (shape) and expression bases of the built-in head.

Both are linear displacement fields over the template, stored like FLAME's ``shapedirs``.
The leading components are designed by hand and have names (see :data:`SHAPE_COMPONENTS`
and :data:`EXPRESSION_COMPONENTS`); the remaining ones are smooth, seeded random fields
of decreasing amplitude so that every FLAME-sized coefficient vector is meaningful.

Scale: identity coefficient 1 is about one standard deviation (a few millimetres);
expression coefficient 1 is the full expression (0.3 to 1 covers everyday faces).
Eyeballs move rigidly with their socket under identity changes and not at all under
expressions; opening the mouth is the jaw joint's job, not an expression's.
"""

from __future__ import annotations

import numpy as np

from emorig.flame.builtin.mesh import (
    PART_LEFT_EYE,
    PART_MOUTH,
    PART_RIGHT_EYE,
    PART_SKIN,
    HeadMesh,
    cast,
    ray_directions,
)
from emorig.flame.builtin.rig import smoothstep
from emorig.flame.builtin.sculpt import ANATOMY, Anatomy

SHAPE_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("head_size", "whole head larger (+) or smaller (-)"),
    ("face_width", "wider (+) or narrower (-) head and face"),
    ("face_length", "longer (+) lower face: chin and mouth lower"),
    ("jaw_width", "broader (+) or more tapered (-) jaw"),
    ("nose_size", "larger, more protruding nose (+)"),
    ("nose_width", "wider nostrils and bridge (+)"),
    ("eye_spacing", "eyes and sockets further apart (+)"),
    ("chin_projection", "chin further forward (+)"),
    ("cheek_fullness", "fuller cheeks (+) or hollow (-)"),
    ("forehead_slope", "more upright (+) or sloping (-) forehead"),
    ("lip_fullness", "fuller lips (+)"),
    ("brow_ridge", "stronger brow ridge (+)"),
    ("head_depth", "longer skull front to back (+)"),
    ("mouth_width", "wider mouth (+)"),
    ("eye_height", "eyes set higher (+) or lower (-)"),
    ("ear_size", "larger ears (+)"),
)

EXPRESSION_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("smile", "mouth corners up and back, cheeks raised, lower lids lifted"),
    ("frown", "brows lowered and drawn together"),
    ("brow_raise", "brows and forehead lifted"),
    ("blink", "both upper lids closed at 1"),
    ("lip_pucker", "lips pushed forward and narrowed"),
    ("mouth_stretch", "mouth corners pulled sideways and down"),
    ("sad", "mouth corners down, inner brows up"),
    ("nose_wrinkle", "upper lip and nostrils lifted, brows slightly down"),
    ("lip_press", "lips pressed together and thinned"),
    ("eye_widen", "upper lids raised"),
    ("cheek_puff", "cheeks blown out"),
    ("smirk_left", "subject's left mouth corner up"),
    ("smirk_right", "subject's right mouth corner up"),
    ("blink_left", "subject's left upper lid closed at 1"),
    ("blink_right", "subject's right upper lid closed at 1"),
    ("lower_lip_down", "lower lip pulled down, showing the lower teeth"),
    ("upper_lip_raise", "upper lip raised, showing the upper teeth"),
    ("mouth_shift", "mouth moved towards the subject's left (+) or right (-)"),
    ("inner_brow_raise", "inner ends of the brows lifted"),
)


def _gauss(p: np.ndarray, center, sigma) -> np.ndarray:
    """Anisotropic Gaussian falloff; ``sigma`` scalar or per axis."""
    d = (p - np.asarray(center)) / np.asarray(sigma)
    return np.exp(-0.5 * (d * d).sum(-1))


def _mirror_sum(field_fn, p: np.ndarray) -> np.ndarray:
    """Symmetrise a field defined for the +x side: f(p) + M f(M p), M = diag(-1, 1, 1)."""
    m = np.array([-1.0, 1.0, 1.0])
    return field_fn(p) + field_fn(p * m) * m


class _Context:
    """Precomputed regions of the template used by the hand-made components."""

    def __init__(self, mesh: HeadMesh, jaw: np.ndarray, openings: dict, anatomy: Anatomy):
        self.mesh = mesh
        self.p = mesh.vertices
        self.anatomy = anatomy
        self.skin = (mesh.part == PART_SKIN).astype(float)
        self.jaw = jaw
        self.upper = (1.0 - jaw) * self.skin  # upper-lip side of the mouth slit
        self.lower = jaw * self.skin
        v = mesh.vertices
        ring = mesh.mouth_ring
        cols = mesh.mouth_columns
        self.corner_left = v[(mesh.ring == ring) & (mesh.column == cols[-1]) & ~mesh.lower_lip][0]
        self.mouth_center = v[
            (mesh.ring == ring) & (mesh.column == mesh.theta.size // 2) & ~mesh.lower_lip
        ][0]
        # faces region: front of the head above the throat
        y, z = v[:, 1], v[:, 2]
        self.face = self.skin * smoothstep(-0.02, 0.03, z) * smoothstep(-0.11, -0.09, y)
        self.openings = openings

    def rigid(self, disp: np.ndarray) -> np.ndarray:
        """Move eyeballs and the mouth cavity rigidly with the field at their centre."""
        out = disp.copy()
        for label in (PART_LEFT_EYE, PART_RIGHT_EYE, PART_MOUTH):
            ids = self.mesh.part == label
            out[ids] = disp[ids].mean(0)
        return out

    def skin_only(self, disp: np.ndarray) -> np.ndarray:
        return disp * self.skin[:, None]


def eye_opening(mesh: HeadMesh, side: int, anatomy: Anatomy = ANATOMY) -> dict[int, tuple]:
    """Per skin column crossing the eye: (x, y_lower_margin, y_upper_margin) of the opening,
    where the skin runs behind the eyeball (found on the continuous surface)."""
    eye = anatomy.eye(side)
    r = anatomy.eye_radius
    c = np.asarray(anatomy.cast_center)
    phi_eye = np.arctan2(eye[1] - c[1], np.hypot(eye[0] - c[0], eye[2] + r - c[2]))
    eye_ring = int(np.argmin(np.abs(mesh.grid_phi[:, mesh.theta.size // 2] - phi_eye)))
    cols = [
        j
        for j, th in enumerate(mesh.theta)
        if side * th > 0 and abs(mesh.grid[eye_ring, j, 0] - eye[0]) < r + 0.004
    ]
    phis = phi_eye + np.radians(np.linspace(-9.0, 9.0, 181))
    th = mesh.theta[cols]
    pts = cast(ray_directions(th[:, None] + 0 * phis, phis + 0 * th[:, None]), anatomy)
    inside = np.linalg.norm(pts - eye, axis=-1) < r
    out = {}
    for k, j in enumerate(cols):
        if inside[k].sum() < 2:
            continue
        ys = pts[k, inside[k], 1]
        out[j] = (float(pts[k, inside[k], 0].mean()), float(ys.min()), float(ys.max()))
    return out


def _eyeball_front(ctx: _Context, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    e = ctx.anatomy.eye(side)
    r = ctx.anatomy.eye_radius
    return e[2] + np.sqrt(np.maximum(r * r - (x - e[0]) ** 2 - (y - e[1]) ** 2, 0.0))


# socket skin this close to a margin rolls out with the lid so a closed lid has no gap
LID_BAND = 0.003


def _lid(ctx: _Context, side: int, amount: float, upper: bool) -> np.ndarray:
    """Move one eye's upper (or lower) lid by ``amount`` of the opening height (1 = closed
    onto the other lid; negative opens it further).

    Lid skin (outside the opening) slides along the eyeball and stays in front of it; the
    hidden socket skin inside the opening moves with the margin but stays behind the eyeball.
    """
    mesh, p = ctx.mesh, ctx.p
    disp = np.zeros_like(p)
    margin = 0.0008
    for j, (_, y_lo, y_up) in ctx.openings[side].items():
        ids = np.flatnonzero((mesh.column == j) & (mesh.part == PART_SKIN))
        x, y, z = p[ids].T
        height = y_up - y_lo + 0.0006
        # g: 1 on the margin band, fading over the lid skin, 0 on the socket behind the eye
        if upper:
            lid_skin = y >= y_up - LID_BAND
            dist = np.maximum(y - y_up, 0.0)
            g = np.where(lid_skin, np.exp(-((dist / 0.0065) ** 2)), 0.0)
            new_y = y - amount * height * g
        else:
            lid_skin = y <= y_lo + LID_BAND
            dist = np.maximum(y_lo - y, 0.0)
            g = np.where(lid_skin, np.exp(-((dist / 0.005) ** 2)), 0.0)
            new_y = y + amount * height * g
        front = _eyeball_front(ctx, side, x, new_y) + margin
        new_z = np.where(lid_skin & (g > 0.02), np.maximum(z, front), z)
        disp[ids, 1] = new_y - y
        disp[ids, 2] = new_z - z
    return disp


def _corner_field(ctx: _Context, direction, sigma=(0.012, 0.010, 0.012), side: int = 0):
    """Displacement around the mouth corners (both when side == 0, else one side)."""
    c = ctx.corner_left
    d = np.asarray(direction, dtype=float)

    def one(p):
        return _gauss(p, c, sigma)[:, None] * d

    if side == 0:
        return _mirror_sum(one, ctx.p) * ctx.face[:, None]
    m = np.array([-1.0, 1.0, 1.0])
    f = one(ctx.p) if side > 0 else one(ctx.p * m) * m
    return f * ctx.face[:, None]


def _brow_field(ctx: _Context, direction, inner: float = 0.0, sigma=(0.016, 0.010, 0.02)):
    """Displacement over both brows; ``inner`` in [0, 1] concentrates it at the inner ends."""
    e = ctx.anatomy.eye(+1)
    center = np.array([e[0] - inner * 0.014, e[1] + 0.017, e[2] + 0.012])
    d = np.asarray(direction, dtype=float)
    above_lid = smoothstep(e[1] + 0.004, e[1] + 0.010, ctx.p[:, 1])

    def one(p):
        return _gauss(p, center, sigma)[:, None] * d

    return _mirror_sum(one, ctx.p) * (ctx.face * above_lid)[:, None]


def _lip_field(ctx: _Context, upper_dir, lower_dir, sigma=(0.020, 0.008, 0.012), dy=0.0):
    m = ctx.mouth_center
    up = _gauss(ctx.p, m + np.array([0, 0.005 + dy, 0]), sigma)[:, None] * np.asarray(upper_dir)
    lo = _gauss(ctx.p, m + np.array([0, -0.006 + dy, 0]), sigma)[:, None] * np.asarray(lower_dir)
    return (up * ctx.upper[:, None] + lo * ctx.lower[:, None]) * ctx.face[:, None]


def expression_basis(
    mesh: HeadMesh,
    jaw: np.ndarray,
    openings: dict,
    n_components: int = 100,
    seed: int = 0,
    anatomy: Anatomy = ANATOMY,
) -> np.ndarray:
    """(V, 3, n_components) expression directions; ``openings`` from :func:`eye_opening`."""
    ctx = _Context(mesh, jaw, openings, anatomy)
    p = ctx.p
    n_lid = lambda side, amt, upper=True: _lid(ctx, side, amt, upper)  # noqa: E731
    cheek_c = np.array([0.040, -0.002, 0.080])

    def cheeks(direction, sigma=0.016):
        return (
            _mirror_sum(lambda q: _gauss(q, cheek_c, sigma)[:, None] * np.asarray(direction), p)
            * ctx.face[:, None]
        )

    both = lambda f: f(+1) + f(-1)  # noqa: E731
    comps = {
        "smile": _corner_field(ctx, (0.006, 0.006, -0.004))
        + cheeks((0.0, 0.003, 0.001))
        + both(lambda s: n_lid(s, 0.15, upper=False))
        + _lip_field(ctx, (0, 0.001, -0.001), (0, -0.001, -0.001)),
        "frown": _brow_field(ctx, (-0.004, -0.004, 0.001), inner=0.6)
        + both(lambda s: n_lid(s, 0.12)),
        "brow_raise": _brow_field(ctx, (0.0, 0.006, 0.0), sigma=(0.022, 0.014, 0.03))
        + both(lambda s: n_lid(s, -0.15)),
        "blink": both(lambda s: n_lid(s, 1.0)),
        "lip_pucker": _lip_field(
            ctx, (0, -0.001, 0.008), (0, 0.001, 0.008), sigma=(0.022, 0.012, 0.015)
        )
        + _corner_field(ctx, (-0.008, 0.0, 0.004)),
        "mouth_stretch": _corner_field(ctx, (0.008, -0.003, -0.002), sigma=(0.016, 0.012, 0.014))
        + _lip_field(ctx, (0, -0.001, -0.001), (0, 0.001, -0.001)),
        "sad": _corner_field(ctx, (0.0, -0.005, -0.001))
        + _brow_field(ctx, (0.0, 0.004, 0.0), inner=1.0, sigma=(0.010, 0.010, 0.02))
        + _lip_field(ctx, (0, 0, 0), (0, 0.002, 0.002)),
        "nose_wrinkle": _lip_field(ctx, (0, 0.004, 0.001), (0, 0, 0), sigma=(0.018, 0.010, 0.02))
        + _mirror_sum(
            lambda q: (
                _gauss(q, (0.012, -0.006, 0.100), 0.008)[:, None] * np.array([0.0, 0.003, 0.0])
            ),
            p,
        )
        * ctx.face[:, None]
        + _brow_field(ctx, (-0.001, -0.002, 0.0), inner=0.8),
        "lip_press": _lip_field(ctx, (0, -0.002, -0.0015), (0, 0.002, -0.0015)),
        "eye_widen": both(lambda s: n_lid(s, -0.35)),
        "cheek_puff": cheeks((0.007, -0.002, 0.002), sigma=0.020),
        "smirk_left": _corner_field(ctx, (0.004, 0.006, -0.003), side=+1),
        "smirk_right": _corner_field(ctx, (0.004, 0.006, -0.003), side=-1),
        "blink_left": n_lid(+1, 1.0),
        "blink_right": n_lid(-1, 1.0),
        "lower_lip_down": _lip_field(
            ctx, (0, 0, 0), (0, -0.005, 0.001), sigma=(0.016, 0.008, 0.012)
        ),
        "upper_lip_raise": _lip_field(
            ctx, (0, 0.005, 0.001), (0, 0, 0), sigma=(0.016, 0.008, 0.012)
        ),
        "mouth_shift": _gauss(p, ctx.mouth_center, (0.03, 0.015, 0.02))[:, None]
        * np.array([0.005, 0.0, 0.0])
        * ctx.face[:, None],
        "inner_brow_raise": _brow_field(
            ctx, (0.0, 0.005, 0.0), inner=1.0, sigma=(0.010, 0.010, 0.02)
        ),
    }
    names = [name for name, _ in EXPRESSION_COMPONENTS]
    assert list(comps) == names, "expression table and fields disagree"
    fields = [ctx.skin_only(comps[n]) for n in names]
    rng = np.random.default_rng(seed + 7)
    fields += _random_fields(
        ctx,
        rng,
        n_components - len(fields),
        amplitude=0.0025,
        region=ctx.face,
        symmetric=False,
        centers_from="face",
    )
    return np.stack(fields[:n_components], axis=-1)


def shape_basis(
    mesh: HeadMesh,
    jaw: np.ndarray,
    openings: dict,
    n_components: int = 300,
    seed: int = 0,
    anatomy: Anatomy = ANATOMY,
) -> np.ndarray:
    """(V, 3, n_components) identity directions; ``openings`` from :func:`eye_opening`."""
    ctx = _Context(mesh, jaw, openings, anatomy)
    p = ctx.p
    x, y, z = p.T
    e = anatomy.eye(+1)
    nose_base = np.array([0.0, -0.012, 0.090])

    def along(vec_x=0.0, vec_y=0.0, vec_z=0.0):
        return np.stack(
            [
                np.broadcast_to(vec_x, x.shape),
                np.broadcast_to(vec_y, x.shape),
                np.broadcast_to(vec_z, x.shape),
            ],
            -1,
        ).astype(float)

    lower_face = smoothstep(0.0, -0.06, y) * smoothstep(-0.03, 0.02, z)
    comps = {
        "head_size": 0.045 * (p - np.array([0.0, 0.01, 0.0])),
        "face_width": along(vec_x=0.05 * x),
        "face_length": along(vec_y=0.07 * np.minimum(y - e[1], 0.0) * smoothstep(-0.03, 0.0, z)),
        "jaw_width": along(vec_x=0.10 * x * lower_face),
        "nose_size": 0.25
        * (p - nose_base)
        * _gauss(p, (0, 0.0, 0.105), 0.017)[:, None]
        * smoothstep(0.085, 0.095, z)[:, None],
        "nose_width": along(vec_x=0.25 * x * _gauss(p, (0, -0.008, 0.100), (0.02, 0.012, 0.02))),
        "eye_spacing": _mirror_sum(
            lambda q: _gauss(q, e, (0.014, 0.014, 0.03))[:, None] * np.array([0.0025, 0.0, 0.0]), p
        ),
        "chin_projection": along(vec_z=0.005 * _gauss(p, (0, -0.080, 0.075), (0.025, 0.018, 0.03))),
        "cheek_fullness": _mirror_sum(
            lambda q: (
                _gauss(q, (0.048, -0.025, 0.055), 0.020)[:, None] * np.array([0.004, 0.0, 0.001])
            ),
            p,
        ),
        "forehead_slope": along(
            vec_z=0.004 * smoothstep(0.045, 0.11, y) * smoothstep(0.0, 0.06, z)
        ),
        "lip_fullness": _lip_field(ctx, (0, 0.0012, 0.002), (0, -0.0012, 0.002)),
        "brow_ridge": along(vec_z=0.003 * _gauss(p, (0, e[1] + 0.016, 0.08), (0.035, 0.008, 0.02))),
        "head_depth": along(vec_z=0.06 * np.minimum(z + 0.01, 0.0) * smoothstep(-0.09, -0.04, y)),
        "mouth_width": _corner_field(ctx, (0.003, 0.0, -0.001)),
        "eye_height": along(
            vec_y=0.003
            * (_gauss(p, e, (0.016, 0.014, 0.03)) + _gauss(p, e * [-1, 1, 1], (0.016, 0.014, 0.03)))
        ),
        "ear_size": _mirror_sum(
            lambda q: (
                0.15
                * (q - np.asarray(anatomy.ear_center))
                * _gauss(q, anatomy.ear_center, (0.012, 0.03, 0.02))[:, None]
                * smoothstep(0.064, 0.072, q[:, 0])[:, None]
            ),
            p,
        ),
    }
    names = [name for name, _ in SHAPE_COMPONENTS]
    assert list(comps) == names, "shape table and fields disagree"
    fields = [ctx.rigid(comps[n]) for n in names]
    rng = np.random.default_rng(seed + 3)
    fields += [
        ctx.rigid(f)
        for f in _random_fields(
            ctx,
            rng,
            n_components - len(fields),
            amplitude=0.004,
            region=ctx.skin,
            symmetric=True,
            centers_from="skin",
        )
    ]
    return np.stack(fields[:n_components], axis=-1)


def _random_fields(
    ctx: _Context,
    rng: np.random.Generator,
    count: int,
    amplitude: float,
    region: np.ndarray,
    symmetric: bool,
    centers_from: str,
) -> list[np.ndarray]:
    """Smooth random displacement fields: a few Gaussian bumps along the surface normal
    (plus a little tangential motion), amplitude decaying with the index."""
    if count <= 0:
        return []
    p = ctx.p
    normals = _vertex_normals(ctx.mesh)
    pool = np.flatnonzero((ctx.face if centers_from == "face" else ctx.skin) > 0.5)
    out = []
    for k in range(count):
        amp = amplitude / (1.0 + k / 12.0)
        field = np.zeros_like(p)
        for _ in range(3):
            c = pool[rng.integers(pool.size)]
            sigma = rng.uniform(0.012, 0.035)
            direction = rng.normal() * normals[c] + 0.4 * rng.normal(size=3)

            def bump(q, c=c, sigma=sigma, direction=direction):
                return _gauss(q, p[c], sigma)[:, None] * direction

            field += _mirror_sum(bump, p) if symmetric else bump(p)
        field *= region[:, None]
        scale = np.abs(field).max()
        out.append(field * (amp / scale) if scale > 0 else field)
    return out


def _vertex_normals(mesh: HeadMesh) -> np.ndarray:
    v, f = mesh.vertices, mesh.faces
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    out = np.zeros_like(v)
    for k in range(3):
        np.add.at(out, f[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

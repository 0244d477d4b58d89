"""The built-in head's rest shape as a signed distance field (metres, FLAME axes).

The head is a smooth union of ellipsoids, a round cone (nose) and a cylinder (neck), with
eye sockets carved out so the separate eyeballs show through an almond-shaped opening.
Every number is ours; proportions follow common adult anthropometry (head breadth ~15 cm,
inter-pupillary distance ~63 mm, eyeball radius ~12 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Origin near the middle of the nose; +x subject's left, +y up, +z out of the face.


@dataclass(frozen=True)
class Anatomy:
    """Named points of the sculpture, shared by the rig, the bases and the landmarks."""

    cast_center: tuple[float, float, float] = (0.0, 0.015, -0.005)
    eye_center: tuple[float, float, float] = (0.0335, 0.028, 0.0632)  # left; right mirrors
    eye_radius: float = 0.0125
    eye_gaze_outward: float = 0.12  # tan of the iris' outward turn, centres it in the opening
    # a shallow almond dent: the eyeball shows only where it is in front of the skin
    socket_center: tuple[float, float, float] = (0.0295, 0.028, 0.0865)
    socket_radii: tuple[float, float, float] = (0.0275, 0.0076, 0.0135)
    socket_blend: float = 0.008
    mouth_y: float = -0.040
    mouth_half_width: float = 0.0245
    lip_z: float = 0.094
    mouth_cavity_center: tuple[float, float, float] = (0.0, -0.043, 0.060)
    mouth_cavity_radii: tuple[float, float, float] = (0.017, 0.0115, 0.017)
    chin: tuple[float, float, float] = (0.0, -0.090, 0.066)
    nose_tip: tuple[float, float, float] = (0.0, -0.010, 0.121)
    neck_center: tuple[float, float] = (0.0, -0.024)  # (x, z) of the neck axis
    neck_radius: float = 0.051
    neck_bottom: float = -0.150
    jaw_joint: tuple[float, float, float] = (0.0, -0.012, -0.008)
    neck_joint: tuple[float, float, float] = (0.0, -0.080, -0.024)
    root_joint: tuple[float, float, float] = (0.0, -0.140, -0.024)
    ear_center: tuple[float, float, float] = (0.075, 0.012, -0.012)

    def eye(self, side: int) -> np.ndarray:
        """Eyeball centre; ``side`` +1 for the subject's left (+x), -1 for the right."""
        c = np.array(self.eye_center)
        c[0] *= side
        return c


ANATOMY = Anatomy()


def _length(v: np.ndarray) -> np.ndarray:
    return np.sqrt(v[..., 0] ** 2 + v[..., 1] ** 2 + v[..., 2] ** 2)


def ellipsoid(p: np.ndarray, center, radii) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (exact on the surface)."""
    q = p - np.asarray(center)
    r = np.asarray(radii)
    k0 = _length(q / r)
    k1 = _length(q / (r * r))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def round_cone(p: np.ndarray, a, b, ra: float, rb: float) -> np.ndarray:
    """Signed distance to a capsule whose radius goes linearly from ``ra`` at a to ``rb`` at b."""
    a, b = np.asarray(a), np.asarray(b)
    ba = b - a
    t = np.clip(((p - a) @ ba) / (ba @ ba), 0.0, 1.0)
    return _length(p - (a + t[..., None] * ba)) - (ra + (rb - ra) * t)


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum; ``k`` is the blend width in metres."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def smooth_subtract(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Carve ``b`` out of ``a`` with a rounded edge of width ``k``."""
    return -smooth_union(-a, b, k)


def mirrored(p: np.ndarray) -> np.ndarray:
    """Fold x so a primitive placed at +x appears on both sides."""
    q = p.copy()
    q[..., 0] = np.abs(q[..., 0])
    return q


def head_sdf(p: np.ndarray, anatomy: Anatomy = ANATOMY) -> np.ndarray:
    """(N, 3) points -> (N,) signed distance to the skin (negative inside)."""
    m = mirrored(p)
    cranium = ellipsoid(p, (0.0, 0.040, -0.020), (0.074, 0.094, 0.097))
    midface = ellipsoid(p, (0.0, -0.004, 0.020), (0.065, 0.058, 0.072))
    # the jaw narrows towards the chin: scale x by a factor that shrinks with depth below
    q = p.copy()
    taper = np.clip(1.0 + 0.55 * (p[..., 1] + 0.050) / 0.045, 0.55, 1.25)
    q[..., 0] = q[..., 0] / taper
    jaw = ellipsoid(q, (0.0, -0.048, 0.016), (0.060, 0.046, 0.066))
    chin = ellipsoid(p, (0.0, -0.076, 0.066), (0.020, 0.017, 0.019))
    philtrum = ellipsoid(p, (0.0, -0.025, 0.083), (0.020, 0.013, 0.0120))
    cheek = ellipsoid(m, (0.045, 0.006, 0.050), (0.022, 0.018, 0.026))
    brow = ellipsoid(m, (0.024, 0.045, 0.068), (0.026, 0.010, 0.015))
    nose = round_cone(p, (0.0, 0.032, 0.077), (0.0, -0.002, 0.105), 0.0068, 0.0095)
    tip = ellipsoid(p, (0.0, -0.007, 0.1045), (0.0110, 0.0100, 0.0105))
    columella = ellipsoid(p, (0.0, -0.0135, 0.0985), (0.0055, 0.0055, 0.0110))
    wing = ellipsoid(m, (0.0135, -0.0125, 0.0945), (0.0085, 0.0070, 0.0095))
    upper_lip = ellipsoid(p, (0.0, -0.0335, anatomy.lip_z - 0.006), (0.025, 0.0075, 0.011))
    lower_lip = ellipsoid(p, (0.0, -0.0475, anatomy.lip_z - 0.008), (0.0225, 0.0080, 0.011))
    # the dental arch: a rounded muzzle the lips sit on
    muzzle = ellipsoid(p, (0.0, -0.040, 0.064), (0.034, 0.030, 0.028))
    ear = ellipsoid(m, anatomy.ear_center, (0.011, 0.030, 0.018))
    nx, nz = anatomy.neck_center
    neck = np.maximum(
        np.sqrt((p[..., 0] - nx) ** 2 + (p[..., 2] - nz) ** 2) - anatomy.neck_radius,
        p[..., 1] + 0.010,
    )

    d = smooth_union(cranium, midface, 0.020)
    d = smooth_union(d, jaw, 0.018)
    d = smooth_union(d, chin, 0.012)
    d = smooth_union(d, cheek, 0.012)
    d = smooth_union(d, brow, 0.016)
    d = smooth_union(d, muzzle, 0.016)
    d = smooth_union(d, neck, 0.022)
    d = smooth_union(d, ear, 0.008)
    nose = smooth_union(nose, smooth_union(tip, smooth_union(wing, columella, 0.004), 0.004), 0.006)
    d = smooth_union(d, nose, 0.013)
    lips = smooth_union(smooth_union(upper_lip, philtrum, 0.006), lower_lip, 0.0015)
    d = smooth_union(d, lips, 0.008)
    socket = ellipsoid(mirrored(p), anatomy.socket_center, anatomy.socket_radii)
    d = smooth_subtract(d, socket, anatomy.socket_blend)
    return d

"""Wavefront OBJ meshes: vertices, triangles and texture coordinates.

Reads what FLAME/DECA files use: ``v``, ``vt``, ``vn`` (skipped), ``f`` with ``a``, ``a/b``,
``a/b/c`` and ``a//c`` corners, 1-based or negative (relative) indices, polygons (fan
triangulated), comments and ``mtllib``/``usemtl``/``o``/``g``/``s`` lines (ignored).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from emorig.assets.catalogue import obtain_text
from emorig.errors import AssetError, reading
from emorig.flame.data import UVLayout
from emorig.io.atomic import atomic_write

__all__ = ["FLAME_N_FACES", "FLAME_N_VERTICES", "read_obj", "read_uv_layout", "write_obj"]

FLAME_N_VERTICES = 5023
FLAME_N_FACES = 9976


def _resolve(token: str, count: int, what: str, source: str, lineno: int) -> int:
    """OBJ index -> 0-based: ``i > 0`` is 1-based, ``i < 0`` counts back from the ``count``
    items defined so far. Upper bounds of positive indices are checked once the file is read.
    """
    try:
        i = int(token)
    except ValueError:
        raise AssetError(
            source, f"line {lineno}: {what} index {token!r} is not an integer"
        ) from None
    if i > 0:
        return i - 1
    if i == 0 or count + i < 0:
        raise AssetError(
            source,
            f"line {lineno}: {what} index {i} outside the {count} {what} entries defined so far",
        )
    return count + i


def read_obj(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, UVLayout | None]:
    """Read an OBJ mesh.

    Args:
        path: the ``.obj`` file.

    Returns:
        vertices: (V, 3) float32 positions (extra ``v`` values such as colours ignored).
        faces: (F, 3) int64 0-based triangles; an n-gon becomes n - 2 fan triangles.
        uv: :class:`UVLayout` with (T, 2) float32 ``vt`` and (F, 3) int64 ``uv_faces`` aligned
            with ``faces`` when every face has texture indices, else None.

    Raises:
        AssetError: missing file, malformed line, index out of range, or faces of which only
            some carry texture indices.
    """
    path = Path(path)
    source = str(path)
    obtain = obtain_text(path)
    with reading(source, obtain):
        text = path.read_text(encoding="utf-8", errors="replace")

    vertices: list[tuple[float, float, float]] = []
    uvs: list[tuple[float, float]] = []
    faces: list[tuple[int, int, int]] = []
    uv_faces: list[tuple[int, int, int]] = []
    faces_with_uv = faces_without_uv = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        key = parts[0]
        try:
            if key == "v":
                if len(parts) < 4:
                    raise ValueError("needs 3 coordinates")
                vertices.append((float(parts[1]), float(parts[2]), float(parts[3])))
            elif key == "vt":
                if len(parts) < 3:
                    raise ValueError("needs 2 coordinates")
                uvs.append((float(parts[1]), float(parts[2])))
            elif key == "f":
                if len(parts) < 4:
                    raise ValueError("a face needs at least 3 corners")
                corners = [c.split("/") for c in parts[1:]]
                vids = [_resolve(c[0], len(vertices), "vertex", source, lineno) for c in corners]
                has_uv = [len(c) > 1 and c[1] != "" for c in corners]
                if all(has_uv):
                    tids = [_resolve(c[1], len(uvs), "texture", source, lineno) for c in corners]
                    faces_with_uv += 1
                elif not any(has_uv):
                    tids = None
                    faces_without_uv += 1
                else:
                    raise ValueError("some corners have texture indices and others not")
                for k in range(1, len(vids) - 1):
                    faces.append((vids[0], vids[k], vids[k + 1]))
                    if tids is not None:
                        uv_faces.append((tids[0], tids[k], tids[k + 1]))
            # every other statement (vn, mtllib, usemtl, o, g, s, l, ...) is skipped
        except ValueError as err:
            raise AssetError(
                source, f"line {lineno}: malformed '{key}' statement ({err})", obtain
            ) from None
    if not vertices:
        raise AssetError(source, "holds no vertices (not an OBJ mesh?)", obtain)
    if faces_with_uv and faces_without_uv:
        raise AssetError(
            source,
            f"{faces_with_uv} faces have texture indices and {faces_without_uv} do not",
            obtain,
        )
    v = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if f.size and f.max() >= v.shape[0]:
        raise AssetError(
            source,
            f"faces index vertex {int(f.max()) + 1} but the file has {v.shape[0]} vertices",
            obtain,
        )
    uv = None
    if faces_with_uv:
        uv = UVLayout(
            uv=np.asarray(uvs, dtype=np.float32).reshape(-1, 2),
            uv_faces=np.asarray(uv_faces, dtype=np.int64).reshape(-1, 3),
        )
        if uv.uv_faces.max() >= uv.uv.shape[0]:
            raise AssetError(
                source,
                f"faces index texture coordinate "
                f"{int(uv.uv_faces.max()) + 1} but the file has "
                f"{uv.uv.shape[0]}",
                obtain,
            )
    return v, f, uv


def read_uv_layout(path: str | os.PathLike[str]) -> UVLayout:
    """Texture coordinates of a template mesh, e.g. DECA's ``head_template.obj``.

    When the mesh has FLAME's 5,023 vertices it must also have FLAME's 9,976 faces.

    Args:
        path: the ``.obj`` file.

    Returns:
        Validated :class:`UVLayout`: (T, 2) float32 ``uv`` and (F, 3) int64 ``uv_faces``,
        aligned with the mesh faces.

    Raises:
        AssetError: unreadable file, no ``vt`` data, or a FLAME-sized mesh with the wrong
            face count.
    """
    source = str(path)
    obtain = obtain_text(path, default_key="head_template")
    vertices, faces, uv = read_obj(path)
    if uv is None:
        raise AssetError(source, "has no texture coordinates (no 'vt' / 'f a/b' data)", obtain)
    n_faces = faces.shape[0]
    if vertices.shape[0] == FLAME_N_VERTICES and n_faces != FLAME_N_FACES:
        raise AssetError(
            source,
            f"has FLAME's {FLAME_N_VERTICES} vertices but {n_faces} "
            f"faces, expected {FLAME_N_FACES}",
            obtain,
        )
    return uv.validate(source, n_faces=n_faces, obtain=obtain)


def _float_format(a: np.ndarray) -> str:
    """Shortest printf format that round-trips the array's dtype exactly."""
    return "%.17g" if a.dtype == np.float64 else "%.9g"


def write_obj(
    path: str | os.PathLike[str],
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: UVLayout | None = None,
    normals: np.ndarray | None = None,
) -> None:
    """Write a triangle mesh as OBJ (atomically; values round-trip exactly).

    Args:
        path: destination ``.obj``.
        vertices: (V, 3) float positions.
        faces: (F, 3) int 0-based triangles.
        uv: optional texture coordinates; ``uv.uv_faces`` must have F rows.
        normals: optional (V, 3) per-vertex normals, written as ``vn`` (same index as ``v``).
    """
    v = np.asarray(vertices)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices have shape {v.shape}, expected (V, 3)")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces have shape {f.shape}, expected (F, 3)")
    columns = [f + 1]
    if uv is not None:
        if uv.uv_faces.shape != f.shape:
            raise ValueError(f"uv faces have shape {uv.uv_faces.shape}, expected {f.shape}")
        columns.append(np.asarray(uv.uv_faces, dtype=np.int64) + 1)
    n = None
    if normals is not None:
        n = np.asarray(normals)
        if n.shape != v.shape:
            raise ValueError(f"normals have shape {n.shape}, expected {v.shape}")
        columns.append(f + 1)
    corner = {1: "%d", 2: "%d/%d", 3: "%d/%d/%d"}[len(columns)]
    if uv is None and n is not None:
        corner = "%d//%d"
    stacked = np.stack(columns, axis=-1).reshape(f.shape[0], -1)  # (F, 3 * len(columns))

    buf = io.StringIO()
    fmt = _float_format(v)
    np.savetxt(buf, v, fmt=f"v {fmt} {fmt} {fmt}")
    if uv is not None:
        t = np.asarray(uv.uv)
        tfmt = _float_format(t)
        np.savetxt(buf, t, fmt=f"vt {tfmt} {tfmt}")
    if n is not None:
        nfmt = _float_format(n)
        np.savetxt(buf, n, fmt=f"vn {nfmt} {nfmt} {nfmt}")
    if f.shape[0]:
        np.savetxt(buf, stacked, fmt="f " + " ".join([corner] * 3))
    with atomic_write(path, "w") as out:
        out.write(buf.getvalue())

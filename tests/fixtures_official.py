"""Tiny files in exactly the layout of the official FLAME / DECA / EMOCA assets.

Each ``write_*`` function writes a small file with random content and returns the arrays it
wrote, so tests can check readers value by value. Nothing here is derived from the real files.

The FLAME pickle imitates the Python-2-era ``generic_model.pkl``: protocol 2, arrays through
``numpy.core.multiarray._reconstruct`` with their bytes as ``BINSTRING`` (Python 2 ``str``),
``chumpy.ch.Ch`` objects (state dict with ``x``, ``_dirty_vars`` set, ...), a real
``scipy.sparse.csc_matrix`` under its old module path ``scipy.sparse.csc``, and ``__builtin__``
/ ``copy_reg`` module names.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import struct
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

N_JOINTS = 5
N_SHAPE, N_EXPR = 300, 100
ROOT = 4294967295  # uint32 max, FLAME's "no parent"
PARENTS = (ROOT, 0, 1, 1, 1)  # root, neck, jaw, left eye, right eye


# ---------------------------------------------------------------------------------------------
# Python-2-style pickling.


class _FakeCh:
    """Stands in for ``chumpy.ch.Ch`` while pickling (``__module__`` patched below)."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __getstate__(self) -> dict[str, Any]:
        # chumpy's Ch.__getstate__: __dict__ minus _parents and _cache.
        return {
            "_dirty_vars": {"x"},
            "_itr": None,
            "_make_dense": False,
            "_make_sparse": False,
            "_depends_on_deps": {},
            "x": self.x,
        }


_FakeCh.__module__ = "chumpy.ch"
_FakeCh.__qualname__ = "Ch"
_FakeCh.__name__ = "Ch"


def _fake_reconstruct(*args: Any) -> None:  # never called: only its name is pickled
    raise AssertionError("pickling stand-in")


class _FakeChOp:
    """Stands in for a derived chumpy expression (no stored ``x``), e.g. ``Select``."""

    def __init__(self, a: Any):
        self.a = a

    def __getstate__(self) -> dict[str, Any]:
        return {"_dirty_vars": set(), "_itr": None, "a": self.a, "idxs": [0, 1]}


_FakeChOp.__module__ = "chumpy.reordering"
_FakeChOp.__qualname__ = "Select"
_FakeChOp.__name__ = "Select"


def chumpy_expression(a: Any) -> Any:
    """A value that pickles as a derived chumpy object holding no array ``x``."""
    return _FakeChOp(_FakeCh(np.asarray(a)))


_fake_reconstruct.__module__ = "numpy.core.multiarray"
_fake_reconstruct.__qualname__ = "_reconstruct"
_fake_reconstruct.__name__ = "_reconstruct"


@contextlib.contextmanager
def _fake_modules() -> Iterator[None]:
    """Register ``chumpy``, ``chumpy.ch`` and ``numpy.core.multiarray`` stand-ins, then undo."""
    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")
    chumpy_ch.Ch = _FakeCh  # type: ignore[attr-defined]
    chumpy.ch = chumpy_ch  # type: ignore[attr-defined]
    reordering = types.ModuleType("chumpy.reordering")
    reordering.Select = _FakeChOp  # type: ignore[attr-defined]
    chumpy.reordering = reordering  # type: ignore[attr-defined]
    multiarray = types.ModuleType("numpy.core.multiarray")
    multiarray._reconstruct = _fake_reconstruct  # type: ignore[attr-defined]
    names = ("chumpy", "chumpy.ch", "chumpy.reordering", "numpy.core.multiarray")
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(
        {
            "chumpy": chumpy,
            "chumpy.ch": chumpy_ch,
            "chumpy.reordering": reordering,
            "numpy.core.multiarray": multiarray,
        }
    )
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _LegacyPickler(pickle.Pickler):
    """Writes numpy arrays as numpy 1.x did: through ``numpy.core.multiarray``, with Python 2
    ``str`` data at protocol 2 and ``bytes`` at protocol 3 (what numpy 1.x on Python 3 wrote)."""

    def __init__(self, file: Any, protocol: int):
        super().__init__(file, protocol=protocol)
        self._py2 = protocol < 3

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            if obj.dtype.hasobject:
                data: Any = list(obj.reshape(-1))
            else:
                data = np.ascontiguousarray(obj).tobytes()
                if self._py2:
                    data = data.decode("latin-1")  # a Python 2 str
            state = (1, obj.shape, obj.dtype, False, data)
            return _fake_reconstruct, (np.ndarray, (0,), "b" if self._py2 else b"b"), state
        return NotImplemented


def legacy_dumps(obj: Any, protocol: int = 2) -> bytes:
    """Pickle with numpy arrays referenced through ``numpy.core.multiarray``."""
    buf = io.BytesIO()
    with _fake_modules():
        _LegacyPickler(buf, protocol).dump(obj)
    return buf.getvalue()


def to_python2_opcodes(data: bytes, renames: dict[str, str] | None = None) -> bytes:
    """Rewrite a protocol-2 pickle as Python 2 would have written it.

    Latin-1-encodable unicode strings become ``BINSTRING``/``SHORT_BINSTRING`` (Python 2
    ``str``), and GLOBAL module names are renamed (e.g. ``scipy.sparse._csc`` ->
    ``scipy.sparse.csc``). Memo indices do not depend on byte offsets, so the rest is copied.
    """
    renames = renames or {}
    ops = list(pickletools.genops(data))
    out = bytearray()
    for i, (opcode, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        raw = data[pos:end]
        if opcode.name in ("BINUNICODE", "SHORT_BINUNICODE"):
            try:
                encoded = arg.encode("latin-1")
            except UnicodeEncodeError:
                encoded = None
            if encoded is not None:
                if len(encoded) < 256:
                    raw = b"U" + bytes([len(encoded)]) + encoded
                else:
                    raw = b"T" + struct.pack("<i", len(encoded)) + encoded
        elif opcode.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            module = renames.get(module, module)
            raw = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        out += raw
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# FLAME models.


def flame_arrays(
    n_vertices: int = 10, n_faces: int = 16, seed: int = 0, n_components: int = N_SHAPE + N_EXPR
) -> dict[str, Any]:
    """Random arrays with FLAME's layout: V vertices, F faces, 5 joints, 300 + 100 comps."""
    rng = np.random.default_rng(seed)
    weights = rng.random((n_vertices, N_JOINTS))
    weights /= weights.sum(1, keepdims=True)
    j_dense = np.zeros((N_JOINTS, n_vertices))
    for j in range(N_JOINTS):  # a few vertices per joint, rows summing to one
        idx = rng.choice(n_vertices, size=min(3, n_vertices), replace=False)
        j_dense[j, idx] = rng.random(idx.size)
        j_dense[j] /= j_dense[j].sum()
    return {
        "f": rng.integers(0, n_vertices, size=(n_faces, 3)).astype(np.uint32),
        "v_template": rng.normal(size=(n_vertices, 3)) * 0.1,
        "shapedirs": rng.normal(size=(n_vertices, 3, n_components)) * 1e-3,
        "posedirs": rng.normal(size=(n_vertices, 3, 9 * (N_JOINTS - 1))) * 1e-3,
        "J_regressor": j_dense,
        "weights": weights,
        "kintree_table": np.array([PARENTS, range(N_JOINTS)], dtype=np.int64),
        "J": rng.normal(size=(N_JOINTS, 3)),
        "weights_prior": weights.copy(),
    }


def write_flame2020_pkl(
    path: str | Path,
    n_vertices: int = 10,
    n_faces: int = 16,
    seed: int = 0,
    chumpy_keys: tuple[str, ...] = ("v_template", "shapedirs", "posedirs", "J"),
    extra: dict[str, Any] | None = None,
    protocol: int = 2,
    arrays: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``generic_model.pkl`` look-alike (see module docstring). Returns the dense arrays.

    ``J_regressor`` is a real ``scipy.sparse.csc_matrix``; keys in ``chumpy_keys`` are
    ``chumpy.ch.Ch`` objects; extra keys ``J``, ``weights_prior``, ``bs_style``, ``bs_type``.
    ``protocol`` 0 or 1 gives the text-era layout (objects via ``copy_reg._reconstructor``).
    ``arrays`` (as :func:`flame_arrays` returns them) replaces the random content.
    """
    import scipy.sparse

    arrays = flame_arrays(n_vertices, n_faces, seed) if arrays is None else arrays
    model: dict[str, Any] = {k: (_FakeCh(v) if k in chumpy_keys else v) for k, v in arrays.items()}
    model["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    model["bs_style"] = "lbs"
    model["bs_type"] = "lrotmin"
    model.update(extra or {})
    data = to_python2_opcodes(
        legacy_dumps(model, protocol=protocol), renames={"scipy.sparse._csc": "scipy.sparse.csc"}
    )
    Path(path).write_bytes(data)
    return arrays


def write_flame2023_pkl(
    path: str | Path,
    n_vertices: int = 10,
    n_faces: int = 16,
    seed: int = 1,
    sparse_regressor: bool = False,
    n_components: int = N_SHAPE + N_EXPR,
    drop: tuple[str, ...] = (),
    replace: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A FLAME 2023 look-alike: plain numpy arrays pickled by today's numpy (protocol 4).

    ``drop`` removes keys and ``replace`` overrides values, to build malformed files.
    """
    arrays = flame_arrays(n_vertices, n_faces, seed, n_components)
    model: dict[str, Any] = dict(arrays)
    if sparse_regressor:
        import scipy.sparse

        model["J_regressor"] = scipy.sparse.csr_matrix(arrays["J_regressor"])
    model["bs_style"] = "lbs"
    model["bs_type"] = "lrotmin"
    model.update(replace or {})
    for key in drop:
        del model[key]
    Path(path).write_bytes(pickle.dumps(model, protocol=4))
    return arrays


# ---------------------------------------------------------------------------------------------
# Landmark embeddings.


def landmark_arrays(n_faces: int = 16, seed: int = 2) -> dict[str, np.ndarray]:
    """DECA's landmark-embedding arrays with the official dtypes and shapes."""
    rng = np.random.default_rng(seed)

    def bary(*shape: int) -> np.ndarray:
        b = rng.random((*shape, 3))
        return b / b.sum(-1, keepdims=True)

    return {
        "static_lmk_faces_idx": rng.integers(0, n_faces, size=51).astype(np.int64),
        "static_lmk_bary_coords": bary(51).astype(np.float64),
        "dynamic_lmk_faces_idx": rng.integers(0, n_faces, size=(79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": bary(79, 17).astype(np.float32),
        "full_lmk_faces_idx": rng.integers(0, n_faces, size=(1, 68)).astype(np.int64),
        "full_lmk_bary_coords": bary(1, 68).astype(np.float32),
    }


def write_landmark_embedding_npy(
    path: str | Path, n_faces: int = 16, seed: int = 2, arrays: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """A ``landmark_embedding.npy`` look-alike: ``np.save`` of a dict in a 0-d object array.

    As in DECA's file, the two dynamic entries are torch tensors (LongTensor, FloatTensor),
    pickled as ``torch._utils._rebuild_tensor_v2(torch.storage._load_from_bytes(...))``, the
    payload is protocol 3, and arrays go through ``numpy.core.multiarray._reconstruct``.
    Returns the arrays (dynamic ones as numpy).
    """
    import torch
    from numpy.lib import format as npy_format

    arrays = landmark_arrays(n_faces, seed) if arrays is None else arrays
    content: dict[str, Any] = dict(arrays)
    content["dynamic_lmk_faces_idx"] = torch.from_numpy(arrays["dynamic_lmk_faces_idx"])
    content["dynamic_lmk_bary_coords"] = torch.from_numpy(arrays["dynamic_lmk_bary_coords"])
    holder = np.empty((), dtype=object)
    holder[()] = content
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    buf.write(legacy_dumps(holder, protocol=3))
    Path(path).write_bytes(buf.getvalue())
    return arrays


def write_mediapipe_npz(
    path: str | Path, n_faces: int = 16, n_points: int = 105, seed: int = 3
) -> dict[str, np.ndarray]:
    """A ``mediapipe_landmark_embedding.npz`` look-alike (keys of EMOCA v2's file)."""
    rng = np.random.default_rng(seed)
    b = rng.random((n_points, 3))
    arrays = {
        "lmk_face_idx": rng.integers(0, n_faces, size=n_points).astype(np.int64),
        "lmk_b_coords": b / b.sum(-1, keepdims=True),
        "landmark_indices": rng.choice(478, size=n_points, replace=False).astype(np.int64),
    }
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return arrays


# ---------------------------------------------------------------------------------------------
# Albedo spaces.


def write_flame_texture_npz(
    path: str | Path, size: int = 8, n_components: int = 6, seed: int = 4, compressed: bool = False
) -> dict[str, np.ndarray]:
    """A ``FLAME_texture.npz`` look-alike: ``mean`` (S,S,3), ``tex_dir`` (S,S,3,K), 0..255
    (BGR as DECA reads it), float32."""
    rng = np.random.default_rng(seed)
    arrays = {
        "mean": (rng.random((size, size, 3)) * 255).astype(np.float32),
        "tex_dir": (rng.normal(size=(size, size, 3, n_components)) * 20).astype(np.float32),
    }
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return arrays


def write_bfm_albedo_npz(
    path: str | Path, size: int = 8, n_components: int = 5, seed: int = 5
) -> dict[str, np.ndarray]:
    """A ``FLAME_albedo_from_BFM.npz`` look-alike: ``MU`` (1, S*S*3), ``PC`` (S*S*3, K) in
    [0, 1] (BGR), plus ``specMU``/``specPC``."""
    rng = np.random.default_rng(seed)
    n = size * size * 3
    arrays = {
        "MU": rng.random((1, n)),
        "PC": rng.normal(size=(n, n_components)) * 0.05,
        "specMU": rng.random((1, n)),
        "specPC": rng.normal(size=(n, n_components)) * 0.01,
    }
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return arrays


def write_head_template_obj(
    path: str | Path, n_vertices: int = 6, seed: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A small OBJ in DECA's head_template layout (Blender header, mtllib, usemtl, s off,
    ``f v/vt``). Returns (vertices, faces, uv, uv_faces), 0-based."""
    rng = np.random.default_rng(seed)
    v = np.round(rng.normal(size=(n_vertices, 3)), 6)
    faces = np.array(
        [[i, (i + 1) % n_vertices, (i + 2) % n_vertices] for i in range(n_vertices)], dtype=np.int64
    )
    uv = np.round(rng.random((n_vertices + 2, 2)), 6)
    uv_faces = (faces + np.arange(n_vertices)[:, None] % 3) % uv.shape[0]
    lines = [
        "# Blender v2.80 (sub 75) OBJ File: 'tiny.blend'",
        "# www.blender.org",
        "mtllib template.mtl",
    ]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in v]
    lines += [f"vt {a:.6f} {b:.6f}" for a, b in uv]
    lines += ["usemtl material_1", "s off"]
    lines += [
        "f " + " ".join(f"{a + 1}/{t + 1}" for a, t in zip(fr, tr, strict=True))
        for fr, tr in zip(faces, uv_faces, strict=True)
    ]
    Path(path).write_text("\n".join(lines) + "\n")
    return v, faces, uv, uv_faces

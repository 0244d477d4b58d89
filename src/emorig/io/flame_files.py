"""Readers for the official FLAME model and landmark-embedding files, and our npz forms.

Official layouts (see ``anchors.md`` §1.2):

* FLAME pickles (``generic_model.pkl`` = FLAME 2020, ``flame2023*.pkl``): a dict with
  ``f`` (F, 3) faces, ``v_template`` (V, 3), ``shapedirs`` (V, 3, 400), ``posedirs``
  (V, 3, 36), ``J_regressor`` (5, V) (scipy.sparse in FLAME 2020, dense or sparse later),
  ``weights`` (V, 5) and ``kintree_table`` (2, 5), whose row 0 holds each joint's parent
  (the root's stored as 2**32 - 1) and row 1 the joint ids. Some values are chumpy objects;
  unused keys (``J``, ``bs_style``, ``bs_type``, ``weights_prior``, ...) are ignored.
* The 400 ``shapedirs`` components are 300 identity then 100 expression directions, the
  split DECA uses (``[:, :, :300]`` and ``[:, :, 300:]``). Other counts need ``n_shape``.
* ``landmark_embedding.npy`` (DECA): a pickled dict, two entries of which are torch tensors.
* ``mediapipe_landmark_embedding.npz`` (EMOCA v2): ``lmk_face_idx``, ``lmk_b_coords``,
  ``landmark_indices``.

Our converted ``.npz`` files hold plain arrays only (no pickle) and a ``format`` entry.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from emorig.assets.catalogue import obtain_text
from emorig.errors import AssetError
from emorig.flame.data import FlameData, LandmarkEmbedding, MediapipeEmbedding
from emorig.io.atomic import save_npz_atomic
from emorig.io.pickles import UnresolvedObject, load_npy_object, load_pickle

__all__ = [
    "FLAME_KEYS",
    "FLAME_NPZ_FORMAT",
    "LANDMARKS_NPZ_FORMAT",
    "flame_name_for",
    "read_flame",
    "read_landmark_embedding",
    "read_mediapipe_embedding",
    "write_flame_npz",
    "write_landmark_embedding_npz",
]

FLAME_KEYS = ("f", "v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
LANDMARK_KEYS = (
    "static_lmk_faces_idx",
    "static_lmk_bary_coords",
    "dynamic_lmk_faces_idx",
    "dynamic_lmk_bary_coords",
    "full_lmk_faces_idx",
    "full_lmk_bary_coords",
)
MEDIAPIPE_KEYS = ("lmk_face_idx", "lmk_b_coords", "landmark_indices")
FLAME_NPZ_FORMAT = "emorig-flame/1"
LANDMARKS_NPZ_FORMAT = "emorig-landmark-embedding/1"
_FLAME_NPZ_KEYS = (
    "v_template",
    "faces",
    "shapedirs",
    "exprdirs",
    "posedirs",
    "j_regressor",
    "weights",
    "parents",
)
_LMK_NPZ_KEYS = (
    "static_faces",
    "static_bary",
    "dynamic_faces",
    "dynamic_bary",
    "full_faces",
    "full_bary",
)
OFFICIAL_SPLIT = {400: 300}  # shapedirs components -> identity components (FLAME 2020/2023)
_UINT32_MAX = 2**32 - 1


# ---------------------------------------------------------------------------------------------
# Helpers shared by the readers.


def flame_name_for(path: str | os.PathLike[str]) -> str:
    """Model name from the official file name (``generic_model.pkl`` -> ``"FLAME 2020"``).

    ``flame2023_Open*`` -> ``"FLAME 2023 Open"``, other ``flame2023*`` -> ``"FLAME 2023"``,
    anything else -> the file stem.
    """
    stem = Path(path).stem
    low = stem.lower()
    if low == "generic_model":
        return "FLAME 2020"
    if low.startswith("flame2023"):
        return "FLAME 2023 Open" if "open" in low else "FLAME 2023"
    return stem


def _check_exists(path: Path, obtain: str | None) -> None:
    if not path.exists():
        raise AssetError(str(path), "not found", obtain)
    if path.is_dir():
        raise AssetError(str(path), "is a folder, expected a file", obtain)


def _missing(mapping: Any, keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if k not in mapping]


def _array(value: Any, key: str, source: str, obtain: str | None) -> np.ndarray:
    if isinstance(value, UnresolvedObject):
        raise AssetError(
            source,
            f"'{key}' is a {value.origin} object that cannot be read "
            f"without chumpy ({value.reason})",
            obtain,
        )
    try:
        arr = np.asarray(value)
    except Exception as err:
        raise AssetError(
            source, f"'{key}' is not an array ({type(value).__name__}: {err})", obtain
        ) from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise AssetError(source, f"'{key}' holds {arr.dtype} values, expected numbers", obtain)
    return arr


def _float(arr: np.ndarray, dtype: npt.DTypeLike | None) -> np.ndarray:
    """C-contiguous copy/view in ``dtype`` (None keeps the stored dtype)."""
    return np.ascontiguousarray(arr) if dtype is None else np.ascontiguousarray(arr, dtype=dtype)


def _index(arr: np.ndarray, key: str, source: str, obtain: str | None) -> np.ndarray:
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise AssetError(source, f"'{key}' holds non-integer indices", obtain)
    return np.ascontiguousarray(arr, dtype=np.int64)


def _shape_error(
    key: str, arr: np.ndarray, expected: str, source: str, obtain: str | None
) -> AssetError:
    return AssetError(source, f"'{key}' has shape {arr.shape}, expected {expected}", obtain)


def _load_npz(path: Path, source: str, obtain: str | None) -> dict[str, np.ndarray]:
    """All arrays of a small ``.npz`` (no pickles allowed)."""
    if not zipfile.is_zipfile(path):
        raise AssetError(source, "not a readable .npz file (not a zip archive)", obtain)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError) as err:
        raise AssetError(source, f"not a readable .npz file ({err})", obtain) from None
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise AssetError(
                source, "holds pickled objects, expected plain arrays", obtain
            ) from None
        raise AssetError(source, f"not a readable .npz file ({err})", obtain) from None
    except OSError as err:
        raise AssetError(source, f"cannot be read ({err})", obtain) from None


def _is_npz(path: Path) -> bool:
    return path.suffix.lower() == ".npz" or zipfile.is_zipfile(path)


def _format_of(arrays: dict[str, np.ndarray]) -> str | None:
    fmt = arrays.get("format")
    return str(fmt[()]) if fmt is not None and fmt.shape == () else None


# ---------------------------------------------------------------------------------------------
# FLAME model.


def _parents_from_kintree(kintree: np.ndarray, source: str, obtain: str | None) -> np.ndarray:
    """(2, J) kintree table -> (J,) int64 parents, root = -1 (SMPL/FLAME convention).

    Row 1 holds joint ids and row 0 their parents' ids; ids are mapped to columns, and the
    root's parent (stored as 2**32 - 1, or any id that is not a joint) becomes -1.
    """
    if kintree.ndim != 2 or kintree.shape[0] != 2 or kintree.shape[1] < 1:
        raise _shape_error("kintree_table", kintree, "(2, J)", source, obtain)
    table = kintree.astype(np.int64)
    column = {int(joint): col for col, joint in enumerate(table[1])}
    if len(column) != table.shape[1]:
        raise AssetError(source, f"'kintree_table' repeats joint ids {table[1].tolist()}", obtain)
    parents = np.array([column.get(int(p), -1) for p in table[0]], dtype=np.int64)
    if parents[0] != -1 and int(table[0, 0]) in (_UINT32_MAX, -1):
        parents[0] = -1
    return parents


def _split_shapedirs(
    shapedirs: np.ndarray, n_shape: int | None, source: str, obtain: str | None
) -> tuple[np.ndarray, np.ndarray]:
    total = shapedirs.shape[2]
    if n_shape is None:
        if total not in OFFICIAL_SPLIT:
            raise AssetError(
                source,
                f"'shapedirs' has {total} components; the official "
                "FLAME files have 400 (300 identity + 100 expression), pass "
                "n_shape to split other files",
                obtain,
            )
        n_shape = OFFICIAL_SPLIT[total]
    if not 0 < n_shape <= total:
        raise AssetError(source, f"n_shape={n_shape} is outside 1..{total}", obtain)
    return shapedirs[:, :, :n_shape], shapedirs[:, :, n_shape:]


def _flame_from_pickle(
    path: Path, dtype: npt.DTypeLike | None, n_shape: int | None, obtain: str | None
) -> FlameData:
    source = str(path)
    model = load_pickle(path, obtain=obtain)
    if not isinstance(model, dict):
        raise AssetError(
            source,
            f"is not a FLAME model (holds a {type(model).__name__}, expected a dict)",
            obtain,
        )
    missing = _missing(model, FLAME_KEYS)
    if missing:
        raise AssetError(source, f"is not a FLAME model: missing keys {missing}", obtain)
    arr = {k: _array(model[k], k, source, obtain) for k in FLAME_KEYS}
    v_template = arr["v_template"]
    if v_template.ndim != 2 or v_template.shape[1] != 3:
        raise _shape_error("v_template", v_template, "(V, 3)", source, obtain)
    n_vertices = v_template.shape[0]
    faces = arr["f"]
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise _shape_error("f", faces, "(F, 3)", source, obtain)
    shapedirs = arr["shapedirs"]
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (n_vertices, 3):
        raise _shape_error("shapedirs", shapedirs, f"({n_vertices}, 3, S)", source, obtain)
    identity, expression = _split_shapedirs(shapedirs, n_shape, source, obtain)
    parents = _parents_from_kintree(arr["kintree_table"], source, obtain)
    n_joints = parents.shape[0]
    posedirs = arr["posedirs"]
    if posedirs.ndim == 2 and posedirs.shape == (n_vertices * 3, 9 * (n_joints - 1)):
        posedirs = posedirs.reshape(n_vertices, 3, -1)
    j_regressor = arr["J_regressor"]
    weights = arr["weights"]
    flame = FlameData(
        v_template=_float(v_template, dtype),
        faces=_index(faces, "f", source, obtain),
        shapedirs=_float(identity, dtype),
        exprdirs=_float(expression, dtype),
        posedirs=_float(posedirs, dtype),
        j_regressor=_float(j_regressor, dtype),
        weights=_float(weights, dtype),
        parents=parents,
        name=flame_name_for(path),
        synthetic=False,
    )
    return flame.validate(source, obtain)


def _flame_from_npz(path: Path, dtype: npt.DTypeLike | None, obtain: str | None) -> FlameData:
    source = str(path)
    arrays = _load_npz(path, source, obtain)
    fmt = _format_of(arrays)
    if fmt != FLAME_NPZ_FORMAT:
        raise AssetError(
            source,
            f"is not an emorig FLAME file (format {fmt!r}, expected "
            f"{FLAME_NPZ_FORMAT!r}; convert the official .pkl instead)",
            obtain,
        )
    missing = _missing(arrays, _FLAME_NPZ_KEYS)
    if missing:
        raise AssetError(source, f"missing keys {missing}", obtain)
    a = {k: _array(arrays[k], k, source, obtain) for k in _FLAME_NPZ_KEYS}
    flame = FlameData(
        v_template=_float(a["v_template"], dtype),
        faces=_index(a["faces"], "faces", source, obtain),
        shapedirs=_float(a["shapedirs"], dtype),
        exprdirs=_float(a["exprdirs"], dtype),
        posedirs=_float(a["posedirs"], dtype),
        j_regressor=_float(a["j_regressor"], dtype),
        weights=_float(a["weights"], dtype),
        parents=_index(a["parents"], "parents", source, obtain),
        name=str(arrays["name"][()]) if "name" in arrays else path.stem,
        synthetic=bool(arrays["synthetic"][()]) if "synthetic" in arrays else False,
    )
    return flame.validate(source, obtain)


def read_flame(
    path: str | os.PathLike[str],
    *,
    dtype: npt.DTypeLike | None = np.float32,
    n_shape: int | None = None,
) -> FlameData:
    """Read a FLAME model: an official pickle (2020, 2023, 2023 Open) or our ``.npz``.

    Args:
        path: ``generic_model.pkl``, ``flame2023*.pkl`` or a file from
            :func:`write_flame_npz` (recognised by content, not only by suffix).
        dtype: floating dtype of the arrays (float32 default; ``np.float64`` keeps the
            official double precision; None keeps the stored dtypes).
        n_shape: identity components in ``shapedirs``; None uses the official 300-of-400
            split and refuses other counts. Ignored for our ``.npz``.

    Returns:
        Validated :class:`FlameData` named after the file (``"FLAME 2020"``, ...);
        faces and parents int64, parents[0] == -1.

    Raises:
        AssetError: missing file, unreadable or refused pickle, missing keys, wrong shapes.
    """
    path = Path(path)
    obtain = obtain_text(path, default_key="flame2020")
    _check_exists(path, obtain)
    if _is_npz(path):
        return _flame_from_npz(path, dtype, obtain)
    return _flame_from_pickle(path, dtype, n_shape, obtain)


def write_flame_npz(flame: FlameData, path: str | os.PathLike[str]) -> None:
    """Save a :class:`FlameData` as a pickle-free ``.npz`` (atomically, uncompressed).

    Keys: ``format`` (``"emorig-flame/1"``), ``v_template``, ``faces``, ``shapedirs``,
    ``exprdirs``, ``posedirs``, ``j_regressor``, ``weights``, ``parents``, ``name``,
    ``synthetic``. Arrays are stored with their current dtypes.
    """
    save_npz_atomic(
        path,
        format=np.array(FLAME_NPZ_FORMAT),
        v_template=flame.v_template,
        faces=np.asarray(flame.faces, dtype=np.int64),
        shapedirs=flame.shapedirs,
        exprdirs=flame.exprdirs,
        posedirs=flame.posedirs,
        j_regressor=flame.j_regressor,
        weights=flame.weights,
        parents=np.asarray(flame.parents, dtype=np.int64),
        name=np.array(flame.name),
        synthetic=np.array(bool(flame.synthetic)),
    )


# ---------------------------------------------------------------------------------------------
# Landmark embeddings.


def _embedding_from_official(
    data: dict[str, Any], source: str, obtain: str | None, dtype: npt.DTypeLike | None
) -> LandmarkEmbedding:
    missing = _missing(data, LANDMARK_KEYS)
    if missing:
        raise AssetError(
            source, f"is not DECA's landmark embedding: missing keys {missing}", obtain
        )
    a = {k: _array(data[k], k, source, obtain) for k in LANDMARK_KEYS}
    full_faces, full_bary = a["full_lmk_faces_idx"], a["full_lmk_bary_coords"]
    # DECA stores the fixed 68-point set with a leading batch axis: (1, 68) and (1, 68, 3).
    if full_faces.ndim == 2 and full_faces.shape[0] == 1:
        full_faces = full_faces[0]
    if full_bary.ndim == 3 and full_bary.shape[0] == 1:
        full_bary = full_bary[0]
    return LandmarkEmbedding(
        static_faces=_index(a["static_lmk_faces_idx"], "static_lmk_faces_idx", source, obtain),
        static_bary=_float(a["static_lmk_bary_coords"], dtype),
        dynamic_faces=_index(a["dynamic_lmk_faces_idx"], "dynamic_lmk_faces_idx", source, obtain),
        dynamic_bary=_float(a["dynamic_lmk_bary_coords"], dtype),
        full_faces=_index(full_faces, "full_lmk_faces_idx", source, obtain),
        full_bary=_float(full_bary, dtype),
    )


def read_landmark_embedding(
    path: str | os.PathLike[str],
    *,
    dtype: npt.DTypeLike | None = np.float32,
    n_faces: int | None = None,
) -> LandmarkEmbedding:
    """Read DECA's ``landmark_embedding.npy`` (or our ``.npz`` form of it).

    Args:
        path: the file. The official one is a pickled dict whose two dynamic entries are
            torch tensors; it is read with the restricted unpickler.
        dtype: dtype of the barycentric coordinates (None keeps the stored ones: float64
            static, float32 dynamic and full in DECA's file).
        n_faces: when given, face indices are checked against the mesh's face count.

    Returns:
        Validated :class:`LandmarkEmbedding` (faces int64; full set as (68,) and (68, 3)).

    Raises:
        AssetError: missing file, unreadable or refused content, missing keys, wrong shapes.
    """
    path = Path(path)
    source = str(path)
    obtain = obtain_text(path, default_key="landmark_embedding")
    _check_exists(path, obtain)
    if _is_npz(path):
        arrays = _load_npz(path, source, obtain)
        fmt = _format_of(arrays)
        if fmt == LANDMARKS_NPZ_FORMAT:
            missing = _missing(arrays, _LMK_NPZ_KEYS)
            if missing:
                raise AssetError(source, f"missing keys {missing}", obtain)
            a = {k: _array(arrays[k], k, source, obtain) for k in _LMK_NPZ_KEYS}
            emb = LandmarkEmbedding(
                static_faces=_index(a["static_faces"], "static_faces", source, obtain),
                static_bary=_float(a["static_bary"], dtype),
                dynamic_faces=_index(a["dynamic_faces"], "dynamic_faces", source, obtain),
                dynamic_bary=_float(a["dynamic_bary"], dtype),
                full_faces=_index(a["full_faces"], "full_faces", source, obtain),
                full_bary=_float(a["full_bary"], dtype),
            )
        else:
            emb = _embedding_from_official(arrays, source, obtain, dtype)
    else:
        data = load_npy_object(path, obtain=obtain)
        if not isinstance(data, dict):
            raise AssetError(
                source,
                f"is not DECA's landmark embedding (holds a "
                f"{type(data).__name__}, expected a dict)",
                obtain,
            )
        emb = _embedding_from_official(data, source, obtain, dtype)
    return emb.validate(source, n_faces=n_faces, obtain=obtain)


def write_landmark_embedding_npz(
    embedding: LandmarkEmbedding, path: str | os.PathLike[str]
) -> None:
    """Save a :class:`LandmarkEmbedding` as a pickle-free ``.npz`` (atomically).

    Keys: ``format`` (``"emorig-landmark-embedding/1"``), ``static_faces`` (51,),
    ``static_bary`` (51, 3), ``dynamic_faces`` (79, 17), ``dynamic_bary`` (79, 17, 3),
    ``full_faces`` (68,), ``full_bary`` (68, 3).
    """
    save_npz_atomic(
        path,
        format=np.array(LANDMARKS_NPZ_FORMAT),
        static_faces=np.asarray(embedding.static_faces, dtype=np.int64),
        static_bary=embedding.static_bary,
        dynamic_faces=np.asarray(embedding.dynamic_faces, dtype=np.int64),
        dynamic_bary=embedding.dynamic_bary,
        full_faces=np.asarray(embedding.full_faces, dtype=np.int64),
        full_bary=embedding.full_bary,
    )


def read_mediapipe_embedding(
    path: str | os.PathLike[str],
    *,
    dtype: npt.DTypeLike | None = np.float32,
    n_faces: int | None = None,
) -> MediapipeEmbedding:
    """Read EMOCA v2's ``mediapipe_landmark_embedding.npz``.

    Args:
        path: the file, keys ``lmk_face_idx`` (M,), ``lmk_b_coords`` (M, 3),
            ``landmark_indices`` (M,) (M = 105 in the official file).
        dtype: dtype of the barycentric coordinates (None keeps the stored one).
        n_faces: when given, face indices are checked against the mesh's face count.

    Returns:
        Validated :class:`MediapipeEmbedding` (indices int64).

    Raises:
        AssetError: missing file, not an npz, missing keys, wrong shapes.
    """
    path = Path(path)
    source = str(path)
    obtain = obtain_text(path, default_key="mediapipe_embedding")
    _check_exists(path, obtain)
    arrays = _load_npz(path, source, obtain)
    missing = _missing(arrays, MEDIAPIPE_KEYS)
    if missing:
        raise AssetError(
            source, f"is not a MediaPipe landmark embedding: missing keys {missing}", obtain
        )
    a = {k: _array(arrays[k], k, source, obtain) for k in MEDIAPIPE_KEYS}
    emb = MediapipeEmbedding(
        faces=_index(a["lmk_face_idx"], "lmk_face_idx", source, obtain),
        bary=_float(a["lmk_b_coords"], dtype),
        mediapipe_index=_index(a["landmark_indices"], "landmark_indices", source, obtain),
    )
    return emb.validate(source, n_faces=n_faces, obtain=obtain)

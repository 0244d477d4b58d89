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


# ---------------------------------------------------------------------------------------------
# DECA and EMOCA checkpoints.
#
# Key names and shapes are listed here from the upstream module definitions (torchvision's
# ResNet layout as copied by DECA's decalib/models/resnet.py without fc, DECA's ResnetEncoder
# head ``layers.0``/``layers.2`` and the ``Generator`` of decalib/models/decoders.py), not from
# emorig's modules, so the tests compare two independent descriptions.

DECA_N_PARAMS = 236  # 100 shape + 50 tex + 50 exp + 6 pose + 3 cam + 27 light
DECA_N_DETAIL = 128
DECA_N_EXP = 50


def _bn_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def resnet_state_shapes(
    layers: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, bottleneck: bool = True
) -> dict[str, tuple[int, ...]]:
    """torchvision ResNet state-dict keys -> shapes, in torchvision's order, without ``fc``."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (width, 3, 7, 7)}
    shapes.update(_bn_shapes("bn1", width))
    expansion = 4 if bottleneck else 1
    in_c = width
    for i, n_blocks in enumerate(layers):
        planes = width * 2**i
        stride = 1 if i == 0 else 2
        for b in range(n_blocks):
            p = f"layer{i + 1}.{b}"
            if bottleneck:
                shapes[f"{p}.conv1.weight"] = (planes, in_c, 1, 1)
                shapes.update(_bn_shapes(f"{p}.bn1", planes))
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn_shapes(f"{p}.bn2", planes))
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                shapes.update(_bn_shapes(f"{p}.bn3", planes * 4))
            else:
                shapes[f"{p}.conv1.weight"] = (planes, in_c, 3, 3)
                shapes.update(_bn_shapes(f"{p}.bn1", planes))
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn_shapes(f"{p}.bn2", planes))
            if b == 0 and (stride != 1 or in_c != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, in_c, 1, 1)
                shapes.update(_bn_shapes(f"{p}.downsample.1", planes * expansion))
            in_c = planes * expansion
    return shapes


def deca_encoder_shapes(
    out_features: int, width: int = 64, hidden: int = 1024
) -> dict[str, tuple[int, ...]]:
    """DECA's ``ResnetEncoder``: ``encoder.*`` (ResNet-50) + ``layers.0`` / ``layers.2``."""
    shapes = {f"encoder.{k}": v for k, v in resnet_state_shapes(width=width).items()}
    features = width * 32
    shapes.update(
        {
            "layers.0.weight": (hidden, features),
            "layers.0.bias": (hidden,),
            "layers.2.weight": (out_features, hidden),
            "layers.2.bias": (out_features,),
        }
    )
    return shapes


def deca_generator_shapes(latent_dim: int = 181) -> dict[str, tuple[int, ...]]:
    """DECA's detail ``Generator`` (``D_detail``) keys -> shapes."""
    shapes: dict[str, tuple[int, ...]] = {
        "l1.0.weight": (128 * 8 * 8, latent_dim),
        "l1.0.bias": (128 * 8 * 8,),
    }
    shapes.update(_bn_shapes("conv_blocks.0", 128))
    convs = {2: (128, 128), 6: (64, 128), 10: (64, 64), 14: (32, 64), 18: (16, 32)}
    for index, (c_out, c_in) in convs.items():
        shapes[f"conv_blocks.{index}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"conv_blocks.{index}.bias"] = (c_out,)
        shapes.update(_bn_shapes(f"conv_blocks.{index + 1}", c_out))
    shapes["conv_blocks.21.weight"] = (1, 16, 3, 3)
    shapes["conv_blocks.21.bias"] = (1,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> Any:
    """An OrderedDict of random tensors with these shapes: float32 weights, positive
    ``running_var``, int64 ``num_batches_tracked`` (as a trained BatchNorm has)."""
    from collections import OrderedDict

    import torch

    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(int(torch.randint(1, 10**6, (), generator=gen)))
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    return state


def deca_state_dicts(
    seed: int = 0,
    width: int = 64,
    hidden: int = 1024,
    n_params: int = DECA_N_PARAMS,
    n_detail: int = DECA_N_DETAIL,
    n_exp: int = DECA_N_EXP,
) -> dict[str, Any]:
    """``{"E_flame", "E_detail", "D_detail"}`` random state dicts in DECA's layout."""
    return {
        "E_flame": random_state(deca_encoder_shapes(n_params, width, hidden), seed),
        "E_detail": random_state(deca_encoder_shapes(n_detail, width, hidden), seed + 1),
        "D_detail": random_state(deca_generator_shapes(3 + n_exp + n_detail), seed + 2),
    }


def _edit_nested(
    nets: dict[str, Any],
    drop: tuple[str, ...],
    extra: dict[str, Any] | None,
    reshape: dict[str, tuple[int, ...]] | None,
) -> None:
    """Apply ``drop``/``extra``/``reshape`` given as ``"E_flame.layers.0.weight"`` keys."""
    import torch

    for dotted in drop:
        net, key = dotted.split(".", 1)
        del nets[net][key]
    for dotted, value in (extra or {}).items():
        net, key = dotted.split(".", 1)
        nets[net][key] = value
    for dotted, shape in (reshape or {}).items():
        net, key = dotted.split(".", 1)
        nets[net][key] = torch.zeros(shape)


def write_deca_tar(
    path: str | Path,
    *,
    seed: int = 0,
    width: int = 64,
    hidden: int = 1024,
    legacy: bool = False,
    training: bool = False,
    drop: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    reshape: dict[str, tuple[int, ...]] | None = None,
    top_level: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``deca_model.tar`` look-alike: ``torch.save`` of ``{"E_flame", "E_detail",
    "D_detail"}`` state dicts (real shapes with the defaults; ``width``/``hidden`` shrink the
    ResNet stem and the head for fast tests).

    ``training`` adds ``opt``, ``global_step`` and ``batch_size`` like DECA's trainer;
    ``legacy`` writes the pre-1.6 stream format; ``drop``/``extra``/``reshape`` edit entries
    named ``"<net>.<key>"``; ``top_level`` adds top-level entries. Returns the state dicts.
    """
    import torch

    nets = deca_state_dicts(seed, width, hidden)
    _edit_nested(nets, drop, extra, reshape)
    content: dict[str, Any] = dict(nets)
    if training:
        content["opt"] = {
            "state": {},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "params": [0]}],
        }
        content["global_step"] = 120000
        content["batch_size"] = 8
    content.update(top_level or {})
    torch.save(content, str(path), _use_new_zipfile_serialization=not legacy)
    return nets


class _FakeContainerMetadata:
    """Pickles as ``omegaconf.base.ContainerMetadata`` (a dataclass in OmegaConf 2.x)."""

    def __getstate__(self) -> dict[str, Any]:
        import collections
        import typing

        return {
            "ref_type": typing.Any,
            "object_type": dict,
            "optional": True,
            "key": None,
            "flags": {},
            "flags_root": False,
            "resolver_cache": collections.defaultdict(dict),
            "key_type": typing.Any,
            "element_type": typing.Any,
        }


class _FakeAnyNode:
    """Pickles as ``omegaconf.nodes.AnyNode`` holding one value."""

    def __init__(self, value: Any, parent: Any):
        self.value, self.parent = value, parent

    def __getstate__(self) -> dict[str, Any]:
        return {"_metadata": _FakeContainerMetadata(), "_parent": self.parent, "_val": self.value}


class _FakeDictConfig:
    """Pickles as ``omegaconf.dictconfig.DictConfig``: state with ``_content`` of nodes."""

    def __init__(self, content: dict[str, Any], parent: Any = None):
        self.content, self.parent = content, parent

    def __getstate__(self) -> dict[str, Any]:
        nodes = {
            k: _FakeDictConfig(v, self) if isinstance(v, dict) else _FakeAnyNode(v, self)
            for k, v in self.content.items()
        }
        return {
            "_metadata": _FakeContainerMetadata(),
            "_parent": self.parent,
            "_flags_cache": None,
            "_content": nodes,
        }


for _cls, _module, _name in (
    (_FakeContainerMetadata, "omegaconf.base", "ContainerMetadata"),
    (_FakeAnyNode, "omegaconf.nodes", "AnyNode"),
    (_FakeDictConfig, "omegaconf.dictconfig", "DictConfig"),
):
    _cls.__module__, _cls.__qualname__, _cls.__name__ = _module, _name, _name


@contextlib.contextmanager
def _fake_omegaconf() -> Iterator[None]:
    """Register ``omegaconf`` stand-in modules so pickle can name the fake classes."""
    modules = {
        "omegaconf": types.ModuleType("omegaconf"),
        "omegaconf.base": types.ModuleType("omegaconf.base"),
        "omegaconf.nodes": types.ModuleType("omegaconf.nodes"),
        "omegaconf.dictconfig": types.ModuleType("omegaconf.dictconfig"),
    }
    modules["omegaconf.base"].ContainerMetadata = _FakeContainerMetadata  # type: ignore[attr-defined]
    modules["omegaconf.nodes"].AnyNode = _FakeAnyNode  # type: ignore[attr-defined]
    modules["omegaconf.dictconfig"].DictConfig = _FakeDictConfig  # type: ignore[attr-defined]
    saved = {n: sys.modules.get(n) for n in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def emoca_cfg(
    variant: str = "v2",
    *,
    jaw: bool = False,
    global_pose: bool = False,
    deca_class: str = "ExpDECA",
) -> dict[str, Any]:
    """An EMOCA ``cfg.yaml`` in its real nesting: ``coarse``/``detail`` x ``data``, ``model``,
    ``learning``, ``inout`` (values from gdl_apps/EMOCA/training/emoca.yaml; ``variant="v2"``
    adds the MediaPipe landmark losses, the MediaPipe embedding path and the lip-reading loss
    of EMOCA v2)."""
    assets = "/home/user/emoca/assets"
    sizes = {
        "n_shape": 100,
        "n_tex": 50,
        "n_exp": 50,
        "n_pose": 6,
        "n_cam": 3,
        "n_light": 27,
        "n_identity": 512,
        "n_dlatent": 512,
        "n_detail": 128,
        "image_size": 224,
        "uv_size": 256,
    }
    paths = {
        "topology_path": f"{assets}/FLAME/geometry/head_template.obj",
        "fixed_displacement_path": f"{assets}/FLAME/geometry/fixed_uv_displacements/"
        "fixed_displacement_256.npy",
        "flame_model_path": f"{assets}/FLAME/geometry/generic_model.pkl",
        "flame_lmk_embedding_path": f"{assets}/FLAME/geometry/landmark_embedding.npy",
        "face_mask_path": f"{assets}/FLAME/mask/uv_face_mask.png",
        "face_eye_mask_path": f"{assets}/FLAME/mask/uv_face_eye_mask.png",
        "pretrained_modelpath": f"{assets}/DECA/data/deca_model.tar",
        "pretrained_vgg_face_path": f"{assets}/FaceRecognition/resnet50_ft_weight.pkl",
        "tex_path": f"{assets}/FLAME/texture/FLAME_albedo_from_BFM.npz",
    }

    def model(mode: str) -> dict[str, Any]:
        m: dict[str, Any] = dict(paths)
        m.update(
            {
                "deca_class": deca_class,
                "expression_backbone": "deca_clone",
                "exp_deca_global_pose": global_pose,
                "exp_deca_jaw_pose": jaw,
                "mode": mode,
                "resume_training": False,
                "useSeg": "rend" if mode == "coarse" else "gt",
                "use_landmarks": mode == "detail",
                "eyed": 0.5,
                "lipd": 0.5,
                "idw": 0,
                "emonet_weight": 1.0 if mode == "coarse" else 0.0015,
                "use_emonet_loss": mode == "coarse",
                "emonet_model_path": "",
                "use_texture": False,
                "tex_type": "BFM",
                "neural_renderer": False,
            }
        )
        if mode == "detail":
            m.update({"train_coarse": False, "mrfwr": 0.05, "zregw": 0.005, "sfsw": [5, 0, 0, 0]})
        m.update(sizes)
        if variant == "v2":
            m["flame_mediapipe_lmk_embedding_path"] = (
                f"{assets}/FLAME/geometry/mediapipe_landmark_embedding.npz"
            )
            if mode == "coarse":
                m.update(
                    {
                        "use_mediapipe_landmarks": True,
                        "lmk_weight_mp": 1.5,
                        "use_eye_distance_mediapipe": True,
                        "use_lip_distance_mediapipe": True,
                        "use_mouth_corner_distance_mediapipe": True,
                        "eyed_mp": 0.5,
                        "lipd_mp": 0.5,
                        "lipread_loss": {
                            "lipread_loss": "mse_loss",
                            "weight": 20,
                            "use_as_loss": True,
                        },
                    }
                )
        return m

    def stage(mode: str) -> dict[str, Any]:
        run = f"/is/cluster/emoca/EMOCA_{variant}/{mode}"
        return {
            "data": {"data_class": "AffectNetEmoNetSplitModule", "image_size": 224, "scale": 1.25},
            "model": model(mode),
            "learning": {"learning_rate": 5e-05, "optimizer": "Adam", "batch_size_train": 32},
            "inout": {
                "full_run_dir": run,
                "checkpoint_dir": f"{run}/checkpoints",
                "name": "ExpDECA_Affec_clone_NoRing_EmoC_F2_DeSeggt_BlackC_Aug_early",
            },
        }

    return {"coarse": stage("coarse"), "detail": stage("detail")}


def emoca_extra_state(variant: str = "v2", seed: int = 7) -> dict[str, Any]:
    """Non-network entries of an EMOCA ``state_dict``: FLAME/renderer buffers, UV masks and
    loss networks (shapes of the real ones where small; a few entries per network)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {
        "deca.uv_face_eye_mask": torch.rand((1, 1, 256, 256), generator=gen),
        "deca.fixed_uv_dis": torch.randn((256, 256), generator=gen) * 1e-3,
        "deca.flame.faces_tensor": torch.randint(0, 5023, (9976, 3), generator=gen),
        "deca.flame.v_template": torch.randn((5023, 3), generator=gen),
        "deca.flame.shapedirs": torch.randn((5023, 3, 150), generator=gen),
        "deca.flame.posedirs": torch.randn((36, 15069), generator=gen),
        "deca.flame.J_regressor": torch.rand((5, 5023), generator=gen),
        "deca.flame.parents": torch.tensor([-1, 0, 1, 1, 1]),
        "deca.flame.lbs_weights": torch.rand((5023, 5), generator=gen),
        "deca.flame.eye_pose": torch.zeros(1, 6),
        "deca.flame.neck_pose": torch.zeros(1, 3),
        "deca.flame.lmk_faces_idx": torch.randint(0, 9976, (51,), generator=gen),
        "deca.flame.lmk_bary_coords": torch.rand((51, 3), generator=gen),
        "deca.render.faces": torch.randint(0, 5023, (1, 9976, 3), generator=gen),
        "deca.render.raw_uvcoords": torch.rand((1, 5118, 2), generator=gen),
        "deca.render.constant_factor": torch.rand((9,), generator=gen),
        "deca.perceptual_loss.featlayer.vgg19.0.weight": torch.randn((64, 3, 3, 3), generator=gen),
        "deca.perceptual_loss.featlayer.vgg19.0.bias": torch.randn((64,), generator=gen),
    }
    if variant == "v2":
        state["deca.flame.lmk_faces_idx_mediapipe"] = torch.randint(0, 9976, (105,), generator=gen)
        state["deca.flame.lmk_bary_coords_mediapipe"] = torch.rand((105, 3), generator=gen)
        state["lipread_loss.model.frontend3D.0.weight"] = torch.randn(
            (64, 1, 5, 7, 7), generator=gen
        )
    return state


EMOCA_CHECKPOINT = "detail/checkpoints/deca-epoch=03-val_loss/dataloader_idx_0=3.27.ckpt"


def write_emoca_folder(
    path: str | Path,
    variant: str = "v2",
    *,
    seed: int = 0,
    jaw: bool = False,
    global_pose: bool = False,
    deca_class: str = "ExpDECA",
    drop: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    checkpoint: str = EMOCA_CHECKPOINT,
) -> dict[str, Any]:
    """An EMOCA model folder: ``cfg.yaml`` (real nesting) and a PyTorch Lightning checkpoint
    at ``checkpoint`` whose ``state_dict`` has ``deca.E_flame.*``, ``deca.E_detail.*``,
    ``deca.D_detail.*``, ``deca.E_expression.*`` (real shapes; 50, 53 or 56 expression
    outputs), FLAME/renderer buffers and loss-network weights, and whose ``hyper_parameters``
    pickle OmegaConf ``DictConfig``s (fake classes named ``omegaconf.dictconfig.DictConfig``).

    ``drop`` removes and ``extra`` adds ``state_dict`` entries (full ``deca.*`` names).
    Returns ``{"state_dict": ..., "checkpoint": Path, "cfg": dict}``.
    """
    from collections import OrderedDict

    import torch
    import yaml

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    cfg = emoca_cfg(variant, jaw=jaw, global_pose=global_pose, deca_class=deca_class)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    nets = deca_state_dicts(seed)
    if deca_class == "ExpDECA":
        n_out = DECA_N_EXP + 3 * int(jaw) + 3 * int(global_pose)
        nets["E_expression"] = random_state(deca_encoder_shapes(n_out), seed + 3)
    state: Any = OrderedDict()
    for net, sub in nets.items():
        for key, value in sub.items():
            state[f"deca.{net}.{key}"] = value
    state.update(emoca_extra_state(variant, seed + 4))
    for key in drop:
        del state[key]
    state.update(extra or {})
    hparams = {
        "model_params": _FakeDictConfig(cfg["detail"]["model"]),
        "learning_params": _FakeDictConfig(cfg["detail"]["learning"]),
        "inout_params": _FakeDictConfig(cfg["detail"]["inout"]),
        "stage_name": "detail",
    }
    content = {
        "epoch": 3,
        "global_step": 41234,
        "pytorch-lightning_version": "1.4.9",
        "state_dict": state,
        "callbacks": {
            "ModelCheckpoint": {
                "monitor": "val_loss/dataloader_idx_0",
                "best_model_score": torch.tensor(3.27),
                "best_model_path": f"/is/cluster/{checkpoint}",
            }
        },
        "optimizer_states": [
            {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}
        ],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
    }
    ckpt = root / checkpoint
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with _fake_omegaconf():
        torch.save(content, str(ckpt))
    return {"state_dict": state, "checkpoint": ckpt, "cfg": cfg}


# ---------------------------------------------------------------------------------------------
# EMOCA's image-based emotion recogniser (ResNet50/): gdl/models/EmoCnnModule.py with the
# VGGFace2 ResNet-50 of gdl/layers/losses/FRNet.py, trained with
# gdl_apps/EmotionRecognition/training/resnet50.yaml, packaged by
# gdl_apps/EmotionRecognition/utils/package_model.py (cfg.yaml + checkpoints/<relative path>).

EMOCA_RECOGNIZER_CHECKPOINT = (
    "checkpoints/deca-epoch=05-val_loss_total/dataloader_idx_0=1.27524424.ckpt"
)
VGGFACE2_IDENTITIES = 8631  # FRNet's ResNet always builds fc (8631 VGGFace2 identities)


def emoca_recognizer_cfg(
    folder: str = "/home/user/emoca/assets/EmotionRecognition/image_based_networks/ResNet50",
) -> dict[str, Any]:
    """EMOCA's emotion-recogniser ``cfg.yaml`` in its real nesting (``data``, ``model``,
    ``learning``, ``inout``), values from resnet50.yaml, ``inout`` as package_model.py leaves
    it."""
    return {
        "data": {
            "data_class": "AffectNetEmoNetSplitModuleValTest",
            "input_dir": "/ps/project/EmotionalFacialAnimation/data/affectnet",
            "ignore_invalid": "like_emonet",
            "n_expression": 8,
            "mode": "manual",
            "image_size": 224,
            "scale": 1.25,
            "face_detector": "fan",
            "sampler": "balanced_expr",
            "augmentation": [{"Affine": [{"scale": [0.8, 1.2]}, {"rotate": [-10.0, 10.0]}]}],
        },
        "model": {
            "emodeca_type": "EmoCnnModule",
            "backbone": "resnet50",
            "load_pretrained": True,
            "pretrained_weights": "/ps/scratch/rdanecek/FaceRecognition/resnet50_ft_weight.pkl",
            "predict_expression": True,
            "predict_valence": True,
            "predict_arousal": True,
            "predict_AUs": False,
            "a_loss": {"a_mse": 1.0},
            "v_loss": {"v_mse": 1.0},
            "va_loss": {"va_lpcc": 1.0, "va_lccc": 1.0},
            "exp_loss": "nll_loss",
            "va_loss_scheme": "shake",
            "a_activation": "none",
            "v_activation": "none",
            "exp_activation": "log_softmax",
            "AU_activation": "none",
            "expression_balancing": False,
        },
        "learning": {
            "learning_rate": 0.0001,
            "optimizer": "Adam",
            "batch_size_train": 64,
            "early_stopping": {"patience": 10},
            "checkpoint_after_training": "best",
            "max_epochs": 50,
        },
        "inout": {
            "output_dir": str(Path(folder).parent),
            "full_run_dir": folder,
            "checkpoint_dir": f"{folder}/checkpoints",
            "name": "EmoCnn_resnet50_shake_samp-balanced_expr_Aug_early",
            "time": "2021_11_09_05-15-38",
            "random_id": "-8198495972451127810",
        },
    }


def emoca_recognizer_state(
    seed: int = 0, width: int = 64, n_identities: int = VGGFACE2_IDENTITIES, n_outputs: int = 10
) -> Any:
    """An EmoCnnModule ``state_dict`` in registration order: ``backbone.*`` (torchvision
    names, ``num_batches_tracked`` included, then the identity classifier ``backbone.fc``),
    then ``linear.weight`` (8 expressions + valence + arousal, 2048 features at width 64)."""
    features = width * 32
    shapes = {f"backbone.{k}": v for k, v in resnet_state_shapes(width=width).items()}
    shapes["backbone.fc.weight"] = (n_identities, features)
    shapes["backbone.fc.bias"] = (n_identities,)
    shapes["linear.weight"] = (n_outputs, features)
    shapes["linear.bias"] = (n_outputs,)
    return random_state(shapes, seed)


def write_emoca_recognizer_folder(
    path: str | Path,
    *,
    seed: int = 0,
    width: int = 64,
    n_identities: int = VGGFACE2_IDENTITIES,
    n_outputs: int = 10,
    drop: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
    checkpoint: str = EMOCA_RECOGNIZER_CHECKPOINT,
) -> dict[str, Any]:
    """An EMOCA emotion-recogniser folder (``ResNet50/``): ``cfg.yaml`` and a PyTorch
    Lightning checkpoint at ``checkpoint`` (ModelCheckpoint's ``deca-{epoch:02d}-
    {val_loss_total/dataloader_idx_0:.8f}`` name, whose ``/`` makes a sub-folder).

    EmoCnnModule does not save its hyper-parameters (EMOCA passes ``config=cfg`` to
    ``load_from_checkpoint``); the checkpoint still pickles OmegaConf ``DictConfig``s under
    ``hyper_parameters`` so that readers are tested against them. ``width`` and
    ``n_identities`` shrink the network for tests (real: 64 and 8631). ``drop`` removes and
    ``extra`` adds ``state_dict`` entries. Returns ``{"state_dict", "checkpoint", "cfg"}``.
    """
    import torch
    import yaml

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    cfg = emoca_recognizer_cfg(str(root))
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    state = emoca_recognizer_state(seed, width, n_identities, n_outputs)
    for key in drop:
        del state[key]
    state.update(extra or {})
    content = {
        "epoch": 5,
        "global_step": 61230,
        "pytorch-lightning_version": "1.4.9",
        "state_dict": state,
        "callbacks": {
            "ModelCheckpoint": {
                "monitor": "val_loss_total/dataloader_idx_0",
                "best_model_score": torch.tensor(1.27524424),
                "best_model_path": f"{cfg['inout']['full_run_dir']}/{checkpoint}",
            },
            "EarlyStopping": {"wait_count": 2, "stopped_epoch": 0, "patience": 10},
        },
        "optimizer_states": [
            {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
        ],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": _FakeDictConfig(cfg)},
    }
    ckpt = root / checkpoint
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with _fake_omegaconf():
        torch.save(content, str(ckpt))
    return {"state_dict": state, "checkpoint": ckpt, "cfg": cfg}

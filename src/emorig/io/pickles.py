"""A restricted unpickler for the pickled data files of FLAME, DECA and EMOCA.

Official assets are pickles (``generic_model.pkl``) or ``.npy`` files holding pickles
(``landmark_embedding.npy``). Plain :func:`pickle.load` would run whatever code such a file
names, and would need ``chumpy`` and ``scipy`` installed. :func:`load_pickle` instead accepts
only the globals data files need:

* numpy array, dtype and scalar reconstruction (``numpy.core`` and ``numpy._core`` paths);
* ``collections.OrderedDict``, ``copy_reg._reconstructor``, ``object``, ``set``, ``frozenset``
  (chumpy objects keep a ``set`` in their state), and ``_codecs.encode`` restricted to latin-1
  (how Python 3 writes ``bytes`` at pickle protocol 2);
* torch tensors pickled with :func:`pickle.dump` (``torch._utils._rebuild_tensor_v2``,
  ``torch._utils._rebuild_tensor``, ``torch.storage._load_from_bytes``). The bytes given to
  ``_load_from_bytes`` are a legacy ``torch.save`` stream; they are read with
  ``torch.load(..., weights_only=True)``, torch's own restricted loader, and the tensor is then
  rebuilt here after checking its size fits the storage;
* stand-ins for ``chumpy`` objects (any class under ``chumpy``): after loading, each is
  replaced by ``np.asarray(state["x"])``, the array a plain ``chumpy.Ch`` holds;
* stand-ins for ``scipy.sparse`` CSC, CSR and COO matrices/arrays (old ``scipy.sparse.csc`` and
  new ``scipy.sparse._csc`` paths): after loading, each is replaced by a dense numpy array built
  from its pickled ``data``/``indices``/``indptr`` (or ``row``/``col``/``coords``) and
  ``_shape``/``shape``; duplicates are summed like ``toarray()``. scipy is never imported.

Anything else raises :class:`~emorig.errors.AssetError` naming the refused global.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from emorig.errors import AssetError, reading, short_reason

__all__ = [
    "PickleSummary",
    "UnresolvedObject",
    "load_npy_object",
    "load_pickle",
    "read_npy_header",
    "scan_pickle",
]

_MAX_DENSE = 1 << 30  # elements; a sparse matrix larger than this is refused, not densified
_SPARSE_NAME = re.compile(r"^(csc|csr|coo)_(matrix|array)$")
_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}
_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}


# ---------------------------------------------------------------------------------------------
# Stand-ins for foreign classes.


class _Sealed(type):
    """Metaclass that forbids setting attributes on the stand-in classes themselves.

    A pickle's BUILD opcode can ``setattr`` on any object it holds, including a class it got
    from ``find_class``; this keeps the stand-ins immutable.
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        raise TypeError(f"cannot set {name!r} on {cls.__name__}")


class _Stub(metaclass=_Sealed):
    """Placeholder for an instance of a class we do not import; keeps its pickled state."""

    origin = "?"
    state: Any = None  # set by BUILD; stays None if the pickle has no state
    args: tuple[Any, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        obj = object.__new__(cls)
        object.__setattr__(obj, "state", None)
        object.__setattr__(obj, "args", args)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __repr__(self) -> str:
        return f"<stand-in for {self.origin}>"


class _ChumpyStub(_Stub):
    origin = "chumpy"


class _SparseStub(_Stub):
    origin = "scipy.sparse"
    layout = "csc"


@dataclass(frozen=True)
class UnresolvedObject:
    """Left in place of a chumpy object that holds no plain array (e.g. a derived expression).

    Readers raise an :class:`AssetError` only when they actually need such a value.

    Attributes:
        origin: the pickled class, e.g. ``"chumpy.reordering.Select"``.
        reason: why it could not be turned into an array.
    """

    origin: str
    reason: str


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle ``bytes`` at protocol 2, nothing more."""
    if not isinstance(obj, str) or encoding.lower() not in _LATIN1:
        raise pickle.UnpicklingError(
            f"_codecs.encode is only accepted for latin-1 strings, "
            f"not {type(obj).__name__} with encoding {encoding!r}"
        )
    return obj.encode("latin-1", errors)


@lru_cache(maxsize=1)
def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's reconstruction functions, found through numpy itself (any numpy version)."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.arange(2).__reduce_ex__(5)[0]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


_BUILTINS = {"object": object, "set": set, "frozenset": frozenset}


def _torch_load_from_bytes(data: bytes) -> Any:
    """Safe ``torch.storage._load_from_bytes``: a legacy ``torch.save`` stream of one storage."""
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("torch storage payload is not bytes")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(
            f"torch payload holds {type(storage).__name__}, expected a storage"
        )
    return storage


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise pickle.UnpicklingError(f"tensor {what} {value!r} is not a tuple of counts")
    return tuple(value)


def _torch_rebuild_tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any
) -> Any:
    """Safe ``torch._utils._rebuild_tensor(_v2)``: a CPU tensor viewing ``storage``.

    ``requires_grad``, backward hooks and metadata (the v2 extras) are ignored; the size and
    strides are checked against the storage so a malformed file cannot read past its end.
    """
    import torch

    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor is not backed by a torch storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise pickle.UnpicklingError(f"bad tensor storage offset {storage_offset!r}")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        if isinstance(storage, torch.storage.TypedStorage):
            dtype = storage.dtype
            untyped = storage.untyped()
        else:
            dtype, untyped = torch.uint8, storage
        itemsize = torch.empty((), dtype=dtype).element_size()
        n_items = untyped.nbytes() // itemsize
        if all(s > 0 for s in size):
            last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
            if last >= n_items:
                raise pickle.UnpicklingError(
                    f"tensor of size {size} does not fit its storage of {n_items} items"
                )
        return torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, size, stride)


_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"): _torch_rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _torch_rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _torch_load_from_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` only hands out the data types listed above."""

    def __init__(self, file: Any, *, encoding: str, source: str, obtain: str | None):
        super().__init__(file, encoding=encoding)
        self._source = source
        self._obtain = obtain
        self._stubs: dict[tuple[str, str], type] = {}

    def _stub(self, base: type, module: str, name: str, **attrs: Any) -> type:
        key = (module, name)
        if key not in self._stubs:
            self._stubs[key] = _Sealed(name, (base,), {"origin": f"{module}.{name}", **attrs})
        return self._stubs[key]

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        table = _numpy_globals()
        if key in table:
            return table[key]
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return copyreg._reconstructor
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if key in _TORCH:
            return _TORCH[key]
        if module == "chumpy" or module.startswith("chumpy."):
            return self._stub(_ChumpyStub, module, name)
        if module.startswith("scipy.sparse"):
            match = _SPARSE_NAME.match(name)
            if match:
                return self._stub(_SparseStub, module, name, layout=match.group(1))
        raise AssetError(
            self._source,
            f"refused to load: the pickle references {module}.{name}, which is not a data type "
            "this reader accepts (numpy, torch tensors, chumpy arrays, scipy.sparse "
            "CSC/CSR/COO)",
            self._obtain,
        )


# ---------------------------------------------------------------------------------------------
# Replacing stand-ins by numpy arrays.


def _sparse_to_dense(stub: _SparseStub) -> np.ndarray:
    state = stub.state
    if not isinstance(state, dict):
        raise ValueError("no attribute dictionary")
    shape = state.get("_shape", state.get("shape"))
    if shape is None or len(shape) != 2:
        raise ValueError(f"shape {shape!r} is not 2-D")
    rows, cols = (int(s) for s in shape)
    if rows < 0 or cols < 0 or rows * cols > _MAX_DENSE:
        raise ValueError(f"shape {shape!r} is too large to densify")
    data = np.asarray(state["data"]).reshape(-1)
    if data.dtype == object:
        raise ValueError("data has dtype object")
    dense = np.zeros((rows, cols), dtype=data.dtype)
    if stub.layout == "coo":
        coords = state.get("coords")
        if coords is not None:
            row, col = (np.asarray(c).reshape(-1) for c in coords)
        else:
            row, col = np.asarray(state["row"]).reshape(-1), np.asarray(state["col"]).reshape(-1)
    else:
        indices = np.asarray(state["indices"]).reshape(-1).astype(np.int64)
        indptr = np.asarray(state["indptr"]).reshape(-1).astype(np.int64)
        n_major = cols if stub.layout == "csc" else rows
        if (
            indptr.shape[0] != n_major + 1
            or indptr[0] != 0
            or np.any(np.diff(indptr) < 0)
            or indptr[-1] > indices.shape[0]
        ):
            raise ValueError("inconsistent indptr")
        count = int(indptr[-1])
        major = np.repeat(np.arange(n_major), np.diff(indptr))
        minor, data = indices[:count], data[:count]
        row, col = (minor, major) if stub.layout == "csc" else (major, minor)
    row, col = row.astype(np.int64), col.astype(np.int64)
    if not (row.shape == col.shape == data.shape):
        raise ValueError("index and data lengths differ")
    if row.size and (row.min() < 0 or row.max() >= rows or col.min() < 0 or col.max() >= cols):
        raise ValueError("indices outside the matrix")
    np.add.at(dense, (row, col), data)
    return dense


class _Resolver:
    """Walks a loaded object graph and replaces stand-ins (and optionally tensors) by arrays."""

    def __init__(self, source: str, obtain: str | None, to_numpy: bool):
        self.source = source
        self.obtain = obtain
        self.to_numpy = to_numpy
        # id -> (original, converted); keeping the original alive keeps its id unique
        self.memo: dict[int, tuple[Any, Any]] = {}

    def __call__(self, obj: Any) -> Any:
        key = id(obj)
        if key in self.memo:
            return self.memo[key][1]
        out = self._convert(obj)
        self.memo[key] = (obj, out)
        return out

    def _convert(self, obj: Any) -> Any:
        if isinstance(obj, _ChumpyStub):
            state = obj.state
            if isinstance(state, dict) and "x" in state:
                value = self(state["x"])
                if isinstance(value, UnresolvedObject):
                    return value
                return np.asarray(value)
            return UnresolvedObject(obj.origin, "chumpy object without a stored array 'x'")
        if isinstance(obj, _SparseStub):
            try:
                obj.__setstate__(self(obj.state))
                return _sparse_to_dense(obj)
            except (KeyError, ValueError, TypeError) as err:
                raise AssetError(
                    self.source, f"unreadable {obj.origin} ({err})", self.obtain
                ) from None
        if isinstance(obj, dict):
            self.memo[id(obj)] = (obj, obj)
            for k in list(obj):
                obj[k] = self(obj[k])
            return obj
        if isinstance(obj, list):
            self.memo[id(obj)] = (obj, obj)
            obj[:] = [self(v) for v in obj]
            return obj
        if isinstance(obj, tuple):
            return tuple(self(v) for v in obj)
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                self.memo[id(obj)] = (obj, obj)
                for idx in np.ndindex(obj.shape):
                    obj[idx] = self(obj[idx])
            return obj
        if self.to_numpy and type(obj).__module__.startswith("torch"):
            import torch

            if isinstance(obj, torch.Tensor):
                return obj.detach().cpu().numpy()
        return obj


# ---------------------------------------------------------------------------------------------
# Public API.


def _describe(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, name: str | None
) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<pickle bytes>"
    return str(source)


def load_pickle(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    encoding: str = "latin1",
    to_numpy: bool = False,
    name: str | None = None,
    obtain: str | None = None,
) -> Any:
    """Unpickle a data file without running code from it.

    Args:
        path_or_bytes: a file path, or the pickle itself.
        encoding: how Python 2 ``str`` objects are decoded; ``"latin1"`` keeps numpy array
            bytes intact (the FLAME pickles were written by Python 2).
        to_numpy: also convert torch tensors to numpy arrays (int64/float32 as stored).
        name: the file name used in error messages (defaults to the path).
        obtain: where users get the file, appended to error messages.

    Returns:
        The unpickled object, with chumpy values replaced by numpy arrays, scipy.sparse
        matrices by dense numpy arrays, and chumpy objects without an array by
        :class:`UnresolvedObject`.

    Raises:
        AssetError: missing or unreadable file, corrupt pickle, or a forbidden global.
    """
    source = _describe(path_or_bytes, name)
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return _unpickle(io.BytesIO(bytes(path_or_bytes)), encoding, to_numpy, source, obtain)
    with reading(source, obtain), open(path_or_bytes, "rb") as f:  # streamed: read once
        return _unpickle(f, encoding, to_numpy, source, obtain)


def _unpickle(f: Any, encoding: str, to_numpy: bool, source: str, obtain: str | None) -> Any:
    try:
        obj = _RestrictedUnpickler(f, encoding=encoding, source=source, obtain=obtain).load()
        return _Resolver(source, obtain, to_numpy)(obj)
    except AssetError:
        raise
    except RecursionError:
        raise AssetError(source, "pickle is nested too deeply to read", obtain) from None
    except Exception as err:  # any failure on untrusted bytes means a corrupt file
        raise AssetError(source, f"not a readable pickle ({short_reason(err)})", obtain) from None


def _read_bytes(path: Path, source: str, obtain: str | None) -> bytes:
    with reading(source, obtain):
        return path.read_bytes()


def read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read the magic and header of an ``.npy`` stream positioned at its start.

    Args:
        f: binary file object; left positioned at the first data byte.

    Returns:
        (shape, fortran_order, dtype).

    Raises:
        ValueError: not an npy stream, or an unknown format version.
    """
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(f)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(f)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(f)
    reader = getattr(npy_format, "_read_array_header", None)
    if reader is None:
        raise ValueError(f"unsupported npy format version {version}")
    return reader(f, version)


def load_npy_object(
    path: str | os.PathLike[str], *, name: str | None = None, obtain: str | None = None
) -> Any:
    """Read an ``.npy`` file, unpickling object arrays with :func:`load_pickle`'s rules.

    ``np.save`` of an object array (e.g. a dict, as in DECA's ``landmark_embedding.npy``)
    stores an npy header followed by a pickle of the whole array. The header is parsed with
    :mod:`numpy.lib.format`; the pickle is read by the restricted unpickler with
    ``to_numpy=True``, so pickled torch tensors come back as numpy arrays.

    Args:
        path: the ``.npy`` file.
        name: file name for error messages (defaults to the path).
        obtain: where users get the file, appended to error messages.

    Returns:
        For a 0-d object array, the object it holds (e.g. a dict); for other object arrays,
        the array; for plain arrays, the array itself.

    Raises:
        AssetError: missing file, not an npy file, corrupt or forbidden pickle payload.
    """
    source = name if name is not None else str(path)
    data = _read_bytes(Path(path), source, obtain)
    stream = io.BytesIO(data)
    try:
        shape, _fortran, dtype = read_npy_header(stream)
    except Exception as err:
        raise AssetError(source, f"not a numpy .npy file ({short_reason(err)})", obtain) from None
    if not dtype.hasobject:
        from numpy.lib import format as npy_format

        stream.seek(0)
        try:
            return npy_format.read_array(stream, allow_pickle=False)
        except Exception as err:
            raise AssetError(
                source, f"truncated or corrupt .npy file ({short_reason(err)})", obtain
            ) from None
    arr = load_pickle(data[stream.tell() :], name=source, obtain=obtain, to_numpy=True)
    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
        raise AssetError(
            source,
            f"npy payload is not the object array of shape {shape} its header announces",
            obtain,
        )
    return arr[()] if arr.shape == () else arr


@dataclass(frozen=True)
class PickleSummary:
    """What a pickle references, found without building any object.

    Attributes:
        globals: every ``module.name`` the pickle imports, in order of first use.
        forbidden: those :func:`load_pickle` would refuse.
        strings: the short (< 256 characters) strings it contains, e.g. dict keys.
    """

    globals: tuple[str, ...]
    forbidden: tuple[str, ...]
    strings: frozenset[str]


def scan_pickle(path: str | os.PathLike[str], *, obtain: str | None = None) -> PickleSummary:
    """List the globals and short strings of a pickle file without unpickling it.

    Cheap enough to validate a large FLAME pickle: opcodes are streamed with
    :func:`pickletools.genops`, no array is constructed.

    Raises:
        AssetError: missing file, or not a pickle (invalid or truncated opcode stream).
    """
    source = str(path)
    probe = _RestrictedUnpickler(io.BytesIO(b""), encoding="latin1", source=source, obtain=obtain)
    found: list[str] = []
    forbidden: list[str] = []
    strings: set[str] = set()
    memo: dict[int, str | None] = {}
    recent: list[str | None] = [None, None]  # the two last values pushed, if strings
    try:
        with open(path, "rb") as f:
            for opcode, arg, _pos in pickletools.genops(f):
                op = opcode.name
                if op in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if op == "MEMOIZE" else int(arg)] = recent[-1]
                    continue
                ref = None
                pushed: str | None = None
                if op in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    ref = (module, attr)
                elif op == "STACK_GLOBAL":
                    if recent[0] is not None and recent[1] is not None:
                        ref = (recent[0], recent[1])
                elif op in ("GET", "BINGET", "LONG_BINGET"):
                    pushed = memo.get(int(arg))
                elif op in _STRING_OPS and len(arg) < 256:
                    pushed = arg if isinstance(arg, str) else arg.decode("latin-1")
                    strings.add(pushed)
                recent = [recent[-1], pushed]
                if ref is not None:
                    label = f"{ref[0]}.{ref[1]}"
                    if label not in found:
                        found.append(label)
                        try:
                            probe.find_class(*ref)
                        except AssetError:
                            forbidden.append(label)
    except FileNotFoundError:
        raise AssetError(source, "not found", obtain) from None
    except OSError as err:
        raise AssetError(source, f"cannot be read ({short_reason(err)})", obtain) from None
    except Exception as err:
        raise AssetError(source, f"not a readable pickle ({short_reason(err)})", obtain) from None
    return PickleSummary(tuple(found), tuple(forbidden), frozenset(strings))

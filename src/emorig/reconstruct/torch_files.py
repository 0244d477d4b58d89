"""Read ``torch.save`` files (DECA's and EMOCA's official checkpoints) without running code.

Official checkpoints are ``torch.save`` pickles: DECA's ``deca_model.tar`` holds plain state
dicts, EMOCA's PyTorch Lightning ``.ckpt`` files also pickle OmegaConf ``DictConfig``s and
other objects in ``hyper_parameters``. :func:`load_torch_file` reads them with ``torch.load``
(both the zip format and the legacy ``_use_new_zipfile_serialization=False`` stream) and an
unpickler whose ``find_class`` decides every global:

* **data types are used**: what ``torch.load(weights_only=True)`` accepts in this torch
  version (tensor and parameter rebuilders, storages, dtypes, ``torch.Size``,
  ``torch.device``, ``collections.OrderedDict``, ...), numpy's array/dtype/scalar
  reconstruction, ``copyreg._reconstructor``, and the built-in containers and scalars
  (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``int``, ``float``, ``complex``,
  ``str``, ``bytes``, ``bytearray``, ``bool``, ``slice``, ``range``, ``object``) plus
  ``collections.defaultdict``, ``Counter`` and ``deque``;
* **code is refused**: any other global from ``builtins``, ``torch``, ``numpy``,
  ``collections``, ``copyreg``, ``_codecs``, or from modules that run programs, load code
  or touch files and sockets (``os``, ``posix``, ``subprocess``, ``sys``, ``importlib``,
  ``runpy``, ``pickle``, ``marshal``, ``types``, ``functools``, ``operator``, ``shutil``,
  ``socket``, ``ctypes``, ... see ``_REFUSED``) raises :class:`AssetError`;
* **everything else becomes an inert stand-in** (:class:`StandIn`): a class that records
  its constructor arguments, pickled state, items and list entries, and runs nothing. This
  is how ``omegaconf.dictconfig.DictConfig``, ``pytorch_lightning`` helpers, ``typing.Any``
  or ``pathlib.PosixPath`` in ``hyper_parameters`` are read without those packages.

TorchScript archives (which ``torch.load`` would hand to ``torch.jit.load``) are refused.
"""

from __future__ import annotations

import copyreg
import os
import pickle
import types
import warnings
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from emorig.errors import AssetError, reading, short_reason
from emorig.io.pickles import _numpy_globals, _Sealed

__all__ = ["StandIn", "load_torch_file"]


class StandIn:
    """An inert object standing in for an instance of a class we refuse to import.

    Attributes:
        origin: the pickled global, e.g. ``"omegaconf.dictconfig.DictConfig"``.
        args: positional arguments it was created with.
        state: the pickled state (``__setstate__`` argument), or None.
        items: key/value pairs set on it (dict subclasses).
        entries: values appended to it (list subclasses).
    """

    origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "state", None)
        object.__setattr__(obj, "items", {})
        object.__setattr__(obj, "entries", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"stand-in for {self.origin} is read-only")

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.entries.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.entries.extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self.origin}>"


class _SealedStandIn(_Sealed):
    """Metaclass of the generated stand-in classes: no attribute can be set on the class."""


_StandInBase = _SealedStandIn("StandIn", (StandIn,), {})

# Top-level modules whose globals are refused unless listed as data in _data_globals().
_REFUSED_MODULES = """
    builtins __builtin__ torch numpy collections copyreg copy_reg _codecs codecs
    os posix nt posixpath ntpath subprocess sys importlib imp runpy pkgutil zipimport site
    pickle _pickle cPickle pickletools marshal shelve dill cloudpickle joblib
    types code codeop compileall py_compile ast dis inspect functools operator itertools
    shutil tempfile io _io glob socket ssl select http urllib ftplib smtplib telnetlib xmlrpc
    webbrowser ctypes cffi pty signal threading _thread multiprocessing concurrent asyncio
    pdb bdb trace timeit profile cProfile gc atexit platform sysconfig logging unittest
    doctest pydoc setuptools distutils pip commands popen2
"""
_REFUSED = frozenset(_REFUSED_MODULES.split())

_BUILTIN_DATA = {
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "int": int,
    "float": float,
    "complex": complex,
    "str": str,
    "bytes": bytes,
    "bytearray": bytearray,
    "bool": bool,
    "slice": slice,
    "range": range,
    "object": object,
}


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (pickle protocols 0 and 1) that builds stand-ins directly."""
    if isinstance(cls, type) and issubclass(cls, StandIn):
        return cls()
    return copyreg._reconstructor(cls, base, state)


@lru_cache(maxsize=1)
def _data_globals() -> dict[tuple[str, str], Any]:
    """The globals whose real objects are handed to the unpickler."""
    table: dict[tuple[str, str], Any] = dict(_numpy_globals())
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        for dotted, value in _get_allowed_globals().items():
            module, _, name = dotted.rpartition(".")
            table[(module, name)] = value
    except (ImportError, AttributeError):  # private API moved: the stable core of that list
        import torch._utils as tu

        for name in dir(tu):
            if name.startswith("_rebuild_"):
                table[("torch._utils", name)] = getattr(tu, name)
        table[("torch", "Size")] = torch.Size
        table[("torch", "device")] = torch.device
        table[("torch.nn.parameter", "Parameter")] = nn.Parameter
        for name in dir(torch):
            if isinstance(getattr(torch, name, None), torch.dtype):
                table[("torch", name)] = getattr(torch, name)
    for module in ("builtins", "__builtin__"):
        for name, value in _BUILTIN_DATA.items():
            table[(module, name)] = value
    table[("collections", "OrderedDict")] = OrderedDict
    table[("collections", "defaultdict")] = defaultdict
    table[("collections", "Counter")] = Counter
    table[("collections", "deque")] = deque
    table[("copyreg", "_reconstructor")] = _safe_reconstructor
    table[("copy_reg", "_reconstructor")] = _safe_reconstructor
    return table


def _restricted_pickle_module(source: str, obtain: str | None) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose ``Unpickler`` applies the rules above."""
    table = _data_globals()
    stand_ins: dict[tuple[str, str], type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            key = (module, name)
            if key in table:
                return table[key]
            if module.split(".", 1)[0] in _REFUSED:
                raise AssetError(
                    source,
                    f"refused to load: the checkpoint references {module}.{name}, which is code, "
                    "not data (only tensors, numpy arrays and plain containers are accepted)",
                    obtain,
                )
            if key not in stand_ins:
                stand_ins[key] = _SealedStandIn(
                    name, (_StandInBase,), {"origin": f"{module}.{name}"}
                )
            return stand_ins[key]

    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType("emorig_restricted_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


def _is_torchscript(f: Any) -> bool:
    """True for a zip checkpoint holding TorchScript (``constants.pkl``), as torch tests it."""
    start = f.tell()
    magic = f.read(4)
    f.seek(start)
    if magic != b"PK\x03\x04":
        return False
    reader_cls = getattr(torch._C, "PyTorchFileReader", None)
    if reader_cls is not None:
        records = reader_cls(f).get_all_records()
    else:  # pragma: no cover - older/newer torch without the reader binding
        import zipfile

        records = [n.split("/", 1)[-1] for n in zipfile.ZipFile(f).namelist()]
    f.seek(start)
    return "constants.pkl" in records


def load_torch_file(
    path: str | os.PathLike[str], name: str | None = None, obtain: str | None = None
) -> Any:
    """Read a ``torch.save`` file on the CPU without running code from it.

    See the module docstring for what is accepted, refused and replaced by :class:`StandIn`.

    Args:
        path: the checkpoint (zip or legacy format).
        name: file name for error messages (defaults to the path).
        obtain: where users get the file, appended to error messages.

    Returns:
        The unpickled object; tensors are on the CPU.

    Raises:
        AssetError: missing or unreadable file, TorchScript archive, a refused global, or a
            corrupt checkpoint.
    """
    source = name if name is not None else str(path)
    with reading(source, obtain), open(path, "rb") as f:
        try:
            if _is_torchscript(f):
                raise AssetError(
                    source,
                    "is a TorchScript archive, not a checkpoint of weights; refused",
                    obtain,
                )
            module = _restricted_pickle_module(source, obtain)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
                warnings.filterwarnings("ignore", message=".*source code of class.*")
                warnings.filterwarnings("ignore", message=".*Couldn't retrieve source code.*")
                return torch.load(f, map_location="cpu", weights_only=False, pickle_module=module)
        except AssetError:
            raise
        except RecursionError:
            raise AssetError(source, "checkpoint is nested too deeply to read", obtain) from None
        except Exception as err:  # any failure on untrusted bytes means an unreadable file
            raise AssetError(
                source, f"not a readable PyTorch checkpoint ({short_reason(err)})", obtain
            ) from None

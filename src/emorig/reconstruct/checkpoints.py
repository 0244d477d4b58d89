"""Read DECA's and EMOCA's official checkpoints safely and strictly; save and load our format.

Reading (:func:`load_torch_file`)
    Official checkpoints are ``torch.save`` pickles: DECA's ``deca_model.tar`` holds plain state
    dicts, EMOCA's PyTorch Lightning ``.ckpt`` files also pickle OmegaConf ``DictConfig``s and
    other objects in ``hyper_parameters``. They are read with ``torch.load`` (both the zip
    format and the legacy ``_use_new_zipfile_serialization=False`` stream) and an unpickler
    whose ``find_class`` decides every global:

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

Strict loading (:func:`load_deca`, :func:`load_emoca`)
    Every network key of the file must match a parameter or buffer of our model with the same
    shape, and the reverse; otherwise an :class:`AssetError` lists the first missing,
    unexpected and mis-shaped keys with their counts. Keys are reported with the file's own
    names. The one tolerance: a missing BatchNorm ``num_batches_tracked`` counter (older
    PyTorch did not save it; it does not change eval outputs) is set to 0.

Our format (:func:`save_pretrained`, :func:`from_pretrained`)
    A folder with ``config.json`` (format name and version, architecture, sizes, variant) and
    ``model.safetensors`` (our key names), written atomically.
"""

from __future__ import annotations

import copyreg
import dataclasses
import json
import math
import os
import pickle
import types
import warnings
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from emorig.assets import obtain_text
from emorig.errors import AssetError, reading, short_reason
from emorig.io.atomic import atomic_write
from emorig.io.pickles import _numpy_globals, _Sealed
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.emoca import EmocaConfig, EmocaModel

__all__ = [
    "CONFIG_NAME",
    "DECA_PREFIXES",
    "EMOCA_IGNORED_KEYS",
    "EMOCA_IGNORED_PREFIXES",
    "EMOCA_PREFIXES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "StandIn",
    "emoca_config_from_yaml",
    "find_emoca_checkpoint",
    "from_pretrained",
    "load_deca",
    "load_emoca",
    "load_torch_file",
    "save_pretrained",
]

FORMAT_NAME = "emorig-face-encoder"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_DECA_KEY = "deca_model"  # registry keys in emorig.assets (where users obtain the files)
_EMOCA_KEY = "emoca_model"

# Official network -> our submodule.
DECA_PREFIXES: dict[str, str] = {
    "E_flame.": "coarse_encoder.",
    "E_detail.": "detail_encoder.",
    "D_detail.": "detail_decoder.",
}
_DECA_TRAINING_ENTRIES = ("opt", "global_step", "batch_size")  # trainer.py adds these; unused

EMOCA_PREFIXES: dict[str, str] = {
    "deca.E_flame.": "coarse_encoder.",
    "deca.E_detail.": "detail_encoder.",
    "deca.D_detail.": "detail_decoder.",
    "deca.E_expression.": "expression_encoder.",
}
# What an EMOCA Lightning state_dict holds besides the networks, skipped by name:
EMOCA_IGNORED_PREFIXES: tuple[str, ...] = (
    "deca.flame.",  # FLAME buffers (we read FLAME from the user's generic_model.pkl)
    "deca.flametex.",  # albedo basis buffers (stripped from the released packages anyway)
    "deca.render.",  # renderer buffers: faces, UVs, SH constants
    "deca.perceptual_loss.",  # ID-MRF loss: VGG-19 (detail stage)
    "deca.id_loss.",  # VGGFace2 identity loss
    "deca.vgg_loss.",  # VGG-19 perceptual loss
    "emonet_loss.",  # emotion-consistency loss network
    "au_loss.",  # action-unit loss network
    "lipread_loss.",  # lip-reading loss network (EMOCA v2)
    "emotion_mlp.",  # optional emotion regressor on the codes (not part of reconstruction)
)
EMOCA_IGNORED_KEYS: tuple[str, ...] = (
    "deca.uv_face_eye_mask",  # UV masks and fixed displacement: data files we read ourselves
    "deca.uv_face_mask",
    "deca.fixed_uv_dis",
    "deca.displacement_mask",
)
_MP_FLAGS = (  # coarse-stage switches of EMOCA v2's MediaPipe landmark losses
    "use_mediapipe_landmarks",
    "use_mouth_corner_distance_mediapipe",
    "use_lip_distance_mediapipe",
    "use_eye_distance_mediapipe",
)
_LIST_LIMIT = 10


def _emoca_obtain() -> str | None:
    return obtain_text("cfg.yaml", _EMOCA_KEY)


# ---------------------------------------------------------------------------------------------
# Safe torch.load.


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


# ---------------------------------------------------------------------------------------------
# Strict state-dict loading.


def _summarise(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
    noun = "key" if len(items) == 1 else "keys"
    return f"{len(items)} {label} {noun}: {shown}{more}"


@dataclasses.dataclass(frozen=True)
class _KeyMap:
    """File key <-> our key by prefix, e.g. ``E_flame.`` <-> ``coarse_encoder.``."""

    prefixes: Mapping[str, str]

    def to_ours(self, key: str) -> str | None:
        for theirs, ours in self.prefixes.items():
            if key.startswith(theirs):
                return ours + key[len(theirs) :]
        return None

    def to_file(self, key: str) -> str:
        for theirs, ours in self.prefixes.items():
            if key.startswith(ours):
                return theirs + key[len(ours) :]
        return key


_IDENTITY = _KeyMap({"": ""})


def _load_strict(
    model: nn.Module,
    tensors: Mapping[str, Any],
    keys: _KeyMap,
    source: str,
    obtain: str | None,
) -> None:
    """Load ``tensors`` into ``model`` or raise one :class:`AssetError` listing every mismatch.

    Args:
        model: the target; its ``state_dict`` defines what is expected.
        tensors: the file's network entries, under the file's key names.
        keys: how file keys map to ours (unmapped keys are unexpected).
        source: file name for messages.
        obtain: where users get the file.
    """
    expected = model.state_dict()
    found: set[str] = set()
    unexpected: list[str] = []
    wrong: list[str] = []
    state: dict[str, Tensor] = {}
    for file_key, value in tensors.items():
        key = keys.to_ours(file_key)
        if key is None or key not in expected:
            unexpected.append(file_key)
            continue
        found.add(key)
        if not isinstance(value, Tensor):
            wrong.append(f"{file_key} ({type(value).__name__}, expected a tensor)")
        elif tuple(value.shape) != tuple(expected[key].shape):
            wrong.append(f"{file_key} {tuple(value.shape)} (expected {tuple(expected[key].shape)})")
        else:
            state[key] = value
    missing = []
    for key, ref in expected.items():
        if key in found:
            continue
        if key.endswith(".num_batches_tracked"):
            state[key] = torch.zeros_like(ref)  # see module docstring
        else:
            missing.append(keys.to_file(key))
    problems = []
    if missing:
        problems.append(_summarise("missing", missing))
    if unexpected:
        problems.append(_summarise("unexpected", unexpected))
    if wrong:
        problems.append(_summarise("mis-shaped", wrong))
    if problems:
        raise AssetError(
            source, "does not match the expected network (" + "; ".join(problems) + ")", obtain
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# DECA.


def load_deca(path: str | os.PathLike[str], config: DecaConfig | None = None) -> DecaModel:
    """Load DECA's ``deca_model.tar`` into a :class:`DecaModel` (eval mode, CPU).

    The file is a dict with state dicts ``E_flame``, ``E_detail`` and ``D_detail`` (training
    checkpoints also have ``opt``, ``global_step`` and ``batch_size``, which are ignored). Keys
    map as ``E_flame.* -> coarse_encoder.*``, ``E_detail.* -> detail_encoder.*``,
    ``D_detail.* -> detail_decoder.*``, strictly (see the module docstring).

    Args:
        path: the checkpoint.
        config: sizes, if the file is not the released DECA (default: :class:`DecaConfig`).

    Returns:
        The model, in eval mode.

    Raises:
        AssetError: unreadable or unsafe file, missing entries, or keys/shapes that differ.
    """
    source = str(path)
    obtain = obtain_text(path, _DECA_KEY)
    checkpoint = load_torch_file(path, source, obtain)
    if not isinstance(checkpoint, Mapping):
        raise AssetError(
            source, f"expected a dict of state dicts, got {type(checkpoint).__name__}", obtain
        )
    networks = tuple(p.rstrip(".") for p in DECA_PREFIXES)
    absent = [n for n in networks if n not in checkpoint]
    if absent:
        raise AssetError(
            source,
            f"has no {', '.join(repr(n) for n in absent)} "
            f"{'entry' if len(absent) == 1 else 'entries'} (it has: "
            f"{', '.join(map(repr, list(checkpoint)[:_LIST_LIMIT]))})",
            obtain,
        )
    others = [k for k in checkpoint if k not in networks and k not in _DECA_TRAINING_ENTRIES]
    if others:
        raise AssetError(
            source, _summarise("unexpected top-level", [repr(k) for k in others]), obtain
        )
    flat: dict[str, Any] = {}
    for net in networks:
        sub = checkpoint[net]
        if not isinstance(sub, Mapping):
            raise AssetError(
                source, f"entry {net!r} is {type(sub).__name__}, not a state dict", obtain
            )
        for key, value in sub.items():
            flat[f"{net}.{key}"] = value
    model = DecaModel(config)
    _load_strict(model, flat, _KeyMap(DECA_PREFIXES), source, obtain)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# EMOCA.


def _read_yaml(path: Path) -> Any:
    import yaml

    with reading(str(path), _emoca_obtain()), open(path, encoding="utf-8") as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise AssetError(
                str(path), f"not readable YAML ({short_reason(err)})", _emoca_obtain()
            ) from None


def _model_sections(cfg: Any, source: str) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """(the model section the networks are built from, all model sections)."""
    if not isinstance(cfg, Mapping):
        raise AssetError(source, "expected a mapping with 'coarse' and 'detail'", _emoca_obtain())
    sections = []
    for stage in ("detail", "coarse"):  # EMOCA's loader builds the model from the detail stage
        stage_cfg = cfg.get(stage)
        if isinstance(stage_cfg, Mapping) and isinstance(stage_cfg.get("model"), Mapping):
            sections.append(stage_cfg["model"])
    if not sections and isinstance(cfg.get("model"), Mapping):
        sections.append(cfg["model"])  # a single-stage config
    if not sections:
        raise AssetError(source, "has no detail.model (or coarse.model) section", _emoca_obtain())
    return sections[0], sections


def _cfg_int(model_cfg: Mapping[str, Any], key: str, source: str) -> int:
    value = model_cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AssetError(source, f"model.{key} is {value!r}, expected an integer", _emoca_obtain())
    return value


def _unsupported(source: str, what: str) -> AssetError:
    return AssetError(
        source,
        f"unsupported EMOCA configuration: {what} (emorig reads ExpDECA with "
        "expression_backbone deca_clone, or DECA)",
        _emoca_obtain(),
    )


def _variant(sections: list[Mapping[str, Any]]) -> str:
    """``"emoca-v2"`` when MediaPipe landmark losses or the lip-reading loss are configured
    (EMOCA v2's additions), else ``"emoca-v1"``."""
    for section in sections:
        if "lipread_loss" in section or any(bool(section.get(k)) for k in _MP_FLAGS):
            return "emoca-v2"
    return "emoca-v1"


def emoca_config_from_yaml(path: str | os.PathLike[str]) -> DecaConfig:
    """Build the model configuration from an EMOCA ``cfg.yaml``.

    Reads ``detail.model`` (EMOCA's loader uses the detail stage; ``coarse.model`` if absent):
    ``n_shape``, ``n_tex``, ``n_exp``, ``n_pose`` (6), ``n_cam`` (3), ``n_light`` (27),
    ``n_detail``, ``deca_class``, ``expression_backbone``, ``exp_deca_jaw_pose``,
    ``exp_deca_global_pose``. The variant is ``"emoca-v2"`` if any stage configures MediaPipe
    landmark losses (``use_mediapipe_landmarks``, ``use_*_distance_mediapipe``) or the
    lip-reading loss (``lipread_loss``), ``"emoca-v1"`` otherwise, ``"deca"`` for a DECA
    folder.

    Returns:
        An :class:`EmocaConfig` (``deca_class: ExpDECA``) or a :class:`DecaConfig`
        (``deca_class: DECA`` or absent).

    Raises:
        AssetError: unreadable file, missing sizes, or options emorig does not implement.
    """
    path = Path(path)
    source = str(path)
    model_cfg, sections = _model_sections(_read_yaml(path), source)
    sizes = {k: _cfg_int(model_cfg, k, source) for k in ("n_shape", "n_tex", "n_exp", "n_detail")}
    for key, required in (("n_pose", 6), ("n_cam", 3), ("n_light", 27)):
        if _cfg_int(model_cfg, key, source) != required:
            raise _unsupported(source, f"{key}={model_cfg[key]} (DECA's layout needs {required})")
    for key in ("e_flame_type", "e_detail_type"):
        if model_cfg.get(key, "ResnetEncoder") != "ResnetEncoder":
            raise _unsupported(source, f"{key}={model_cfg[key]!r}")
    conditioning = model_cfg.get("detail_conditioning")
    if conditioning is not None and sorted(conditioning) != ["detail", "expression", "jawpose"]:
        raise _unsupported(source, f"detail_conditioning={list(conditioning)!r}")
    if model_cfg.get("n_detail_emo", 0):
        raise _unsupported(source, f"n_detail_emo={model_cfg['n_detail_emo']!r}")
    if str(model_cfg.get("detail_conditioning_type", "concat")).lower() != "concat":
        raise _unsupported(
            source, f"detail_conditioning_type={model_cfg['detail_conditioning_type']!r}"
        )
    common = {
        "n_shape": sizes["n_shape"],
        "n_albedo": sizes["n_tex"],
        "n_expression": sizes["n_exp"],
        "n_detail": sizes["n_detail"],
    }
    deca_class = model_cfg.get("deca_class") or "DECA"
    if deca_class == "DECA":
        return DecaConfig(**common, variant="deca")
    if deca_class != "ExpDECA":
        raise _unsupported(source, f"deca_class={deca_class!r}")
    backbone = model_cfg.get("expression_backbone", "deca_clone")
    if backbone != "deca_clone":
        raise _unsupported(source, f"expression_backbone={backbone!r}")
    return EmocaConfig(
        **common,
        predicts_jaw_pose=bool(model_cfg.get("exp_deca_jaw_pose", False)),
        predicts_global_pose=bool(model_cfg.get("exp_deca_global_pose", False)),
        variant=_variant(sections),
    )


def _loss_in_name(path: Path) -> float | None:
    text = path.stem[path.stem.rfind("=") + 1 :]
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def find_emoca_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """Pick the checkpoint of an EMOCA model folder the way EMOCA's loader does ("best").

    All ``detail/checkpoints/**/*.ckpt`` are sorted; ``last.ckpt`` is skipped; the value after
    the last ``=`` of each file name (e.g. ``deca-epoch=03-val_loss/dataloader_idx_0=3.27.ckpt``
    gives 3.27) is read and the lowest wins (the later one on ties, as in EMOCA's
    ``locate_checkpoint``). A folder with a single checkpoint uses it whatever its name.

    Raises:
        AssetError: no checkpoint, or several and none with a value in its name.
    """
    folder = Path(folder)
    ckpt_dir = folder / "detail" / "checkpoints"
    checkpoints = sorted(ckpt_dir.rglob("*.ckpt")) if ckpt_dir.is_dir() else []
    if not checkpoints:
        raise AssetError(
            str(folder), "has no checkpoint (expected detail/checkpoints/*.ckpt)", _emoca_obtain()
        )
    if len(checkpoints) == 1:
        return checkpoints[0]
    best: Path | None = None
    best_value = math.inf
    for ckpt in checkpoints:
        if ckpt.stem == "last":
            continue
        value = _loss_in_name(ckpt)
        if value is not None and value <= best_value:
            best, best_value = ckpt, value
    if best is None:
        raise AssetError(
            str(ckpt_dir),
            f"holds {len(checkpoints)} checkpoints and none is named '...=<loss>.ckpt'; "
            "keep only the one to use",
            _emoca_obtain(),
        )
    return best


def _emoca_filter(key: str) -> bool:
    """True for the state-dict entries skipped by name (see ``EMOCA_IGNORED_*``)."""
    return key in EMOCA_IGNORED_KEYS or key.startswith(EMOCA_IGNORED_PREFIXES)


def load_emoca(folder: str | os.PathLike[str]) -> DecaModel:
    """Load an EMOCA model folder (``cfg.yaml`` + ``detail/checkpoints/*.ckpt``).

    The configuration comes from :func:`emoca_config_from_yaml`, the checkpoint from
    :func:`find_emoca_checkpoint`. The Lightning checkpoint's ``state_dict`` maps as
    ``deca.E_flame.* -> coarse_encoder.*``, ``deca.E_detail.* -> detail_encoder.*``,
    ``deca.D_detail.* -> detail_decoder.*``, ``deca.E_expression.* -> expression_encoder.*``;
    the FLAME, albedo and renderer buffers and the loss networks listed in
    ``EMOCA_IGNORED_PREFIXES`` / ``EMOCA_IGNORED_KEYS`` are skipped by name; anything else, and
    any missing network key, is an error.

    Args:
        folder: the model folder, e.g. ``EMOCA_v2_lr_mse_20/``.

    Returns:
        An :class:`EmocaModel` for EMOCA (``deca_class: ExpDECA``), a :class:`DecaModel` for
        EMOCA's re-packaged DECA; eval mode, CPU. ``model.config.variant`` records
        ``"emoca-v1"``, ``"emoca-v2"`` or ``"deca"``.

    Raises:
        AssetError: missing or unreadable files, unsupported configuration, or weights that do
            not match it.
    """
    folder = Path(folder)
    cfg_path = folder / "cfg.yaml"
    if not cfg_path.is_file():
        raise AssetError(str(folder), "is not an EMOCA model folder (no cfg.yaml)", _emoca_obtain())
    config = emoca_config_from_yaml(cfg_path)
    ckpt = find_emoca_checkpoint(folder)
    source = str(ckpt)
    checkpoint = load_torch_file(ckpt, source, _emoca_obtain())
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise AssetError(
            source, "is not a PyTorch Lightning checkpoint (no 'state_dict')", _emoca_obtain()
        )
    tensors = {k: v for k, v in state.items() if not _emoca_filter(k)}
    model = EmocaModel(config) if isinstance(config, EmocaConfig) else DecaModel(config)
    prefixes = (
        EMOCA_PREFIXES
        if isinstance(model, EmocaModel)
        else {k: v for k, v in EMOCA_PREFIXES.items() if k != "deca.E_expression."}
    )
    _load_strict(model, tensors, _KeyMap(prefixes), source, _emoca_obtain())
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Our format.


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - installed with accelerate
        raise ImportError(
            "saving and loading emorig model folders needs the 'safetensors' package "
            "(pip install safetensors)"
        ) from None
    return safetensors.torch


def save_pretrained(model: DecaModel, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors``.

    Both files are written atomically (temp file + rename); the folder is created if needed.
    ``config.json`` holds ``format`` (``"emorig-face-encoder"``), ``format_version``,
    ``architecture`` (``"DecaModel"`` or ``"EmocaModel"``) and ``config`` (sizes, variant).

    Returns:
        The folder.
    """
    if not isinstance(model, DecaModel):
        raise TypeError(f"expected a DecaModel or EmocaModel, got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    architecture = "EmocaModel" if isinstance(model, EmocaModel) else "DecaModel"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = _safetensors().save(
        state, metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    )
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": dataclasses.asdict(model.config),
    }
    with atomic_write(folder / WEIGHTS_NAME, "wb") as f:
        f.write(data)
    with atomic_write(folder / CONFIG_NAME, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return folder


def from_pretrained(
    folder: str | os.PathLike[str], device: torch.device | str | None = None
) -> DecaModel:
    """Load a folder written by :func:`save_pretrained` (eval mode).

    Args:
        folder: the model folder.
        device: where to put the model (default: CPU).

    Raises:
        AssetError: missing files, another format, a newer format version, unknown settings,
            or weights that do not match the configuration.
    """
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    with reading(str(cfg_path)), open(cfg_path, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise AssetError(str(cfg_path), f"not valid JSON ({short_reason(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise AssetError(str(cfg_path), f"is not an {FORMAT_NAME} configuration")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AssetError(
            str(cfg_path),
            f"has format version {version!r}; this emorig reads up to {FORMAT_VERSION} "
            "(upgrade emorig)",
        )
    classes = {"DecaModel": (DecaModel, DecaConfig), "EmocaModel": (EmocaModel, EmocaConfig)}
    if meta.get("architecture") not in classes:
        raise AssetError(str(cfg_path), f"unknown architecture {meta.get('architecture')!r}")
    model_cls, config_cls = classes[meta["architecture"]]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    settings = meta.get("config")
    if not isinstance(settings, dict) or set(settings) - fields:
        extra = sorted(set(settings) - fields) if isinstance(settings, dict) else settings
        raise AssetError(str(cfg_path), f"has unknown config settings {extra!r}")
    try:
        config = config_cls(**settings)
    except (TypeError, ValueError) as err:
        raise AssetError(str(cfg_path), f"invalid config ({short_reason(err)})") from None
    weights = folder / WEIGHTS_NAME
    with reading(str(weights)):
        data = weights.read_bytes()
    try:
        tensors = _safetensors().load(data)
    except Exception as err:
        raise AssetError(
            str(weights), f"not a readable safetensors file ({short_reason(err)})"
        ) from None
    model = model_cls(config)
    _load_strict(model, tensors, _IDENTITY, str(weights), None)
    if device is not None:
        model = model.to(device)
    return model.eval()

"""DECA's and EMOCA's official checkpoints, read safely (:mod:`.torch_files`) and strictly.

Strict loading (:func:`load_deca`, :func:`load_emoca`)
    The file's network keys are renamed to ours by prefix (``E_flame.* -> coarse_encoder.*``,
    ...), then loaded with :func:`emorig.io.model_folder.load_state_strict`: every network key
    of the file must match a parameter or buffer of our model with the same shape, and the
    reverse; otherwise an :class:`AssetError` lists the first missing, unexpected and
    mis-shaped keys with their counts. Keys are reported with the file's own names. The one
    tolerance: a missing BatchNorm ``num_batches_tracked`` counter (older PyTorch did not save
    it; it does not change eval outputs) is set to 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from emorig.assets.catalogue import obtain_text
from emorig.errors import AssetError, reading, short_reason
from emorig.io.model_folder import LIST_LIMIT, load_state_strict, summarise_keys
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.emoca import EmocaConfig, EmocaModel
from emorig.reconstruct.torch_files import load_torch_file

__all__ = [
    "DECA_PREFIXES",
    "EMOCA_IGNORED_KEYS",
    "EMOCA_IGNORED_PREFIXES",
    "EMOCA_PREFIXES",
    "emoca_config_from_yaml",
    "find_emoca_checkpoint",
    "load_deca",
    "load_emoca",
]

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


def _emoca_obtain() -> str | None:
    return obtain_text("cfg.yaml", _EMOCA_KEY)


# ---------------------------------------------------------------------------------------------
# Renaming a file's keys, then strict loading.


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
    """Rename ``tensors`` to our key names, then load them with
    :func:`~emorig.io.model_folder.load_state_strict` (messages use the file's names).

    Args:
        model: the target; its ``state_dict`` defines what is expected.
        tensors: the file's network entries, under the file's key names.
        keys: how file keys map to ours (unmapped keys are unexpected).
        source: file name for messages.
        obtain: where users get the file.
    """
    state: dict[str, Any] = {}
    unmapped: list[str] = []
    for file_key, value in tensors.items():
        key = keys.to_ours(file_key)
        if key is None:
            unmapped.append(file_key)
        else:
            state[key] = value
    load_state_strict(model, state, source, obtain, names=keys.to_file, unmapped=unmapped)


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
            f"{', '.join(map(repr, list(checkpoint)[:LIST_LIMIT]))})",
            obtain,
        )
    others = [k for k in checkpoint if k not in networks and k not in _DECA_TRAINING_ENTRIES]
    if others:
        raise AssetError(
            source, summarise_keys("unexpected top-level", [repr(k) for k in others]), obtain
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


def best_checkpoint(folder: Path, ckpt_dir: Path, obtain: str | None) -> Path:
    """Pick a checkpoint under ``ckpt_dir`` the way EMOCA's loaders do ("best").

    All ``**/*.ckpt`` are sorted; ``last.ckpt`` is skipped; the value after the last ``=`` of
    each file name (e.g. ``deca-epoch=03-val_loss/dataloader_idx_0=3.27.ckpt`` gives 3.27) is
    read and the lowest wins (the later one on ties, as in EMOCA's ``locate_checkpoint``). A
    single checkpoint is used whatever its name.

    Raises:
        AssetError: no checkpoint, or several and none with a value in its name.
    """
    checkpoints = sorted(ckpt_dir.rglob("*.ckpt")) if ckpt_dir.is_dir() else []
    if not checkpoints:
        where = ckpt_dir.relative_to(folder).as_posix()
        raise AssetError(str(folder), f"has no checkpoint (expected {where}/*.ckpt)", obtain)
    if len(checkpoints) == 1:
        return checkpoints[0]
    best: Path | None = None
    best_value = math.inf
    for ckpt in checkpoints:
        value = None if ckpt.stem == "last" else _loss_in_name(ckpt)
        if value is not None and value <= best_value:
            best, best_value = ckpt, value
    if best is None:
        raise AssetError(
            str(ckpt_dir),
            f"holds {len(checkpoints)} checkpoints and none is named '...=<loss>.ckpt'; "
            "keep only the one to use",
            obtain,
        )
    return best


def lightning_state(ckpt: Path, obtain: str | None) -> Mapping[str, Any]:
    """The ``state_dict`` of an EMOCA (PyTorch Lightning) ``.ckpt``, read safely."""
    checkpoint = load_torch_file(ckpt, str(ckpt), obtain)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise AssetError(
            str(ckpt), "is not a PyTorch Lightning checkpoint (no 'state_dict')", obtain
        )
    return state


def find_emoca_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """The checkpoint of an EMOCA model folder (``detail/checkpoints``), picked by
    :func:`best_checkpoint`."""
    folder = Path(folder)
    return best_checkpoint(folder, folder / "detail" / "checkpoints", _emoca_obtain())


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
    state = lightning_state(ckpt, _emoca_obtain())
    tensors = {k: v for k, v in state.items() if not _emoca_filter(k)}
    model = EmocaModel(config) if isinstance(config, EmocaConfig) else DecaModel(config)
    prefixes = (
        EMOCA_PREFIXES
        if isinstance(model, EmocaModel)
        else {k: v for k, v in EMOCA_PREFIXES.items() if k != "deca.E_expression."}
    )
    _load_strict(model, tensors, _KeyMap(prefixes), source, _emoca_obtain())
    return model.eval()

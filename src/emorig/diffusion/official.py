"""DiffusionRig's released files: the stage-1 checkpoint and an album's ``mean_shape.pkl``.

The checkpoint (``model*.pt``) is a plain ``torch.save(model.state_dict())`` of upstream's
``DiffusionRig`` module: ``denoisingUNet.*`` (the ADM UNet) and ``encoder.*`` (a torchvision
ResNet-18 whose ``fc`` is ``Linear(512, 64)``). It is read with
``torch.load(weights_only=True, map_location="cpu")`` and loaded strictly into
:class:`~emorig.diffusion.model.RigModel`, whose key names are the same. What the file does not
record (heads, dropout, GroupNorm groups, the training image size) is taken from
:meth:`RigConfig.official`; everything else is read from the tensor shapes.

``mean_shape.pkl`` is written by upstream's ``scripts/create_data.py --use_meanshape True``
for a stage-2 album: ``pickle.dump`` of a (1, 100) CUDA tensor, the album's mean DECA shape
code. It is read without a GPU and without running code from the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emorig.assets.catalogue import find_asset
from emorig.diffusion.config import (
    DEFAULT_CONDITION_NAMES,
    IMAGE_CHANNELS,
    RigConfig,
    condition_channels_for,
)
from emorig.diffusion.model import RigModel
from emorig.diffusion.pretrained import save_pretrained
from emorig.errors import AssetError, reading, short_reason
from emorig.io.model_folder import load_state_strict
from emorig.io.pickles import load_pickle

__all__ = [
    "MEAN_SHAPE_OBTAIN",
    "OFFICIAL_OBTAIN",
    "config_from_official",
    "convert_official",
    "load_mean_shape",
    "load_official",
    "read_official",
]

OFFICIAL_OBTAIN = (
    "the DiffusionRig GitHub README, https://github.com/adobe-research/diffusion-rig "
    "(Google Drive link, stage-1 FFHQ model)"
)
MEAN_SHAPE_OBTAIN = (
    "DiffusionRig's scripts/create_data.py --use_meanshape True, which writes "
    "<album lmdb>/mean_shape.pkl"
)
_UNET = "denoisingUNet."
_OUT_BLOCK = re.compile(r"^denoisingUNet\.output_blocks\.(\d+)\.(\d+)\.(\w+)\.")


# ---------------------------------------------------------------------------------------------
# Reading.


def _resolve(path: str | os.PathLike[str]) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    try:
        return find_asset("diffusionrig", path)  # model*.pt anywhere below
    except AssetError:
        raise AssetError(
            str(path),
            "no DiffusionRig stage-1 checkpoint (model*.pt) in this folder or below",
            OFFICIAL_OBTAIN,
        ) from None


def read_official(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The raw state dict of a DiffusionRig checkpoint (CPU tensors, the file's key names).

    Args:
        path: the ``model*.pt`` file, or a folder holding one (searched up to 4 levels deep).

    Returns:
        key -> tensor; a ``module.`` prefix added by DistributedDataParallel is removed.

    Raises:
        AssetError: missing or unreadable file, or not a state dict of tensors.
    """
    path = _resolve(path)
    source = str(path)
    if not path.exists():
        raise AssetError(
            source,
            "not found; expected DiffusionRig's stage-1 checkpoint (model*.pt) at this path",
            OFFICIAL_OBTAIN,
        )
    try:
        with reading(source, OFFICIAL_OBTAIN):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except AssetError:
        raise
    except Exception as err:  # unpickling refused or damaged file
        raise AssetError(
            source, f"not a readable PyTorch state dict ({short_reason(err)})", OFFICIAL_OBTAIN
        ) from None
    if not isinstance(state, Mapping) or not state:
        raise AssetError(
            source, f"expected a state dict, got {type(state).__name__}", OFFICIAL_OBTAIN
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise AssetError(
            source, f"entries that are not named tensors: {', '.join(bad[:5])}", OFFICIAL_OBTAIN
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


# ---------------------------------------------------------------------------------------------
# Architecture from tensor shapes.


def _shape(state: Mapping[str, Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state:
        raise AssetError(
            source,
            f"cannot infer the architecture: no {key!r} (is this a DiffusionRig checkpoint?)",
            OFFICIAL_OBTAIN,
        )
    return tuple(state[key].shape)


def config_from_official(
    state: Mapping[str, Tensor], *, image_size: int = 256, source: str = "<state dict>"
) -> RigConfig:
    """Infer a :class:`RigConfig` from a DiffusionRig state dict.

    Read from shapes: base channels (``time_embed.0``), input channels and hence the
    conditioning buffers (``input_blocks.0.0``), residual blocks per level and channel
    multipliers (the ``output_blocks`` layout), attention levels (``qkv`` entries), the
    up/down-sampling kind, the latent size (``encoder.fc``), the encoder's depth and width,
    and an expression FiLM if present. Heads, dropout and GroupNorm groups are not stored
    and keep their official values; ``image_size`` places the attention resolutions.

    Raises:
        AssetError: a needed key is missing, or a layout emorig does not support.
    """
    emb_out, channels = _shape(state, _UNET + "time_embed.0.weight", source)
    in_channels = _shape(state, _UNET + "input_blocks.0.0.weight", source)[1]
    out_channels = _shape(state, _UNET + "out.2.weight", source)[0]
    if out_channels != IMAGE_CHANNELS:
        raise AssetError(
            source,
            f"the UNet predicts {out_channels} channels; emorig supports epsilon-only models "
            f"({IMAGE_CHANNELS} channels, learn_sigma False)",
            OFFICIAL_OBTAIN,
        )
    condition = DEFAULT_CONDITION_NAMES
    if in_channels - IMAGE_CHANNELS != condition_channels_for(condition):
        raise AssetError(
            source,
            f"the UNet reads {in_channels} input channels; DiffusionRig's conditioning "
            f"({'+'.join(condition)}) needs {IMAGE_CHANNELS + condition_channels_for(condition)}",
            OFFICIAL_OBTAIN,
        )

    # output_blocks.k.j.<name>: per block k, which layers j are residual blocks, which attend.
    resblocks: dict[int, set[int]] = {}
    attends: set[int] = set()
    conv_ups: set[int] = set()  # Upsample convolutions (resblock_updown False)
    for key in state:
        m = _OUT_BLOCK.match(key)
        if not m:
            continue
        k, j, name = int(m.group(1)), int(m.group(2)), m.group(3)
        if name == "in_layers":
            resblocks.setdefault(k, set()).add(j)
        elif name == "qkv":
            attends.add(k)
        elif name == "conv":
            conv_ups.add(k)
    if not resblocks or sorted(resblocks) != list(range(len(resblocks))):
        raise AssetError(source, "cannot infer the architecture: no output_blocks", OFFICIAL_OBTAIN)
    n_out = len(resblocks)
    # The first block that up-samples ends the coarsest level: its index is num_res_blocks.
    up_blocks = sorted(conv_ups) or [k for k in sorted(resblocks) if len(resblocks[k]) > 1]
    num_res_blocks = up_blocks[0] if up_blocks else n_out - 1
    per_level = num_res_blocks + 1
    if num_res_blocks < 1 or n_out % per_level:
        raise AssetError(source, "unrecognised output_blocks layout", OFFICIAL_OBTAIN)
    levels = n_out // per_level
    widths = []
    for level in range(levels):
        k = (levels - 1 - level) * per_level
        widths.append(_shape(state, f"{_UNET}output_blocks.{k}.0.in_layers.2.weight", source)[0])
    channel_mult = tuple(int(w // channels) if w % channels == 0 else w / channels for w in widths)
    attention_levels = sorted({levels - 1 - k // per_level for k in attends})
    attention_resolutions = tuple(image_size // 2**level for level in attention_levels)

    latent_dim, features = _shape(state, "encoder.fc.weight", source)
    encoder_depth = 50 if "encoder.layer1.0.conv3.weight" in state else 18
    encoder_width = _shape(state, "encoder.conv1.weight", source)[0]
    expr_key = _UNET + "input_blocks.1.0.expr_emb_layers.1.weight"
    expression_dim = _shape(state, expr_key, source)[1] if expr_key in state else 0
    try:
        config = RigConfig.official(
            image_size,
            channels=channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            resblock_updown=not conv_ups,
            condition_names=condition,
            latent_dim=latent_dim,
            encoder_depth=encoder_depth,
            encoder_width=encoder_width,
            expression_dim=expression_dim,
        )
    except ValueError as err:
        raise AssetError(source, f"unsupported architecture ({err})", OFFICIAL_OBTAIN) from None
    if emb_out != config.time_embed_dim or features != config.encoder_features:
        raise AssetError(source, "unrecognised time embedding or encoder sizes", OFFICIAL_OBTAIN)
    return config


# ---------------------------------------------------------------------------------------------
# Loading and converting.


def load_official(
    path: str | os.PathLike[str],
    *,
    config: RigConfig | None = None,
    image_size: int = 256,
    device: torch.device | str | None = None,
) -> RigModel:
    """Load DiffusionRig's released stage-1 checkpoint (or a stage-2 one) strictly.

    Args:
        path: the ``model*.pt`` file, or a folder holding one.
        config: the architecture; default: inferred with :func:`config_from_official`
            (the released model gives :meth:`RigConfig.official`).
        image_size: training image size, used only when inferring the configuration.
        device: where to put the model (default: CPU).

    Returns:
        The model, in eval mode.

    Raises:
        AssetError: missing or unreadable file; missing, unexpected or mis-shaped keys
            (listed by name, with counts).
    """
    state = read_official(path)
    source = str(_resolve(path))
    if config is None:
        config = config_from_official(state, image_size=image_size, source=source)
    model = RigModel(config)
    load_state_strict(model, state, source, OFFICIAL_OBTAIN)
    if device is not None:
        model.to(device)
    return model.eval()


def convert_official(
    path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    config: RigConfig | None = None,
    image_size: int = 256,
) -> Path:
    """Convert a DiffusionRig checkpoint once into our folder format (see
    :func:`~emorig.diffusion.pretrained.save_pretrained`).

    Returns:
        The folder.
    """
    model = load_official(path, config=config, image_size=image_size)
    return save_pretrained(model, folder)


def load_mean_shape(path: str | os.PathLike[str]) -> Tensor:
    """Read an album's ``mean_shape.pkl`` (DECA shape code averaged over the album).

    The pickled tensor may have been saved from a GPU; it is rebuilt on the CPU by a
    restricted unpickler (no code from the file runs, no GPU needed).

    Args:
        path: the file.

    Returns:
        (1, S) float32 on the CPU (DECA: S = 100).

    Raises:
        AssetError: missing or unreadable file, or not a (1, S) / (S,) array.
    """
    source = str(path)
    value: Any = load_pickle(path, name=source, obtain=MEAN_SHAPE_OBTAIN)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        value = torch.from_numpy(np.array(value))
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise AssetError(
            source, f"holds {type(value).__name__}, expected a float tensor", MEAN_SHAPE_OBTAIN
        )
    if value.ndim == 1:
        value = value[None]
    if value.ndim != 2 or value.shape[0] != 1 or value.shape[1] < 1:
        raise AssetError(source, f"shape {tuple(value.shape)}, expected (1, S)", MEAN_SHAPE_OBTAIN)
    return value.detach().to(torch.float32).clone()

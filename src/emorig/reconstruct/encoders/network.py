"""Encoders that are networks: DECA, EMOCA and the encoder shipped for the built-in head."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from emorig.reconstruct.encoders.base import EncoderSpec, LoadedWeights
from emorig.types import FaceCode

__all__ = ["BUILTIN", "DECA", "EMOCA", "NetworkEncoder", "load_network"]


class NetworkEncoder:
    """A DECA-style network (a fast inference copy, BatchNorm folded) and, where the head has
    DECA's UV data, its detail decoder."""

    def __init__(self, model, with_detail: bool, device: torch.device):
        self.model = model.for_inference().to(device)
        self.with_detail = with_detail

    @torch.no_grad()
    def encode(self, images: Tensor, landmarks: Tensor) -> tuple[FaceCode, Tensor | None]:
        code = self.model.encode(images.contiguous(memory_format=torch.channels_last))
        displacement = self.model.displacement(code) if self.with_detail else None
        return code, displacement


def load_network(
    weights: str | os.PathLike[str] | None,
    assets: str | os.PathLike[str] | None,
    official: str,
) -> LoadedWeights:
    """A DECA-format network and the head it was trained for (None when unknown).

    ``weights`` may be an emorig model folder (``config.json``; e.g. trained on the built-in
    head), DECA's ``deca_model.tar`` or an EMOCA model folder; without it the ``official``
    asset (``deca_model`` or ``emoca_model``) is looked up in the asset folder.
    """
    from emorig.assets.catalogue import asset_home, find_asset
    from emorig.reconstruct import checkpoints as ckpt

    if weights is None:
        weights = find_asset(official, asset_home(assets))
    path = Path(weights)
    if path.is_dir() and (path / ckpt.CONFIG_NAME).exists():
        model = ckpt.from_pretrained(path)
        info = path / "training.json"
        head = None
        if info.exists():
            head = "builtin" if json.loads(info.read_text()).get("synthetic_head") else None
        return model, head
    if path.is_dir():
        return ckpt.load_emoca(path), "flame2020"
    return ckpt.load_deca(path), "flame2020"


def _load_builtin(weights, assets) -> LoadedWeights:
    from emorig.weights import ENCODER_NAME, packaged_weights

    model, _ = load_network(weights or packaged_weights(ENCODER_NAME), assets, "deca_model")
    return model, "builtin"


def _build(head, renderer, network, photometric: bool = True) -> NetworkEncoder:
    if network is None:
        from emorig.errors import EmorigError

        raise EmorigError("this reconstructor needs its weights (--weights or --assets)")
    device = renderer.flame.v_template.device
    return NetworkEncoder(network, head.uv_face_eye_mask is not None, device)


DECA = EncoderSpec(
    "deca",
    "DECA's network (deca_model.tar from the asset folder, or --weights)",
    lambda weights, assets: load_network(weights, assets, "deca_model"),
    _build,
)
EMOCA = EncoderSpec(
    "emoca",
    "EMOCA's emotion-aware network (its model folder from the asset folder, or --weights)",
    lambda weights, assets: load_network(weights, assets, "emoca_model"),
    _build,
)
BUILTIN = EncoderSpec(
    "builtin",
    "the small encoder shipped for the built-in synthetic head (64 px renders)",
    _load_builtin,
    _build,
)

"""Content checks of the asset files present, with the readers the commands use.

:func:`check_assets` looks for every entry of the catalogue (:mod:`emorig.assets.catalogue`)
and validates the files it finds with the same strict readers and loaders the commands use,
imported only when a check runs, so a file a command would refuse is reported with that
loader's one-line reason:

* FLAME pickles: the pickle is scanned without unpickling (code references refused, keys
  present); the embeddings, template, masks and displacement are read with their
  :mod:`emorig.io` readers; the texture and BFM albedo spaces by their npy headers only;
* ``deca_model.tar``: :func:`emorig.reconstruct.checkpoints.load_deca` (the safe unpickler:
  a pickle that references code is refused, nothing runs; every key and shape strictly);
* EMOCA folders: :func:`~emorig.reconstruct.checkpoints.load_emoca`; the emotion
  recogniser folder: :func:`~emorig.emotion.emoca_recognizer.load_emoca_recognizer`;
* DiffusionRig ``model*.pt``: :func:`emorig.diffusion.official.load_official`
  (``torch.load(weights_only=True)``, keys and shapes strictly).

A checkpoint is read once and loaded strictly, as the command would: about a second for
DECA's 400 MB on a laptop disk (the loaders cannot compare shapes without reading the pickle).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emorig.assets.catalogue import ASSETS, NO_HOME, _match, _missing_message, _walk
from emorig.errors import AssetError, short_reason

__all__ = ["AssetStatus", "check_assets"]


@dataclass(frozen=True)
class AssetStatus:
    """Result of checking one asset.

    Attributes:
        key: the asset's :attr:`AssetSpec.key`.
        path: where it was found, or None.
        ok: True when found and the cheap validation passed.
        message: one readable line (what was found, or what is wrong / how to obtain it).
    """

    key: str
    path: Path | None
    ok: bool
    message: str


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of an ``.npz`` from the npy headers of its members (reads a few bytes)."""
    from emorig.io.pickles import read_npy_header

    shapes: dict[str, tuple[int, ...]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as member:
                shape, _, _ = read_npy_header(member)
            shapes[info.filename[: -len(".npy")]] = tuple(shape)
    return shapes


def _check_texture(path: Path) -> str:
    shapes = _npz_shapes(path)
    missing = [k for k in ("mean", "tex_dir") if k not in shapes]
    if missing:
        raise AssetError(str(path), f"missing keys {missing} (has {sorted(shapes)})")
    mean, tex = shapes["mean"], shapes["tex_dir"]
    if len(mean) != 3 or mean[2] != 3 or len(tex) != 4 or tex[:3] != mean:
        raise AssetError(
            str(path), f"'mean' {mean} and 'tex_dir' {tex} are not (H,W,3) and (H,W,3,K)"
        )
    return f"texture space {mean[0]}x{mean[1]}, {tex[3]} components"


def _check_bfm(path: Path) -> str:
    shapes = _npz_shapes(path)
    missing = [k for k in ("MU", "PC") if k not in shapes]
    if missing:
        raise AssetError(str(path), f"missing keys {missing} (has {sorted(shapes)})")
    n_mu = 1
    for d in shapes["MU"]:
        n_mu *= d
    pc = shapes["PC"]
    n_pc = 1
    for d in pc[:-1]:
        n_pc *= d
    if n_mu % 3 or not pc or n_pc != n_mu:
        raise AssetError(
            str(path), f"'MU' {shapes['MU']} and 'PC' {pc} do not describe the same (H*W*3) albedo"
        )
    return f"BFM albedo, {pc[-1]} components"


def _check_mediapipe(path: Path) -> str:
    from emorig.io.flame_files import read_mediapipe_embedding

    emb = read_mediapipe_embedding(path)
    return f"{emb.faces.shape[0]} embedded MediaPipe points"


def _check_landmarks(path: Path) -> str:
    from emorig.io.flame_files import read_landmark_embedding

    read_landmark_embedding(path)
    return "68-landmark embedding"


def _check_template(path: Path) -> str:
    from emorig.io.obj import read_obj

    v, f, uv = read_obj(path)
    if uv is None:
        raise AssetError(str(path), "has no texture coordinates (vt)")
    uv.validate(str(path), n_faces=f.shape[0])
    return f"{v.shape[0]} vertices, {f.shape[0]} faces, {uv.uv.shape[0]} uv coordinates"


def _check_flame(path: Path) -> str:
    from emorig.io.flame_files import FLAME_KEYS
    from emorig.io.pickles import scan_pickle

    summary = scan_pickle(path)
    if summary.forbidden:
        raise AssetError(
            str(path),
            f"refused: the pickle references {', '.join(summary.forbidden)} (not a data type)",
        )
    missing = [k for k in FLAME_KEYS if k not in summary.strings]
    if missing:
        raise AssetError(str(path), f"is not a FLAME model: missing keys {missing}")
    return "FLAME model pickle (keys present)"


def _n_tensors(model: Any) -> int:
    return len(model.state_dict())


def _check_deca(path: Path) -> str:
    from emorig.reconstruct.checkpoints import load_deca

    model = load_deca(path)
    return f"DECA weights, {_n_tensors(model)} tensors, every key and shape as expected"


def _check_emoca(path: Path) -> str:
    from emorig.reconstruct.checkpoints import load_emoca

    model = load_emoca(path)
    variant = getattr(getattr(model, "config", None), "variant", None) or "EMOCA"
    return f"EMOCA model ({variant}), {_n_tensors(model)} tensors, keys and shapes as expected"


def _check_emotion(path: Path) -> str:
    from emorig.emotion.emoca_recognizer import load_emoca_recognizer

    model = load_emoca_recognizer(path)
    return f"EMOCA emotion recogniser, {_n_tensors(model)} tensors, keys and shapes as expected"


def _check_diffusionrig(path: Path) -> str:
    from emorig.diffusion.official import load_official

    model = load_official(path)
    return f"DiffusionRig weights, {_n_tensors(model)} tensors, keys and shapes as expected"


def _check_uv_mask(path: Path) -> str:
    from emorig.io.uv_files import read_uv_mask

    mask = read_uv_mask(path)
    return f"UV mask, {mask.mean() * 100:.0f}% of the layout"


def _check_fixed_displacement(path: Path) -> str:
    from emorig.io.uv_files import read_fixed_displacement

    d = read_fixed_displacement(path)
    return f"fixed displacement {d.shape[0]}x{d.shape[1]}, range [{d.min():.4f}, {d.max():.4f}]"


def _present(path: Path) -> str:
    return "present (not validated)"


_CHECKS: dict[str, Callable[[Path], str]] = {
    "flame2020": _check_flame,
    "flame2023": _check_flame,
    "flame2023_open": _check_flame,
    "landmark_embedding": _check_landmarks,
    "mediapipe_embedding": _check_mediapipe,
    "head_template": _check_template,
    "flame_texture": _check_texture,
    "bfm_albedo": _check_bfm,
    "deca_model": _check_deca,
    "emoca_model": _check_emoca,
    "emotion_recognizer": _check_emotion,
    "uv_face_eye_mask": _check_uv_mask,
    "uv_face_mask": _check_uv_mask,
    "fixed_displacement": _check_fixed_displacement,
    "diffusionrig": _check_diffusionrig,
}


def check_assets(home: str | os.PathLike[str] | None) -> list[AssetStatus]:
    """Look for every registered asset under ``home`` and validate those present.

    Each file is checked with the reader or strict loader the commands use (see the module
    docstring): a file a command would refuse is reported not ok, with the loader's reason.
    Large data files are read by their headers and keys only (npy headers inside an ``.npz``,
    the key names of a FLAME pickle: the 600 MB texture space is never loaded); network
    checkpoints are read once and compared key by key, shape by shape.

    Args:
        home: the asset folder, or None (every asset is then reported missing).

    Returns:
        One :class:`AssetStatus` per entry of :data:`ASSETS`, in registry order.
    """
    statuses: list[AssetStatus] = []
    root = Path(home) if home is not None else None
    files = _walk(root) if root is not None and root.is_dir() else []
    for spec in ASSETS:
        if root is None:
            statuses.append(AssetStatus(spec.key, None, False, f"{spec.display_name}: {NO_HOME}"))
            continue
        found = _match(spec, files)
        if found is None:
            statuses.append(
                AssetStatus(
                    spec.key, None, False, f"{spec.display_name}: {_missing_message(spec, root)}"
                )
            )
            continue
        check = _CHECKS.get(spec.key, _present)
        try:
            detail = check(found)
        except AssetError as err:
            message = str(err) if err.obtain else f"{err} (obtain it from {spec.obtain})"
            statuses.append(AssetStatus(spec.key, found, False, message))
            continue
        except Exception as err:  # any failure on untrusted bytes: unreadable, not a crash
            statuses.append(
                AssetStatus(
                    spec.key,
                    found,
                    False,
                    f"{found}: unreadable ({short_reason(err)}); obtain it again from "
                    f"{spec.obtain}",
                )
            )
            continue
        statuses.append(AssetStatus(spec.key, found, True, f"{found}: {detail}"))
    return statuses

"""Assemble a head (geometry, landmarks, UVs, albedo space) from the built-in generator or from
the official files in the user's asset folder."""

from __future__ import annotations

import os

from emorig.assets.catalogue import asset_home, find_asset
from emorig.errors import AssetError
from emorig.flame.data import HeadAssets

HEADS = ("builtin", "flame2020", "flame2023", "flame2023_open")
ALBEDO_CHOICES = ("auto", "flame", "bfm", "none")


def load_head(
    name: str = "builtin",
    assets: str | os.PathLike[str] | None = None,
    *,
    albedo: str = "auto",
    n_albedo: int = 50,
    require_landmarks: bool = False,
) -> HeadAssets:
    """Load a head by name.

    Args:
        name: ``"builtin"`` (the synthetic embedded default, needs no files; built once per
            source version, then loaded from the disk cache, see
            :mod:`emorig.flame.builtin.cache`) or one of the
            FLAME releases ``"flame2020"``, ``"flame2023"``, ``"flame2023_open"``.
        assets: the asset folder (default ``$EMORIG_HOME``); ignored for the built-in head.
        albedo: for FLAME heads: ``"flame"`` (FLAME_texture.npz), ``"bfm"``
            (FLAME_albedo_from_BFM.npz), ``"auto"`` (whichever is present, FLAME first) or
            ``"none"``. With no albedo space, renderers use a constant grey, as EMOCA does.
        n_albedo: albedo components to keep (DECA uses 50).
        require_landmarks: raise when DECA's landmark embedding is missing instead of loading
            the head without landmarks.

    Raises:
        AssetError: naming the missing or malformed file and where to obtain it.
    """
    if name == "builtin":
        from emorig.flame.builtin import builtin_head

        return builtin_head()
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    if albedo not in ALBEDO_CHOICES:
        raise ValueError(f"albedo={albedo!r}; choose one of {', '.join(ALBEDO_CHOICES)}")
    from emorig.io.albedo_files import read_albedo_space
    from emorig.io.flame_files import read_flame, read_landmark_embedding, read_mediapipe_embedding
    from emorig.io.obj import read_uv_layout

    home = asset_home(assets)
    flame = read_flame(find_asset(name, home))
    n_faces = flame.faces.shape[0]
    uv = read_uv_layout(find_asset("head_template", home))
    uv.validate("head_template.obj", n_faces=n_faces)

    def optional(key: str):
        try:
            return find_asset(key, home)
        except AssetError:
            return None

    lmk_path = (
        find_asset("landmark_embedding", home)
        if require_landmarks
        else optional("landmark_embedding")
    )
    landmarks = read_landmark_embedding(lmk_path, n_faces=n_faces) if lmk_path else None
    mp_path = optional("mediapipe_embedding")
    mediapipe = read_mediapipe_embedding(mp_path, n_faces=n_faces) if mp_path else None
    space = None
    if albedo != "none":
        keys = {
            "flame": ["flame_texture"],
            "bfm": ["bfm_albedo"],
            "auto": ["flame_texture", "bfm_albedo"],
        }[albedo]
        for key in keys:
            path = find_asset(key, home) if albedo != "auto" else optional(key)
            if path is not None:
                space = read_albedo_space(path, n_components=n_albedo)
                break
    from emorig.io.uv_files import read_fixed_displacement, read_uv_mask

    masks = {}
    for key in ("uv_face_eye_mask", "uv_face_mask"):
        path = optional(key)
        masks[key] = read_uv_mask(path) if path is not None else None
    fixed_path = optional("fixed_displacement")
    fixed = read_fixed_displacement(fixed_path) if fixed_path is not None else None
    notes = {"albedo": space.kind if space is not None else "none (constant grey)"}
    return HeadAssets(
        flame=flame,
        landmarks=landmarks,
        mediapipe=mediapipe,
        uv=uv,
        albedo=space,
        notes=notes,
        fixed_displacement=fixed,
        **masks,
    )

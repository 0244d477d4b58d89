"""Catalogue of the licensed files users bring, and where to find them on disk.

emorig ships none of these files. Users put them in one folder (any layout, up to
``MAX_DEPTH`` levels deep) and point to it with ``--assets DIR`` or ``$EMORIG_HOME``;
:func:`find_asset` locates a file by its official name and :func:`obtain_text` says where a
file is obtained. This module reads no file format: the readers in :mod:`emorig.io` import it
for their error messages, and the content checks live above them in
:mod:`emorig.assets.check`.

Nothing here touches the disk at import time, and no folder is searched unless the user named
it.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from emorig.errors import AssetError

__all__ = [
    "ASSETS",
    "ENV_VAR",
    "MAX_DEPTH",
    "NO_HOME",
    "AssetError",
    "AssetSpec",
    "asset_home",
    "asset_spec",
    "find_asset",
    "obtain_text",
    "spec_for_file",
]

ENV_VAR = "EMORIG_HOME"
MAX_DEPTH = 4  # folder levels below the asset home that are searched
NO_HOME = f"no asset folder given: pass --assets DIR or set {ENV_VAR}"


def _flame_site(item: str) -> str:
    return f"https://flame.is.tue.mpg.de (register, then download '{item}')"


_DECA_DATA = "the DECA repository, https://github.com/yfeng95/DECA (folder data/)"
_EMOCA = "the EMOCA download script, https://emoca.is.tue.mpg.de (register first)"


@dataclass(frozen=True)
class AssetSpec:
    """One kind of file (or model folder) users bring.

    Attributes:
        key: stable identifier, e.g. ``"flame2020"``.
        filenames: accepted file names, most preferred first; shell patterns allowed
            (``"model*.pt"``); matched case-insensitively. For folder assets these name the
            marker file inside the folder (``"cfg.yaml"``).
        what: one-line description of the content.
        obtain: where users get it (used in error messages: "obtain it from ...").
        terms: licence terms in a few words.
        required_for: features that need it.
        kind: ``"file"``, or ``"folder"`` when the asset is the folder holding the marker file;
            :func:`find_asset` then returns the folder.
        requires: for folders, shell patterns relative to the folder that must each match at
            least one file (e.g. ``"detail/checkpoints/*.ckpt"``).
        folder_names: for folders, preferred folder names, most preferred first; any folder
            with the marker and the required files is accepted.
    """

    key: str
    filenames: tuple[str, ...]
    what: str
    obtain: str
    terms: str
    required_for: tuple[str, ...]
    kind: str = "file"
    requires: tuple[str, ...] = ()
    folder_names: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        """Short name for messages, e.g. ``"generic_model.pkl"`` or ``"EMOCA_v2_lr_mse_20/"``."""
        if self.kind == "folder":
            return (self.folder_names[0] if self.folder_names else self.key) + "/"
        return " or ".join(self.filenames)

    @property
    def expected(self) -> str:
        """What :func:`find_asset` looks for, as a phrase: ``"a file named X"``."""
        if self.kind == "folder":
            return "a folder holding " + " and ".join([self.filenames[0], *self.requires])
        return "a file named " + " or ".join(self.filenames)


ASSETS: tuple[AssetSpec, ...] = (
    AssetSpec(
        key="flame2020",
        filenames=("generic_model.pkl",),
        what="FLAME 2020 head model (5,023 vertices; 300 shape + 100 expression components)",
        obtain=_flame_site("FLAME 2020"),
        terms="FLAME licence, non-commercial",
        required_for=("reconstruct", "render", "edit", "train"),
    ),
    AssetSpec(
        key="flame2023",
        filenames=("flame2023.pkl", "flame2023_no_jaw.pkl"),
        what="FLAME 2023 head model (same layout as FLAME 2020; revised jaw and eyes)",
        obtain=_flame_site("FLAME 2023"),
        terms="FLAME licence, non-commercial",
        required_for=("reconstruct", "render", "edit", "train"),
    ),
    AssetSpec(
        key="flame2023_open",
        filenames=("flame2023_Open.pkl",),
        what="FLAME 2023 Open head model (same layout as FLAME 2020)",
        obtain=_flame_site("FLAME 2023 Open"),
        terms="CC BY 4.0",
        required_for=("reconstruct", "render", "edit", "train"),
    ),
    AssetSpec(
        key="landmark_embedding",
        filenames=("landmark_embedding.npy",),
        what="DECA's 68-landmark embedding on FLAME (51 static + 17 dynamic contour + 68 full)",
        obtain=_DECA_DATA,
        terms="DECA licence, non-commercial",
        required_for=("reconstruct", "train"),
    ),
    AssetSpec(
        key="mediapipe_embedding",
        filenames=("mediapipe_landmark_embedding.npz",),
        what="105 MediaPipe face-mesh points embedded on FLAME (EMOCA v2)",
        obtain=_flame_site("Landmark embedding for Mediapipe"),
        terms="FLAME licence, non-commercial",
        required_for=("train",),
    ),
    AssetSpec(
        key="head_template",
        filenames=("head_template.obj",),
        what="FLAME topology with texture coordinates (5,023 v, 5,118 vt, 9,976 f)",
        obtain=_DECA_DATA,
        terms="FLAME licence, non-commercial",
        required_for=("render", "edit", "train"),
    ),
    AssetSpec(
        key="flame_texture",
        filenames=("FLAME_texture.npz",),
        what="FLAME texture space: 'mean' (512,512,3), 'tex_dir' (512,512,3,200), 0..255",
        obtain=_flame_site("FLAME texture space"),
        terms="FLAME licence, non-commercial",
        required_for=("render", "edit", "train"),
    ),
    AssetSpec(
        key="bfm_albedo",
        filenames=("FLAME_albedo_from_BFM.npz",),
        what="Basel Face Model albedo on FLAME's UV layout: 'MU', 'PC' (199 components), 0..1",
        obtain="your own conversion with https://github.com/TimoBolkart/BFM_to_FLAME "
        "from the Basel Face Model (it cannot be redistributed)",
        terms="BFM licence, non-commercial",
        required_for=("render", "edit", "train"),
    ),
    AssetSpec(
        key="uv_face_eye_mask",
        filenames=("uv_face_eye_mask.png",),
        what="DECA's UV mask of the face and eye region (where detail displacements apply)",
        obtain=_DECA_DATA,
        terms="DECA licence, non-commercial",
        required_for=("reconstruct",),
    ),
    AssetSpec(
        key="uv_face_mask",
        filenames=("uv_face_mask.png",),
        what="DECA's UV mask of the face region (detail-stage training)",
        obtain=_DECA_DATA,
        terms="DECA licence, non-commercial",
        required_for=("train",),
    ),
    AssetSpec(
        key="fixed_displacement",
        filenames=("fixed_displacement_256.npy",),
        what="DECA's fixed displacement map (256 x 256) added to every predicted one",
        obtain=_DECA_DATA,
        terms="DECA licence, non-commercial",
        required_for=("reconstruct",),
    ),
    AssetSpec(
        key="deca_model",
        filenames=("deca_model.tar",),
        what="DECA weights (E_flame, E_detail, D_detail)",
        obtain="the DECA README, https://github.com/yfeng95/DECA (Google Drive link)",
        terms="DECA licence, non-commercial",
        required_for=("reconstruct",),
    ),
    AssetSpec(
        key="emoca_model",
        filenames=("cfg.yaml",),
        what="EMOCA model folder, e.g. EMOCA_v2_lr_mse_20/ (cfg.yaml + detail checkpoint)",
        obtain=_EMOCA,
        terms="EMOCA licence, non-commercial",
        required_for=("reconstruct",),
        kind="folder",
        requires=("detail/checkpoints/**/*.ckpt",),
        folder_names=("EMOCA_v2_lr_mse_20", "EMOCA_v2_lr_cos_1.5", "EMOCA_v2_mp", "EMOCA"),
    ),
    AssetSpec(
        key="emotion_recognizer",
        filenames=("cfg.yaml",),
        what="EMOCA emotion recogniser folder, e.g. ResNet50/ (cfg.yaml + checkpoints/*.ckpt)",
        obtain=_EMOCA + ", EmotionRecognition assets",
        terms="EMOCA licence, non-commercial",
        required_for=("evaluate",),
        kind="folder",
        requires=("checkpoints/**/*.ckpt",),
        folder_names=("ResNet50", "SWIN-B", "EMOCA-emorec", "EMOCA_detail-emorec"),
    ),
    AssetSpec(
        key="diffusionrig",
        filenames=("model*.pt",),
        what="DiffusionRig stage-1 weights (denoisingUNet.* + encoder.* state dict)",
        obtain="the DiffusionRig README, https://github.com/adobe-research/diffusion-rig "
        "(Google Drive link)",
        terms="Adobe research licence, non-commercial",
        required_for=("edit",),
    ),
)

_BY_KEY = {spec.key: spec for spec in ASSETS}


def asset_spec(key: str) -> AssetSpec:
    """The registry entry for ``key``; ``KeyError`` listing the known keys otherwise."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown asset {key!r}; known: {', '.join(_BY_KEY)}") from None


def spec_for_file(path: str | os.PathLike[str]) -> AssetSpec | None:
    """The file asset whose accepted names match ``path``'s file name, if any."""
    name = Path(path).name.lower()
    for spec in ASSETS:
        if spec.kind == "file" and any(
            fnmatch.fnmatchcase(name, pattern.lower()) for pattern in spec.filenames
        ):
            return spec
    return None


def obtain_text(path: str | os.PathLike[str], default_key: str | None = None) -> str | None:
    """Where users obtain the file at ``path``: by its name, else the ``default_key`` entry."""
    spec = spec_for_file(path)
    if spec is None and default_key is not None:
        spec = _BY_KEY.get(default_key)
    return spec.obtain if spec is not None else None


def asset_home(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The asset folder: ``explicit`` if given, else ``$EMORIG_HOME``, else None.

    There is no hidden default folder. The path is expanded (``~``) but not checked here.
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    return None


def _walk(home: Path, max_depth: int = MAX_DEPTH) -> list[tuple[int, Path]]:
    """Every file under ``home`` as (depth, path), shallow first, then sorted by name.

    Hidden entries (``.name``) are skipped; unreadable folders are ignored. ``depth`` counts
    folders between ``home`` and the file (0 = directly inside).
    """
    found: list[tuple[int, Path]] = []
    level = [home]
    for depth in range(max_depth + 1):
        next_level: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        next_level.append(Path(entry.path))
                    elif entry.is_file():
                        found.append((depth, Path(entry.path)))
                except OSError:
                    continue
        level = next_level
    return found


def _name_rank(name: str, patterns: tuple[str, ...]) -> int | None:
    low = name.lower()
    for rank, pattern in enumerate(patterns):
        if fnmatch.fnmatchcase(low, pattern.lower()):
            return rank
    return None


def _has_required(folder: Path, requires: tuple[str, ...]) -> bool:
    return all(any(p.is_file() for p in folder.glob(pattern)) for pattern in requires)


def _match(spec: AssetSpec, files: list[tuple[int, Path]]) -> Path | None:
    """Best match for ``spec`` among walked files (deterministic), or None."""
    candidates: list[tuple[tuple[int, int, str], Path]] = []
    for depth, path in files:
        rank = _name_rank(path.name, spec.filenames)
        if rank is None:
            continue
        if spec.kind == "folder":
            folder = path.parent
            if not _has_required(folder, spec.requires):
                continue
            folder_rank = _name_rank(folder.name, spec.folder_names)
            order = len(spec.folder_names) if folder_rank is None else folder_rank
            candidates.append(((order, depth, str(folder)), folder))
        else:
            candidates.append(((rank, depth, str(path)), path))
    if not candidates:
        return None
    return min(candidates, key=lambda c: c[0])[1]


def _missing_message(spec: AssetSpec, home: Path) -> str:
    return f"not found under {home} (expected {spec.expected}; obtain it from {spec.obtain})"


def find_asset(key: str, home: str | os.PathLike[str] | None) -> Path:
    """Locate an asset by its official name anywhere under ``home`` (up to MAX_DEPTH levels).

    Among several matches the earliest accepted name wins, then the shallowest, then the
    alphabetically first path, so the answer does not depend on the file system's order.

    Args:
        key: an :attr:`AssetSpec.key`, e.g. ``"flame2020"``.
        home: the asset folder (see :func:`asset_home`); None means none was given.

    Returns:
        The file (or, for folder assets, the folder).

    Raises:
        AssetError: no home given, home missing, or nothing matching under it.
    """
    spec = asset_spec(key)
    if home is None:
        raise AssetError(spec.display_name, NO_HOME)
    home = Path(home)
    if not home.is_dir():
        raise AssetError(
            str(home), f"asset folder does not exist (looking for {spec.expected})", spec.obtain
        )
    found = _match(spec, _walk(home))
    if found is None:
        raise AssetError(spec.display_name, _missing_message(spec, home))
    return found

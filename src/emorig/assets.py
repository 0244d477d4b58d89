"""Registry of the licensed files users bring, and where to find them on disk.

emorig ships none of these files. Users put them in one folder (any layout, up to
``MAX_DEPTH`` levels deep) and point to it with ``--assets DIR`` or ``$EMORIG_HOME``;
:func:`find_asset` locates a file by its official name, and :func:`check_assets` reports what
is present and whether it looks right, without loading large files.

Nothing here touches the disk at import time, and no folder is searched unless the user named
it.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emorig.errors import AssetError

__all__ = [
    "ASSETS",
    "ENV_VAR",
    "MAX_DEPTH",
    "AssetError",
    "AssetSpec",
    "AssetStatus",
    "asset_home",
    "asset_spec",
    "check_assets",
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
        requires=("detail/checkpoints/*.ckpt",),
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
        requires=("checkpoints/*.ckpt",),
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


# ---------------------------------------------------------------------------------------------
# Cheap validation of present files (no large array is read).


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


def _check_zip_or_tar(path: Path) -> str:
    import tarfile

    if zipfile.is_zipfile(path):
        return "torch checkpoint (zip)"
    if tarfile.is_tarfile(path):
        return "torch checkpoint (legacy tar)"
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        return "torch checkpoint (legacy pickle)"
    raise AssetError(str(path), "is not a torch checkpoint (neither zip, tar nor pickle)")


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
    "deca_model": _check_zip_or_tar,
    "uv_face_eye_mask": _check_uv_mask,
    "uv_face_mask": _check_uv_mask,
    "fixed_displacement": _check_fixed_displacement,
    "diffusionrig": _check_zip_or_tar,
}


def check_assets(home: str | os.PathLike[str] | None) -> list[AssetStatus]:
    """Look for every registered asset under ``home`` and cheaply validate those present.

    Validation reads headers, keys and small files only (e.g. npy headers inside an ``.npz``,
    the key names of a FLAME pickle); the 600 MB texture space is never loaded.

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
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            statuses.append(
                AssetStatus(
                    spec.key,
                    found,
                    False,
                    f"{found}: unreadable ({err}); obtain it again from {spec.obtain}",
                )
            )
            continue
        statuses.append(AssetStatus(spec.key, found, True, f"{found}: {detail}"))
    return statuses

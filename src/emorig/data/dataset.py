"""Prepared training data on disk: sharded safetensors plus ``manifest.json``; the writer, the
merge step and a lazy, memory-mapped reader.

A prepared folder ``DATA`` holds::

    DATA/shard-r000-00000.safetensors   items written by rank 0 (each shard self-describing)
    DATA/shard-r001-00000.safetensors   items written by rank 1 under ``accelerate launch``
    DATA/manifest.json                  written last, by the merge step
    DATA/mean_shape.safetensors         only with the album mean shape: ``shape`` (1, S)

Every shard holds N items (S = image side, e.g. 256; the DECA crop is 224 px):

==================  ============  =======  ==================================================
key                 shape         dtype    meaning
==================  ============  =======  ==================================================
``image``           (N, 3, S, S)  uint8    the aligned photo, RGB
``rendered``        (N, 3, S, S)  float16  albedo x SH shading x alpha (nominal [0, 1])
``normal``          (N, 3, S, S)  float16  world-space normals x alpha, in [-1, 1]
``albedo``          (N, 3, S, S)  float16  albedo x alpha, in [0, 1]
``mask``            (N, 1, S, S)  uint8    alpha, 0 or 1
``code.<field>``    (N, ...)      float32  every :class:`~emorig.types.FaceCode` field
                                           (``code.detail`` only when the model has one)
``shape_fitted``    (N, S_id)     float32  the item's own shape when the buffers (and
                                           ``code.shape``) use the album mean shape
``crop_transform``  (N, 3, 3)     float64  aligned-image pixels -> 224 crop pixels: render
                                           ``code`` through it to land on the image
``align_transform`` (N, 3, 3)     float64  original photo pixels -> aligned pixels
``landmarks``       (N, 68, 2)    float32  iBUG-68 landmarks in aligned pixels
==================  ============  =======  ==================================================

Buffers are stored as float16 by default (``float32`` on request): that halves their size, and
the rounding error (at most 2.4e-4 on [0, 1), 4.9e-4 on [1, 2)) is 16 times smaller than one
step of the 8-bit image they condition. They are read back as float32. Pixel coordinates are
continuous (pixel ``i`` spans ``[i, i + 1)``), see ``docs/conventions.md``.

Shard metadata (safetensors header, strings): ``format``, ``version``, ``settings`` (JSON of
:class:`PreparedSettings`), ``items`` (JSON list, one object per item with at least
``source``), ``skipped`` (JSON list of ``{source, reason}``) and ``shape`` (``"own"`` or
``"mean:<hash>"``: which identity the buffers were rendered with). A shard on disk is always
complete (written atomically), so the shards alone tell which inputs are done; the manifest is
an index over them. A shard damaged afterwards (truncated by a copy, a full disk elsewhere) is
found cheaply by comparing its size with its header (:func:`shard_damage`): reading it raises
one :class:`DamagedShardError` line, and ``emorig prepare`` removes it and redoes its inputs.
Writes that run out of space raise :class:`~emorig.io.atomic.DiskFullError` and keep nothing
partial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from emorig.errors import EmorigError, short_reason
from emorig.geometry.camera import DECA_CROP
from emorig.io.atomic import atomic_write, is_disk_full
from emorig.types import FaceCode, RenderBuffers

FORMAT = "emorig-prepared"
VERSION = 1
MANIFEST_NAME = "manifest.json"
MEAN_SHAPE_NAME = "mean_shape.safetensors"
CROP_SIZE = DECA_CROP
#: DiffusionRig's conditioning buffers, in channel-concatenation order.
CONDITION_NAMES = ("rendered", "normal", "albedo")
#: Every stored buffer and its channel count (``mask`` is stored as uint8).
BUFFER_CHANNELS = {"rendered": 3, "normal": 3, "albedo": 3, "mask": 1}
BUFFER_DTYPES = {"float16": torch.float16, "float32": torch.float32}
CODE_FIELDS = tuple(f.name for f in dataclasses.fields(FaceCode))
SHARD_RE = re.compile(r"^shard-r(\d+)-(\d+)\.safetensors$")
OWN_SHAPE = "own"


@dataclass(frozen=True)
class PreparedSettings:
    """What every shard of one prepared folder must agree on (checked on resume and merge).

    Attributes:
        size: side S of the aligned images and buffers, pixels.
        head: the head the codes belong to, as ``load_head`` names it (``"builtin"``,
            ``"flame2020"``, ...), or a free label for other heads.
        reconstructor: what produced the codes (``"fit"``, ``"deca"``, ``"emoca"``,
            ``"synthetic"``, ...).
        buffer_dtype: ``"float16"`` or ``"float32"``.
        n_albedo: albedo components the codes use (for re-rendering).
        synthetic_head: True for the procedurally generated built-in head.
        crop_size: side of the crop the codes' cameras refer to (DECA: 224).
    """

    size: int
    head: str
    reconstructor: str
    buffer_dtype: str = "float16"
    n_albedo: int = 50
    synthetic_head: bool = False
    crop_size: int = CROP_SIZE

    def __post_init__(self) -> None:
        if self.buffer_dtype not in BUFFER_DTYPES:
            raise EmorigError(
                f"buffer dtype '{self.buffer_dtype}'; choose {' or '.join(BUFFER_DTYPES)}"
            )
        if self.size < 16:
            raise EmorigError(f"size {self.size}: prepared images need at least 16 pixels")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        return (
            f"--size {self.size} --model {self.reconstructor} --head {self.head} "
            f"--buffer-dtype {self.buffer_dtype}"
        )


@dataclass(frozen=True)
class ShardHeader:
    """A shard's header, read without loading its tensors.

    Attributes:
        path: the shard file.
        settings: its :class:`PreparedSettings`.
        items: one dict per stored item (``source`` and what the writer added).
        skipped: ``(source, reason)`` of inputs processed into this shard but not stored.
        shape_tag: ``"own"`` or ``"mean:<hash>"``.
        shapes: tensor name -> shape.
    """

    path: Path
    settings: PreparedSettings
    items: tuple[dict[str, Any], ...]
    skipped: tuple[tuple[str, str], ...]
    shape_tag: str
    shapes: dict[str, tuple[int, ...]]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def sources(self) -> list[str]:
        return [it["source"] for it in self.items]


def shard_paths(root: str | os.PathLike[str]) -> list[Path]:
    """The shards of a prepared folder, sorted by name (hidden temporary files excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if SHARD_RE.match(p.name))


def shard_name(prefix: str, index: int) -> str:
    """``shard-r{rank:03d}-{index:05d}.safetensors`` for ``prefix = "shard-r{rank:03d}"``."""
    return f"{prefix}-{index:05d}.safetensors"


def rank_prefix(rank: int) -> str:
    return f"shard-r{rank:03d}"


class DamagedShardError(EmorigError):
    """A shard on disk is not whole (truncated, overwritten, unreadable): one line naming the
    file and how to re-make it.

    Attributes:
        path: the shard.
        reason: what is wrong, e.g. ``"1200 bytes, its header describes 5000"``.
    """

    def __init__(self, path: Path, reason: str, synthetic: bool | None = None):
        self.path, self.reason = Path(path), reason
        if synthetic:
            fix = "re-run emorig synth --prepared with the same settings and folder"
        elif synthetic is None:
            fix = (
                "re-run emorig prepare on the same folder (emorig synth --prepared for "
                "synthetic data)"
            )
        else:
            fix = "re-run emorig prepare on the same folder"
        super().__init__(
            f"{self.path}: damaged shard ({reason}); {fix} to re-make it (its items are "
            "prepared again, the rest is kept)"
        )


#: A safetensors header larger than this is not one we wrote (guards against garbage).
_MAX_HEADER = 1 << 28


def shard_damage(path: str | os.PathLike[str]) -> str | None:
    """Why the safetensors file at ``path`` is not whole, or None when it is.

    Cheap: reads the 8-byte length and the JSON header only, and compares the file size with
    the end of the last tensor the header describes (a truncated or extended file differs).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, too short for a safetensors header"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _MAX_HEADER):
                return f"{size} bytes, its header alone claims {n}"
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"cannot be read: {short_reason(err)}"
    except ValueError:  # JSON or UTF-8
        return "its header is not valid JSON"
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return "its header does not describe tensors"
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"{size} bytes, its header describes {expected}"
    return None


def damaged_shards(root: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """``(path, reason)`` of every shard of ``root`` that is not whole (see
    :func:`shard_damage`); cheap enough to run on every start."""
    found = []
    for path in shard_paths(root):
        reason = shard_damage(path)
        if reason is not None:
            found.append((path, reason))
    return found


def read_header(path: str | os.PathLike[str]) -> ShardHeader:
    """Read a shard's metadata and tensor shapes (no tensor data).

    Raises:
        DamagedShardError: the file is not whole (see :func:`shard_damage`) or unreadable.
        EmorigError: not a prepared shard, or a newer format.
    """
    from safetensors import safe_open

    path = Path(path)
    reason = shard_damage(path)
    if reason is not None:
        raise DamagedShardError(path, reason)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # SafetensorError is no OSError: anything here is a bad file
        raise DamagedShardError(path, short_reason(err)) from None
    if meta.get("format") != FORMAT:
        raise EmorigError(f"{path}: not an emorig prepared shard (format {meta.get('format')!r})")
    if int(meta.get("version", "0")) > VERSION:
        raise EmorigError(
            f"{path}: format version {meta['version']} is newer than this emorig reads "
            f"({VERSION}); upgrade emorig"
        )
    try:
        settings = PreparedSettings.from_json(json.loads(meta["settings"]))
        items = tuple(json.loads(meta.get("items", "[]")))
        skipped = tuple((s["source"], s["reason"]) for s in json.loads(meta.get("skipped", "[]")))
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedShardError(path, f"damaged metadata, {type(err).__name__}") from None
    return ShardHeader(path, settings, items, skipped, meta.get("shape", OWN_SHAPE), shapes)


def read_headers(root: str | os.PathLike[str], *, skip_damaged: bool = False) -> list[ShardHeader]:
    """The headers of every shard of ``root``, sorted by name.

    Args:
        root: the prepared folder.
        skip_damaged: leave out shards that are not whole instead of raising
            :class:`DamagedShardError` (``emorig prepare`` re-makes them).
    """
    headers = []
    for path in shard_paths(root):
        try:
            headers.append(read_header(path))
        except DamagedShardError:
            if not skip_damaged:
                raise
    return headers


def check_settings(headers: Iterable[ShardHeader], settings: PreparedSettings) -> None:
    """Raise when existing shards were made with other settings than ``settings``."""
    for h in headers:
        if h.settings != settings:
            raise EmorigError(
                f"{h.path.parent} holds data prepared with {h.settings.describe()}; this run "
                f"uses {settings.describe()}: rerun with the same settings or choose another --out"
            )


def write_shard(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write one shard atomically (a half-written shard never appears under ``path``)."""
    from safetensors.torch import save

    path = Path(path)
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, dict(metadata))
    with atomic_write(path, "wb", size=len(data)) as f:
        f.write(data)
    return path


def load_shard(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a shard (in memory) and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def shape_tag(mean_shape: Tensor | None) -> str:
    """``"own"``, or ``"mean:<16 hex digits>"`` identifying a (1, S) mean shape."""
    if mean_shape is None:
        return OWN_SHAPE
    data = mean_shape.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return "mean:" + hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Writing


def _as_uint8_images(images: Tensor, size: int) -> Tensor:
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
        raise EmorigError(f"images must be (B, 3, {size}, {size}), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.detach().cpu()
    if not images.is_floating_point():
        raise EmorigError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    return (images.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def _buffer_dict(buffers: RenderBuffers | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(buffers, RenderBuffers):
        return {n: getattr(buffers, n) for n in BUFFER_CHANNELS}
    out = {n: buffers[n] for n in CONDITION_NAMES if n in buffers}
    missing = [n for n in CONDITION_NAMES if n not in out]
    if missing:
        raise EmorigError(f"buffers lack {', '.join(missing)} (need {', '.join(CONDITION_NAMES)})")
    if "mask" in buffers:
        out["mask"] = buffers["mask"]
    else:  # every covered pixel has a unit normal
        out["mask"] = (out["normal"].abs().sum(1, keepdim=True) > 0).to(out["normal"].dtype)
    return out


def scale_transform(size: int, crop_size: int = CROP_SIZE) -> np.ndarray:
    """(3, 3) map from an S-pixel image to the ``crop_size`` crop covering all of it: codes
    whose camera frames the whole image (e.g. synthetic renders) render through it unchanged."""
    s = crop_size / size
    return np.diag([s, s, 1.0])


class DatasetWriter:
    """Write items into shards of a prepared folder; photos, or tensors directly.

    Items accumulate in memory and are written ``shard_size`` at a time, each shard
    atomically. Used by ``emorig prepare`` (one writer per rank, manifest written by the merge
    step) and for synthetic data from the built-in head::

        settings = PreparedSettings(size=256, head="builtin", reconstructor="synthetic")
        with DatasetWriter("data", settings) as writer:
            writer.add(images, code, buffers)  # (B, 3, 256, 256) in [0, 1], FaceCode, buffers

    Args:
        root: the prepared folder (created); shards already there must share ``settings``.
        settings: see :class:`PreparedSettings`.
        shard_size: items per shard.
        rank: names this writer's shards ``shard-r{rank:03d}-*``; two writers with the same
            rank must not run at once in one folder.
        manifest: write ``manifest.json`` (merging every shard of the folder) on
            :meth:`close`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        settings: PreparedSettings,
        *,
        shard_size: int = 64,
        rank: int = 0,
        manifest: bool = True,
    ):
        if shard_size < 1:
            raise EmorigError(f"shard size {shard_size}: must be at least 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings, self.shard_size, self.owns_manifest = settings, shard_size, manifest
        self.prefix = rank_prefix(rank)
        check_settings(read_headers(self.root), settings)
        self._remove_stale_temporaries()
        used = [
            int(m.group(2))
            for p in shard_paths(self.root)
            if (m := SHARD_RE.match(p.name)) and int(m.group(1)) == rank
        ]
        self._next = max(used, default=-1) + 1
        self._items: list[dict[str, Tensor]] = []
        self._info: list[dict[str, Any]] = []
        self._skipped: list[tuple[str, str]] = []
        self._sources: set[str] = set()
        self.written: list[Path] = []
        self._dtype = BUFFER_DTYPES[settings.buffer_dtype]

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of this rank left by a killed run (``.shard-rNNN-*.tmp``)."""
        for p in self.root.glob(f".{self.prefix}-*.tmp"):
            p.unlink(missing_ok=True)

    @property
    def pending(self) -> int:
        """Items and skipped inputs not yet written."""
        return len(self._items) + len(self._skipped)

    def add(
        self,
        images: Tensor,
        code: FaceCode,
        buffers: RenderBuffers | Mapping[str, Tensor],
        *,
        sources: Sequence[str] | None = None,
        crop_transforms: Tensor | np.ndarray | None = None,
        align_transforms: Tensor | np.ndarray | None = None,
        landmarks: Tensor | np.ndarray | None = None,
        shape_fitted: Tensor | None = None,
        info: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Queue B items; shards are written as they fill.

        Args:
            images: (B, 3, S, S) float in [0, 1] or uint8.
            code: the codes the buffers were rendered from (batch B, any device).
            buffers: :class:`RenderBuffers` or a mapping with ``rendered``, ``normal``,
                ``albedo`` (B, 3, S, S) and optionally ``mask`` (B, 1, S, S), zero on the
                background.
            sources: B unique names (default: ``<shard name>#<index>``).
            crop_transforms: (B, 3, 3) image pixels -> crop pixels of ``settings.crop_size``;
                default :func:`scale_transform` (the camera frames the whole image).
            align_transforms: (B, 3, 3) original photo pixels -> image pixels (default
                identity).
            landmarks: (B, 68, 2) in image pixels (default NaN: unknown).
            shape_fitted: (B, S_id) own shapes when ``code.shape`` is a mean shape.
            info: B JSON-able dicts stored with each item in the shard metadata.
        """
        s = self.settings.size
        img = _as_uint8_images(images, s)
        b = img.shape[0]
        if code.batch_size != b:
            raise EmorigError(f"{b} images but a code batch of {code.batch_size}")
        bufs = _buffer_dict(buffers)
        for name, t in bufs.items():
            want = (b, BUFFER_CHANNELS[name], s, s)
            if tuple(t.shape) != want:
                raise EmorigError(f"buffer '{name}' must be {want}, got {tuple(t.shape)}")
        if sources is not None:
            if len(sources) != b:
                raise EmorigError(f"{len(sources)} sources for {b} items")
            dup = [x for x in sources if x in self._sources]
            if dup or len(set(sources)) != b:
                raise EmorigError(f"source '{(dup or list(sources))[0]}' given twice")
            self._sources.update(sources)

        def matrices(value, default: np.ndarray) -> Tensor:
            if value is None:
                return torch.as_tensor(default, dtype=torch.float64).expand(b, 3, 3).clone()
            t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
            if tuple(t.shape) != (b, 3, 3):
                raise EmorigError(f"transforms must be ({b}, 3, 3), got {tuple(t.shape)}")
            return t

        crop = matrices(crop_transforms, scale_transform(s, self.settings.crop_size))
        align = matrices(align_transforms, np.eye(3))
        if landmarks is None:
            lms = torch.full((b, 68, 2), float("nan"))
        else:
            lms = torch.as_tensor(landmarks, dtype=torch.float32).detach().cpu()
        code_cpu = code.detach().to("cpu", torch.float32)
        for i in range(b):
            item = {"image": img[i]}
            for name, t in bufs.items():
                dtype = torch.uint8 if name == "mask" else self._dtype
                value = t[i].detach().float().cpu()
                item[name] = (value > 0.5).to(dtype) if name == "mask" else value.to(dtype)
            for name in CODE_FIELDS:
                value = getattr(code_cpu, name)
                if value is not None:
                    item[f"code.{name}"] = value[i]
            if shape_fitted is not None:
                item["shape_fitted"] = shape_fitted[i].detach().to("cpu", torch.float32)
            item["crop_transform"] = crop[i]
            item["align_transform"] = align[i]
            item["landmarks"] = lms[i]
            self._items.append(item)
            extra = dict(info[i]) if info is not None else {}
            extra["source"] = sources[i] if sources is not None else None
            self._info.append(extra)
            if len(self._items) >= self.shard_size:
                self.flush()

    def skip(self, source: str, reason: str) -> None:
        """Record an input that gave no item (stored with the next shard)."""
        self._skipped.append((source, reason))

    def flush(self) -> Path | None:
        """Write the queued items (and skipped inputs) as one shard; None when nothing queued."""
        if not self._items and not self._skipped:
            return None
        name = shard_name(self.prefix, self._next)
        info = []
        for i, extra in enumerate(self._info):
            extra = dict(extra)
            if extra["source"] is None:
                extra["source"] = f"{name}#{i}"
            info.append(extra)
        tensors: dict[str, Tensor] = {}
        if self._items:
            keys = list(self._items[0])
            if any(list(it) != keys for it in self._items):
                raise EmorigError("items of one shard must carry the same fields")
            tensors = {k: torch.stack([it[k] for it in self._items]) for k in keys}
            tag = OWN_SHAPE if "shape_fitted" not in tensors else None
        else:
            tag = OWN_SHAPE
        metadata = {
            "format": FORMAT,
            "version": str(VERSION),
            "settings": json.dumps(self.settings.to_json()),
            "items": json.dumps(info),
            "skipped": json.dumps([{"source": s, "reason": r} for s, r in self._skipped]),
            "shape": tag if tag is not None else shape_tag(tensors["code.shape"][:1]),
        }
        path = write_shard(self.root / name, tensors, metadata)
        self._next += 1
        self._items, self._info, self._skipped = [], [], []
        self.written.append(path)
        return path

    def close(self, mean_shape: Tensor | None = None) -> Manifest | None:
        """Flush; then write the manifest when this writer owns it."""
        self.flush()
        if self.owns_manifest:
            return write_manifest(self.root, mean_shape=mean_shape)
        return None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif exc is not None and is_disk_full(exc):
            pass  # writing the queued items would fail the same way; a rerun redoes them
        else:  # keep what is complete; the manifest waits for a successful run
            self.flush()


# ---------------------------------------------------------------------------------------------
# Merging


@dataclass(frozen=True)
class ItemRef:
    """Where one item lives, and what its writer noted about it (``info``: e.g. faces
    detected, photo size, landmark error)."""

    source: str
    shard: str
    index: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Manifest:
    """The index of a prepared folder (``manifest.json``).

    Attributes:
        root: the folder.
        settings: shared by every shard.
        items: the items, in shard order.
        skipped: ``(source, reason)`` of inputs that gave no item.
        shards: ``(name, item count)`` of every shard.
        code_fields: code field -> per-item shape.
        mean_shape: the (1, S) album mean shape the buffers use, or None.
        source_root: the folder the sources are relative to, when known.
    """

    root: Path
    settings: PreparedSettings
    items: tuple[ItemRef, ...]
    skipped: tuple[tuple[str, str], ...]
    shards: tuple[tuple[str, int], ...]
    code_fields: dict[str, tuple[int, ...]]
    mean_shape: Tensor | None = None
    source_root: str | None = None

    @property
    def count(self) -> int:
        return len(self.items)

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "format": FORMAT,
            "version": VERSION,
            "size": s.size,
            "crop_size": s.crop_size,
            "head": s.head,
            "synthetic_head": s.synthetic_head,
            "reconstructor": s.reconstructor,
            "n_albedo": s.n_albedo,
            "buffer_dtype": s.buffer_dtype,
            "buffers": dict(BUFFER_CHANNELS),
            "condition": list(CONDITION_NAMES),
            "condition_channels": sum(BUFFER_CHANNELS[n] for n in CONDITION_NAMES),
            "ranges": {
                "image": "uint8 RGB; the reader returns float in [-1, 1]",
                "rendered": "albedo x SH shading x alpha, nominal [0, 1] (may exceed 1)",
                "normal": "world normals x alpha, [-1, 1] (FLAME axes: x subject's left, y up)",
                "albedo": "albedo x alpha, [0, 1]",
                "mask": "uint8 {0, 1}",
            },
            "code_fields": {k: list(v) for k, v in self.code_fields.items()},
            "transforms": "crop_transform: image px -> crop px (crop_size); align_transform: "
            "original px -> image px; continuous pixels (pixel i spans [i, i + 1))",
            "mean_shape": None
            if self.mean_shape is None
            else {"file": MEAN_SHAPE_NAME, "shape": list(self.mean_shape.shape)},
            "count": self.count,
            "source_root": self.source_root,
            "shards": [{"name": n, "count": c} for n, c in self.shards],
            "items": [
                {"source": r.source, "shard": r.shard, "index": r.index, **r.info}
                for r in self.items
            ],
            "skipped": [{"source": s_, "reason": r} for s_, r in self.skipped],
        }


def merge_headers(headers: Sequence[ShardHeader]) -> tuple[list[ItemRef], list[tuple[str, str]]]:
    """Items (first occurrence of each source wins) and the inputs skipped everywhere."""
    items, seen = [], set()
    for h in headers:
        for i, it in enumerate(h.items):
            if it["source"] not in seen:
                seen.add(it["source"])
                info = {k: v for k, v in it.items() if k not in ("source", "shard", "index")}
                items.append(ItemRef(it["source"], h.name, i, info))
    skipped, seen_skip = [], set()
    for h in headers:
        for source, reason in h.skipped:
            if source not in seen and source not in seen_skip:
                seen_skip.add(source)
                skipped.append((source, reason))
    return items, skipped


def write_manifest(
    root: str | os.PathLike[str],
    *,
    mean_shape: Tensor | None = None,
    expected: Iterable[str] | None = None,
    source_root: str | os.PathLike[str] | None = None,
) -> Manifest:
    """Index every shard of ``root`` into ``manifest.json`` (the merge step; atomic).

    Args:
        root: the prepared folder.
        mean_shape: (1, S) the album mean shape the shards were re-rendered with; written to
            ``mean_shape.safetensors``. None: the shards must use their own shapes.
        expected: every source that should be present (stored or skipped); raises when some
            are missing.
        source_root: recorded as the folder the sources are relative to (default: kept
            from an existing manifest).

    Raises:
        EmorigError: no shards, mixed settings, shards rendered with another identity than
            ``mean_shape``, or missing sources.
    """
    root = Path(root)
    headers = read_headers(root)
    if not headers:
        raise EmorigError(f"{root}: no shards to merge (run emorig prepare first)")
    check_settings(headers, headers[0].settings)
    tag = shape_tag(mean_shape)
    items, skipped = merge_headers(headers)
    wrong = [h.name for h in headers if h.count and h.shape_tag != tag]
    if wrong:
        what = "the album mean shape" if mean_shape is not None else "their own shapes"
        raise EmorigError(
            f"{root}: shard {wrong[0]} was not rendered with {what} (re-render with "
            "emorig prepare --merge, giving --mean-shape when wanted)"
        )
    if expected is not None:
        have = {r.source for r in items} | {s for s, _ in skipped}
        missing = [s for s in expected if s not in have]
        if missing:
            raise EmorigError(
                f"{root}: {len(missing)} inputs not prepared yet (first: {missing[0]}); "
                "rerun emorig prepare to finish"
            )
    fields: dict[str, tuple[int, ...]] = {}
    for h in headers:
        if h.count:
            fields = {
                k[len("code.") :]: v[1:] for k, v in h.shapes.items() if k.startswith("code.")
            }
            break
    if source_root is None and (root / MANIFEST_NAME).exists():
        try:
            source_root = json.loads((root / MANIFEST_NAME).read_text("utf-8")).get("source_root")
        except ValueError:
            source_root = None
    manifest = Manifest(
        root,
        headers[0].settings,
        tuple(items),
        tuple(skipped),
        tuple((h.name, h.count) for h in headers),
        fields,
        None if mean_shape is None else mean_shape.detach().to("cpu", torch.float32),
        None if source_root is None else str(source_root),
    )
    mean_path = root / MEAN_SHAPE_NAME
    if mean_shape is not None:
        write_shard(
            mean_path,
            {"shape": manifest.mean_shape},
            {
                "format": "emorig-mean-shape",
                "images": str(len(items)),
                "head": manifest.settings.head,
            },
        )
    elif mean_path.exists():
        mean_path.unlink()
    with atomic_write(root / MANIFEST_NAME, "w") as f:
        json.dump(manifest.to_json(), f, indent=1)
        f.write("\n")
    return manifest


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Read ``manifest.json`` (and the mean shape) of a prepared folder."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.exists():
        hint = (
            "the preparation is unfinished: rerun emorig prepare, or merge the shards with "
            f"emorig prepare --merge {root}"
            if shard_paths(root)
            else "not a prepared folder (make one with emorig prepare)"
        )
        raise EmorigError(f"{root}: no {MANIFEST_NAME}; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        if int(data["version"]) > VERSION:
            raise EmorigError(
                f"{path}: format version {data['version']} is newer than this emorig reads"
            )
        names = {f.name for f in dataclasses.fields(PreparedSettings)}
        settings = PreparedSettings.from_json({k: v for k, v in data.items() if k in names})
        items = tuple(
            ItemRef(
                it["source"],
                it["shard"],
                int(it["index"]),
                {k: v for k, v in it.items() if k not in ("source", "shard", "index")},
            )
            for it in data["items"]
        )
        skipped = tuple((s["source"], s["reason"]) for s in data["skipped"])
        shards = tuple((s["name"], int(s["count"])) for s in data["shards"])
        fields = {k: tuple(v) for k, v in data["code_fields"].items()}
    except EmorigError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise EmorigError(f"{path}: damaged manifest ({type(err).__name__}: {err})") from None
    mean = None
    if data.get("mean_shape"):
        from safetensors.torch import load_file

        mean = load_file(str(root / data["mean_shape"]["file"]))["shape"]
    return Manifest(root, settings, items, skipped, shards, fields, mean, data.get("source_root"))


# ---------------------------------------------------------------------------------------------
# Reading


def code_from_batch(code: Mapping[str, Tensor]) -> FaceCode:
    """A :class:`FaceCode` from the ``"code"`` dict of a (collated) dataset item."""
    return FaceCode(**{k: code[k] for k in CODE_FIELDS if k in code})


class BufferDataset(Dataset):
    """A prepared folder as a torch Dataset, read lazily from memory-mapped shards.

    Each item is a dict:

    * ``image``: (3, S, S) float32 in [0, 1] (the diffusion pipeline maps it to model space);
    * ``condition``: (C, S, S) float32, the buffers of ``condition`` concatenated
      (default rendered, normal, albedo: C = 9), not normalised, zero on the background;
    * ``mask``: (1, S, S) float32 in {0, 1};
    * ``code``: field -> tensor without the batch axis (:func:`code_from_batch` rebuilds a
      :class:`FaceCode` from a collated batch), when ``codes``;
    * ``crop_transform``: (3, 3) float64, image pixels -> crop pixels (render the code
      through it to land on the image);
    * ``index`` and ``source``.

    Safe with ``DataLoader(num_workers > 0)``: shards are opened in each worker on first use.

    Args:
        root: a prepared folder with ``manifest.json``.
        condition: buffer names to concatenate, default :data:`CONDITION_NAMES`.
        codes: also return the codes.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        condition: Sequence[str] = CONDITION_NAMES,
        codes: bool = True,
    ):
        self.manifest = read_manifest(root)
        self.root = self.manifest.root
        unknown = [n for n in condition if n not in BUFFER_CHANNELS]
        if unknown:
            raise EmorigError(
                f"unknown buffer '{unknown[0]}'; choose from {', '.join(BUFFER_CHANNELS)}"
            )
        self.condition = tuple(condition)
        self.codes = codes
        self._handles: dict[str, Any] = {}
        for name, _ in self.manifest.shards:  # cheap: headers and file sizes only
            reason = shard_damage(self.root / name)
            if reason is not None:
                raise self._damaged(name, reason)

    def _damaged(self, shard: str, reason: str) -> DamagedShardError:
        synthetic = self.manifest.settings.reconstructor == "synthetic"
        return DamagedShardError(self.root / shard, reason, synthetic)

    @property
    def size(self) -> int:
        return self.manifest.settings.size

    @property
    def condition_channels(self) -> int:
        return sum(BUFFER_CHANNELS[n] for n in self.condition)

    @property
    def mean_shape(self) -> Tensor | None:
        """(1, S) the album mean shape the buffers were rendered with, or None."""
        return self.manifest.mean_shape

    def __len__(self) -> int:
        return self.manifest.count

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _open(self, shard: str):
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            path = self.root / shard
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as err:  # SafetensorError is no OSError
                raise self._damaged(shard, shard_damage(path) or short_reason(err)) from None
            self._handles[shard] = handle
        return handle

    def _get(self, ref: ItemRef, key: str) -> Tensor:
        return self._open(ref.shard).get_slice(key)[ref.index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        ref = self.manifest.items[index]
        image = self._get(ref, "image").float() / 255.0
        cond = torch.cat([self._get(ref, n).float() for n in self.condition], 0)
        out: dict[str, Any] = {
            "image": image,
            "condition": cond,
            "mask": self._get(ref, "mask").float(),
            "crop_transform": self._get(ref, "crop_transform"),
            "index": index % len(self),
            "source": ref.source,
        }
        if self.codes:
            out["code"] = {k: self._get(ref, f"code.{k}") for k in self.manifest.code_fields}
        return out

    def code(self, indices: int | Sequence[int]) -> FaceCode:
        """The codes of some items as one :class:`FaceCode` batch (float32, CPU)."""
        idx = [indices] if isinstance(indices, int) else list(indices)
        fields = {
            k: torch.stack([self._get(self.manifest.items[i], f"code.{k}") for i in idx])
            for k in self.manifest.code_fields
        }
        return code_from_batch(fields)

    def item(self, index: int, key: str) -> Tensor:
        """Any stored tensor of one item (e.g. ``"landmarks"``, ``"align_transform"``)."""
        return self._get(self.manifest.items[index], key)


__all__ = [
    "BUFFER_CHANNELS",
    "CODE_FIELDS",
    "CONDITION_NAMES",
    "MANIFEST_NAME",
    "MEAN_SHAPE_NAME",
    "BufferDataset",
    "DamagedShardError",
    "DatasetWriter",
    "ItemRef",
    "Manifest",
    "PreparedSettings",
    "ShardHeader",
    "code_from_batch",
    "damaged_shards",
    "load_shard",
    "read_header",
    "read_headers",
    "read_manifest",
    "scale_transform",
    "shape_tag",
    "shard_damage",
    "shard_paths",
    "write_manifest",
    "write_shard",
]

"""Photos -> DiffusionRig training data: FFHQ-aligned images, FLAME codes and the three
condition buffers rendered onto each image, in shards (:mod:`emorig.data.dataset`).

For every photo (DiffusionRig's ``scripts/align.py`` + ``scripts/create_data.py``):

1. detect the largest face and FFHQ-align it to ``size`` (default 256);
2. crop the aligned image as DECA does (landmark box x 1.1 x 1.25 -> 224) and reconstruct the
   code there (:class:`~emorig.reconstruct.pipeline.Reconstructor`: DECA, EMOCA or fitting);
3. render ``rendered``, ``normal`` and ``albedo`` at the full aligned size through the crop
   transform (DECA's ``render_orig``), background 0; keep the code and the transform so the
   face can be re-rendered with edited codes.

Runs are resumable: shards are written atomically and list the inputs they cover, so a rerun
skips everything already in a shard. A shard found damaged on start (its size does not match
its header: truncated by a full disk or a copy) is removed, and the photos it held are
prepared again. Running out of disk space stops the run with one line (the shard being
written is not kept); a rerun continues. Under ``accelerate launch`` each process takes
``files[rank::world]`` of the sorted list and writes ``shard-r{rank}-*``; after a barrier the
album mean shape (``mean_shape``) is applied and rank 0 writes the manifest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emorig.data.dataset import (
    CODE_FIELDS,
    MANIFEST_NAME,
    DatasetWriter,
    Manifest,
    PreparedSettings,
    check_settings,
    damaged_shards,
    load_shard,
    merge_headers,
    rank_prefix,
    read_headers,
    shape_tag,
    write_manifest,
    write_shard,
)
from emorig.errors import EmorigError, short_reason
from emorig.faces.align import deca_transform, transform_points, warp
from emorig.faces.pipeline import AlignedFace, FaceAligner
from emorig.io.atomic import atomic_write
from emorig.io.images import ImageReadError, read_image
from emorig.reconstruct.pipeline import CROP, Reconstruction, Reconstructor
from emorig.render.conditions import render_conditions
from emorig.render.face import FaceRenderer
from emorig.types import FaceCode

Progress = Callable[[Iterable[Any]], Iterable[Any]]


@dataclass(frozen=True)
class PrepareConfig:
    """How ``emorig prepare`` runs.

    Attributes:
        size: side of the FFHQ-aligned images and buffers (DiffusionRig: 256).
        shard_size: items per shard (256 px, float16: about 1.4 MB per item).
        batch_size: faces reconstructed and rendered together.
        buffer_dtype: ``"float16"`` (half the size, error below 5e-4) or ``"float32"``.
        mean_shape: render every item with the album mean shape (DiffusionRig stage 2).
        album: fit one identity jointly to every item's landmarks
            (:func:`~emorig.reconstruct.fitting_album.fit_album`, weight-free fitting only)
            and render every item with it; implies ``mean_shape``.
        flush_seconds: also write a (smaller) shard when this long has passed since the last
            one, bounding the work an interruption can lose.
    """

    size: int = 256
    shard_size: int = 64
    batch_size: int = 8
    buffer_dtype: str = "float16"
    mean_shape: bool = False
    album: bool = False
    flush_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise EmorigError("--batch-size and --shard-size must be at least 1")


@dataclass(frozen=True)
class WorkerReport:
    """What one process did.

    Attributes:
        rank, world: this process and the process count.
        assigned: inputs of this rank's slice.
        already_done: of those, inputs found in existing shards (not redone).
        prepared: items written by this run.
        skipped: ``(source, reason)`` of inputs this run could not use.
        shards: shard files written by this run.
        seconds: wall time.
    """

    rank: int
    world: int
    assigned: int
    already_done: int
    prepared: int
    skipped: tuple[tuple[str, str], ...]
    shards: tuple[Path, ...]
    seconds: float


@dataclass(frozen=True)
class PrepareResult:
    """The outcome of :func:`prepare`: the merged manifest (rank 0 only) and this rank's
    report."""

    manifest: Manifest | None
    report: WorkerReport
    rendered_again: int = 0


@dataclass(frozen=True)
class _Pending:
    source: str
    face: AlignedFace  # the FFHQ-aligned face (image quantised to uint8 values)
    crop: AlignedFace  # its DECA crop
    info: dict[str, Any] = field(default_factory=dict)


def settings_for(
    reconstructor: Reconstructor,
    config: PrepareConfig,
    head_name: str | None = None,
    label: str | None = None,
) -> PreparedSettings:
    """The :class:`PreparedSettings` of a run (``head_name`` as ``load_head`` names it)."""
    head = reconstructor.head
    return PreparedSettings(
        size=config.size,
        head=head_name or ("builtin" if head.synthetic else head.flame.name),
        reconstructor=label or reconstructor.method,
        buffer_dtype=config.buffer_dtype,
        n_albedo=reconstructor.renderer.n_albedo,
        synthetic_head=bool(head.synthetic),
    )


def source_name(path: Path, root: Path) -> str:
    """The name an input is stored under: its path relative to ``root`` (POSIX), or the file
    name when ``root`` is the file itself."""
    if root.is_file() or path == root:
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def deca_crop(face: AlignedFace) -> AlignedFace:
    """DECA's 224 crop of an aligned face, from its landmarks (no second detection).

    ``face.image`` must be the (3, S, S) image the crop is taken from; the returned face's
    ``matrix`` maps that image's pixels to the crop's.
    """
    m = deca_transform(face.landmarks, CROP)
    pixels = (face.image.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    crop = warp(pixels, m, CROP, "zeros", face.image.device)
    return AlignedFace(
        crop,
        transform_points(m, face.landmarks),
        face.landmarks,
        m,
        face.detection,
        (face.size, face.size),
        "deca",
    )


def _quantised(face: AlignedFace) -> AlignedFace:
    """The aligned image exactly as stored (uint8), so the crop sees what training sees."""
    image = (face.image.clamp(0, 1) * 255 + 0.5).floor() / 255
    return replace(face, image=image)


def _reconstruct(reconstructor: Reconstructor, crops: list[AlignedFace]) -> list[Any]:
    """Codes of a batch; when the batch fails, each face alone (a failure names its reason)."""
    try:
        return reconstructor.reconstruct_crops(crops)
    except (EmorigError, RuntimeError, ValueError) as err:
        if len(crops) == 1:
            return [err]
    out: list[Any] = []
    for c in crops:
        try:
            out.extend(reconstructor.reconstruct_crops([c]))
        except (EmorigError, RuntimeError, ValueError) as err:
            out.append(err)
    return out


def _ffhq_aligner(
    aligner: FaceAligner | None, reconstructor: Reconstructor, config: PrepareConfig
) -> FaceAligner:
    """``aligner``, or one on the reconstructor's face backend; checked to be FFHQ's."""
    if aligner is None:
        aligner = FaceAligner(
            backend=reconstructor.aligner.backend,
            size=config.size,
            mode="ffhq",
            device=reconstructor.device,
        )
    if aligner.mode != "ffhq" or aligner.size != config.size:
        raise EmorigError(f"prepare needs an FFHQ aligner of size {config.size}")
    return aligner


def _stacked_code(results: Sequence[Reconstruction]) -> FaceCode:
    """One batched :class:`FaceCode` of several reconstructions."""
    return FaceCode(
        **{
            name: None
            if getattr(results[0].code, name) is None
            else torch.cat([getattr(r.code, name) for r in results])
            for name in CODE_FIELDS
        }
    )


class _ShardFiller:
    """Collects aligned faces into batches, reconstructs and renders them, and writes the
    items (and the inputs it had to skip) to this rank's shards."""

    def __init__(
        self,
        writer: DatasetWriter,
        reconstructor: Reconstructor,
        config: PrepareConfig,
        say: Callable[[str], None] | None,
    ):
        self.writer, self.reconstructor, self.config, self.say = writer, reconstructor, config, say
        self.skipped: list[tuple[str, str]] = []
        self.prepared = 0
        self.batch: list[_Pending] = []
        self.n_written, self.last_flush = 0, time.monotonic()

    def skip(self, source: str, reason: str) -> None:
        self.writer.skip(source, reason)
        self.skipped.append((source, reason))
        if self.say is not None:
            self.say(f"skipped: {source}: {reason}")

    def add(self, pending: _Pending) -> None:
        """Queue a face; a full batch is reconstructed and written."""
        self.batch.append(pending)
        if len(self.batch) >= self.config.batch_size:
            self.run_batch()
            self.batch = []

    def run_batch(self) -> None:
        """Reconstruct and render the queued faces and add them to the writer."""
        batch, writer = self.batch, self.writer
        results = _reconstruct(self.reconstructor, [p.crop for p in batch])
        good = [
            (p, r) for p, r in zip(batch, results, strict=True) if isinstance(r, Reconstruction)
        ]
        for p, r in zip(batch, results, strict=True):
            if not isinstance(r, Reconstruction):
                self.skip(p.source, f"reconstruction failed ({short_reason(r)})")
        if not good:
            return
        code = _stacked_code([r for _, r in good])
        crops = torch.as_tensor(np.stack([p.crop.matrix for p, _ in good]), dtype=torch.float64)
        buffers = render_conditions(self.reconstructor.renderer, code, crops, self.config.size)
        writer.add(
            torch.stack([p.face.image for p, _ in good]),
            code,
            buffers,
            sources=[p.source for p, _ in good],
            crop_transforms=crops,
            align_transforms=np.stack([p.face.matrix for p, _ in good]),
            landmarks=np.stack([p.face.landmarks for p, _ in good]),
            info=[{**p.info, "landmark_error_px": round(r.landmark_error, 3)} for p, r in good],
        )
        self.prepared += len(good)

    def flush_when_due(self) -> None:
        """Write the pending items when ``flush_seconds`` passed since the last shard."""
        writer = self.writer
        if len(writer.written) != self.n_written:  # a full shard was just written
            self.n_written, self.last_flush = len(writer.written), time.monotonic()
        elif writer.pending and time.monotonic() - self.last_flush > self.config.flush_seconds:
            writer.flush()
            self.n_written, self.last_flush = len(writer.written), time.monotonic()

    def finish(self) -> None:
        """Reconstruct the last (partial) batch and write every pending item."""
        if self.batch:
            self.run_batch()
        self.writer.flush()


def _aligned_face(path: Path, source: str, aligner: FaceAligner) -> _Pending | str:
    """The input's largest face, FFHQ-aligned and DECA-cropped, or why it cannot be used."""
    try:
        loaded = read_image(path)
        faces, n = aligner.align(loaded.pixels)
    except ImageReadError as err:
        return f"unreadable: {err.reason}"
    except (EmorigError, OSError, RuntimeError, ValueError) as err:
        return f"alignment failed: {short_reason(err)}"
    if not faces:
        return "no face found"
    face = _quantised(faces[0])
    info = {"faces_detected": n, "image_size": list(loaded.size)}
    return _Pending(source, face, deca_crop(face), info)


def remove_damaged_shards(
    out: Path, say: Callable[[str], None] | None = None, *, rank: int | None = None
) -> list[Path]:
    """Delete the shards of ``out`` that are not whole, so that their inputs are redone.

    Args:
        out: the prepared folder.
        say: told one line per removed shard.
        rank: only this rank's shards (``shard-r{rank}-*``); None: every shard.

    Returns:
        The removed shards.
    """
    prefix = f"{rank_prefix(rank)}-" if rank is not None else "shard-"
    removed = []
    for path, reason in damaged_shards(out):
        if not path.name.startswith(prefix):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        if say is not None:
            say(f"{path}: damaged shard ({reason}); removed, its inputs are prepared again")
    return removed


def _remaining(
    files: Sequence[Path], root: Path, out: Path, settings: PreparedSettings, rank: int, world: int
) -> tuple[list[Path], list[Path]]:
    """This rank's inputs and those of them not yet in a shard (stored or skipped)."""
    headers = read_headers(out)
    check_settings(headers, settings)
    done = {s for h in headers for s in h.sources} | {s for h in headers for s, _ in h.skipped}
    mine = list(files)[rank::world]
    todo = [p for p in mine if source_name(p, root) not in done]
    return mine, todo


def prepare_worker(
    files: Sequence[Path],
    root: Path,
    out: Path,
    reconstructor: Reconstructor,
    config: PrepareConfig = PrepareConfig(),
    *,
    rank: int = 0,
    world: int = 1,
    settings: PreparedSettings | None = None,
    aligner: FaceAligner | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> WorkerReport:
    """Prepare this rank's slice ``files[rank::world]`` into shards ``shard-r{rank}-*``.

    Inputs found in any existing shard (stored or skipped) are not redone; this rank's damaged
    shards are removed first (:func:`remove_damaged_shards`). Writes no manifest.

    Args:
        files: every input, sorted (all ranks must see the same list).
        root: the folder ``files`` came from (names items relative to it).
        out: the prepared folder.
        reconstructor: codes from DECA crops; its renderer renders the buffers.
        config: sizes and batching.
        rank, world: this process and the process count.
        settings: stored with the shards (default :func:`settings_for`).
        aligner: the FFHQ aligner (default: the reconstructor's face backend, ``config.size``).
        progress: wraps the iterable of this rank's remaining inputs (e.g. a tqdm bar).
        say: called with one line per skipped input.
    """
    start = time.perf_counter()
    if not 0 <= rank < world:
        raise EmorigError(f"rank {rank} outside 0..{world - 1}")
    settings = settings or settings_for(reconstructor, config)
    if settings.size != config.size:
        raise EmorigError(f"settings size {settings.size} differs from the config's {config.size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_damaged_shards(out, say, rank=rank)
    mine, todo = _remaining(files, root, out, settings, rank, world)
    aligner = _ffhq_aligner(aligner, reconstructor, config)
    writer = DatasetWriter(out, settings, shard_size=config.shard_size, rank=rank, manifest=False)
    filler = _ShardFiller(writer, reconstructor, config, say)
    iterator = progress(todo) if progress is not None else todo
    for path in iterator:
        source = source_name(path, root)
        pending = _aligned_face(path, source, aligner)
        if isinstance(pending, str):
            filler.skip(source, pending)
            continue
        filler.add(pending)
        filler.flush_when_due()
    filler.finish()
    return WorkerReport(
        rank,
        world,
        len(mine),
        len(mine) - len(todo),
        filler.prepared,
        tuple(filler.skipped),
        tuple(writer.written),
        time.perf_counter() - start,
    )


#: Where ``emorig prepare --album`` keeps the jointly fitted identity (see :func:`album_shape`).
ALBUM_SHAPE = "album_shape.safetensors"


def _stored(out: Path, keys: Sequence[str]) -> dict[str, Tensor]:
    """The given tensors of every stored item, concatenated in manifest order."""
    from safetensors import safe_open

    items, _ = merge_headers(read_headers(out))
    wanted: dict[str, list[int]] = {}
    for ref in items:
        wanted.setdefault(ref.shard, []).append(ref.index)
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for shard, indices in wanted.items():
        with safe_open(str(out / shard), framework="pt") as f:
            for k in keys:
                parts[k].append(f.get_tensor(k)[indices])
    if not wanted:
        raise EmorigError(f"{out}: no items to fit the album identity to")
    return {k: torch.cat(v) for k, v in parts.items()}


def album_shape(out: Path, renderer: FaceRenderer) -> Tensor:
    """(1, S) one identity fitted jointly to the landmarks of every stored item
    (:func:`~emorig.reconstruct.fitting_album.fit_album`, landmarks only: stage 2 renders the
    shape, each item keeps its own albedo), saved as ``ALBUM_SHAPE`` in ``out`` so that
    :func:`album_mean_shape` (and a later ``--merge``) uses it."""
    from safetensors.torch import save

    from emorig.geometry.camera import pixels_to_ndc
    from emorig.reconstruct.fitting_album import fit_album

    stored = _stored(out, ("landmarks", "crop_transform"))
    lm = stored["landmarks"].double()
    m = stored["crop_transform"].double()
    crop = torch.einsum("bij,bnj->bni", m[:, :2, :2], lm) + m[:, None, :2, 2]
    keep = torch.isfinite(crop).all(-1).all(-1)
    if not bool(keep.any()):
        raise EmorigError(f"{out}: no stored landmarks to fit the album identity to")
    device = renderer.flame.v_template.device
    target = pixels_to_ndc(crop[keep].float(), CROP, CROP).to(device)
    shape = fit_album(renderer, None, target, photometric=False).code.shape[:1].cpu()
    with atomic_write(out / ALBUM_SHAPE, "wb") as f:
        f.write(save({"shape": shape.contiguous()}))
    return shape


def album_mean_shape(out: Path) -> Tensor:
    """(1, S) the album identity: the jointly fitted one of ``emorig prepare --album`` when
    ``out`` holds it (``ALBUM_SHAPE``), else the mean of every stored item's own shape
    (``shape_fitted`` when present)."""
    if (out / ALBUM_SHAPE).is_file():
        from safetensors.torch import load_file

        return load_file(str(out / ALBUM_SHAPE))["shape"].float()
    headers = read_headers(out)
    from safetensors import safe_open

    items, _ = merge_headers(headers)
    wanted: dict[str, list[int]] = {}
    for ref in items:
        wanted.setdefault(ref.shard, []).append(ref.index)
    total, count = None, 0
    for shard, indices in wanted.items():
        with safe_open(str(out / shard), framework="pt") as f:
            key = "shape_fitted" if "shape_fitted" in f.keys() else "code.shape"  # noqa: SIM118
            shapes = f.get_tensor(key)[indices].double()
        total = shapes.sum(0) if total is None else total + shapes.sum(0)
        count += len(indices)
    if total is None:
        raise EmorigError(f"{out}: no items to average the shape over")
    return (total / count).float()[None]


@torch.no_grad()
def rerender_shard(
    path: Path, renderer: FaceRenderer, mean_shape: Tensor | None, batch_size: int = 16
) -> None:
    """Re-render a shard's buffers with ``mean_shape`` (or back with each item's own shape);
    ``code.shape`` follows, the own shape is kept as ``shape_fitted``. Atomic."""
    tensors, meta = load_shard(path)
    if "code.shape" not in tensors:
        return
    own = tensors.pop("shape_fitted", tensors["code.shape"])
    n = own.shape[0]
    shape = own if mean_shape is None else mean_shape.to(own).expand(n, -1).clone()
    fields = {k[5:]: v for k, v in tensors.items() if k.startswith("code.")}
    fields["shape"] = shape
    code = FaceCode(**fields)
    size = tensors["image"].shape[-1]
    dtype = tensors["rendered"].dtype
    new: dict[str, list[Tensor]] = {"rendered": [], "normal": [], "albedo": [], "mask": []}
    for i in range(0, n, batch_size):
        b = render_conditions(
            renderer, code[i : i + batch_size], tensors["crop_transform"][i : i + batch_size], size
        )
        for k in ("rendered", "normal", "albedo"):
            new[k].append(getattr(b, k).float().cpu().to(dtype))
        new["mask"].append((b.mask > 0.5).to(torch.uint8).cpu())
    for k, v in new.items():
        tensors[k] = torch.cat(v)
    tensors["code.shape"] = shape
    if mean_shape is not None:
        tensors["shape_fitted"] = own
    meta["shape"] = shape_tag(mean_shape)
    write_shard(path, tensors, meta)


def apply_shape(
    out: Path,
    renderer: FaceRenderer | Callable[[], FaceRenderer],
    mean_shape: bool,
    *,
    rank: int = 0,
    world: int = 1,
) -> tuple[Tensor | None, int]:
    """Make this rank's share of the shards (``sorted[rank::world]``) use the album mean shape
    (or their own shapes); shards already right are left alone.

    Args:
        out: the prepared folder (every rank's shards complete).
        renderer: the head's renderer, or a function building it (only called when needed).
        mean_shape: True for the album mean, False for each item's own shape.
        rank, world: this process and the process count.

    Returns:
        The (1, S) mean shape (None without ``mean_shape``) and how many shards were
        re-rendered here.
    """
    mean = album_mean_shape(out) if mean_shape else None
    tag = shape_tag(mean)
    headers = read_headers(out)
    stale = [h for h in headers[rank::world] if h.count and h.shape_tag != tag]
    if stale and not isinstance(renderer, FaceRenderer):
        renderer = renderer()
    for h in stale:
        rerender_shard(h.path, renderer, mean)  # type: ignore[arg-type]
    return mean, len(stale)


def process_state(device: str | torch.device | None = None):
    """accelerate's ``PartialState`` (rank, world, device, barriers) for this process.

    CPU processes (``device`` a CPU device, or no accelerator at all) join through gloo, so
    ``accelerate launch --multi_gpu --num_processes N`` also works on CPU-only machines.

    Raises:
        EmorigError: when the launcher started several processes but accelerate sees one
            (they would overwrite each other's shards).
    """
    from accelerate import PartialState

    if device is not None:
        cpu = torch.device(device).type == "cpu"
    else:
        accel = getattr(torch, "accelerator", None)
        cpu = not (accel.is_available() if accel is not None else torch.cuda.is_available())
    # preparation can take hours and ranks finish unevenly: a long barrier timeout
    state = PartialState(cpu=cpu, timeout=timedelta(hours=48))
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > state.num_processes:
        raise EmorigError(
            f"started as {launched} processes but accelerate joined {state.num_processes}; "
            f"check the launch (device {device or 'default'})"
        )
    return state


def prepare(
    files: Sequence[Path],
    root: Path,
    out: Path,
    reconstructor: Reconstructor,
    config: PrepareConfig = PrepareConfig(),
    *,
    head_name: str | None = None,
    label: str | None = None,
    state: Any = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Prepare ``files`` into ``out`` on every process of an accelerate launch (or alone).

    Each process prepares its slice (:func:`prepare_worker`), waits for the others, applies
    the album mean shape to its share of shards when ``config.mean_shape``, and rank 0 writes
    the manifest (checking that every input is accounted for).

    Args:
        files: every input, sorted.
        root: the folder the inputs came from.
        out: the prepared folder.
        reconstructor: codes and renderer (on this process's device).
        config: see :class:`PrepareConfig`.
        head_name: the head's ``load_head`` name, stored in the settings.
        label: the reconstructor's label (default its method).
        state: an ``accelerate.PartialState`` (default: created here).
        progress: wraps this rank's remaining inputs.
        say: one-line messages (skipped inputs).
    """
    state = state if state is not None else process_state(reconstructor.device)
    rank, world = state.process_index, state.num_processes
    settings = settings_for(reconstructor, config, head_name, label)
    out = Path(out)
    check_settings(read_headers(out, skip_damaged=True), settings)  # before touching anything
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # unfinished until merged again
        remove_damaged_shards(out, say)  # every rank's, whatever the launch is now
    state.wait_for_everyone()
    report = prepare_worker(
        files,
        root,
        out,
        reconstructor,
        config,
        rank=rank,
        world=world,
        settings=settings,
        progress=progress,
        say=say,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        (out / ALBUM_SHAPE).unlink(missing_ok=True)
        if config.album:
            album_shape(out, reconstructor.renderer)
    state.wait_for_everyone()
    mean, again = apply_shape(
        out, reconstructor.renderer, config.mean_shape or config.album, rank=rank, world=world
    )
    state.wait_for_everyone()
    manifest = None
    if state.is_main_process:
        manifest = write_manifest(
            out,
            mean_shape=mean,
            expected=[source_name(p, root) for p in files],
            source_root=Path(root).resolve(),
        )
    state.wait_for_everyone()
    return PrepareResult(manifest, report, again)


def merge(
    out: Path,
    mean_shape: bool | None = None,
    *,
    renderer: FaceRenderer | Callable[[], FaceRenderer] | None = None,
    assets: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Manifest, int]:
    """The merge step alone (``emorig prepare --merge DATA``), in one process.

    Args:
        out: the prepared folder.
        mean_shape: True/False to (un)apply the album mean shape; None keeps what the shards
            use (the mean when any shard already uses it).
        renderer: renders re-shaped shards; default the shards' head from ``load_head``.
        assets: asset folder for FLAME heads.
        device: where re-rendering runs.

    Returns:
        The manifest and the number of shards re-rendered.
    """
    out = Path(out)
    headers = read_headers(out)
    if not headers:
        raise EmorigError(f"{out}: no shards to merge (run emorig prepare first)")
    settings = headers[0].settings
    check_settings(headers, settings)
    if mean_shape is None:
        mean_shape = any(h.shape_tag.startswith("mean:") for h in headers)

    def build() -> FaceRenderer:
        from emorig.flame.heads import HEADS, load_head

        if renderer is not None:
            return renderer() if not isinstance(renderer, FaceRenderer) else renderer
        if settings.head not in HEADS:
            raise EmorigError(
                f"{out}: shards use the head '{settings.head}', which cannot be loaded by name"
            )
        head = load_head(settings.head, assets)
        return FaceRenderer(head, n_albedo=settings.n_albedo).to(device)

    mean, again = apply_shape(out, build, mean_shape)
    return write_manifest(out, mean_shape=mean), again


__all__ = [
    "ALBUM_SHAPE",
    "PrepareConfig",
    "PrepareResult",
    "WorkerReport",
    "album_mean_shape",
    "album_shape",
    "apply_shape",
    "deca_crop",
    "merge",
    "prepare",
    "prepare_worker",
    "process_state",
    "remove_damaged_shards",
    "rerender_shard",
    "settings_for",
    "source_name",
]

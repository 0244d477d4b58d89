"""Training an emotion recogniser (8 AffectNet classes + valence/arousal) with Accelerate.

Data, one of:

* an AffectNet-style CSV: columns ``path`` (or AffectNet's ``subDirectory_filePath``),
  ``expression`` (0-7 or a class name), ``valence``, ``arousal``; paths relative to the CSV's
  folder (or ``images_root``). As EMOCA's ``ignore_invalid: like_emonet``, rows whose expression
  is not one of the 8 classes (AffectNet's 8 none, 9 uncertain, 10 no-face) are dropped, and
  rows with valence or arousal outside [-1, 1] (AffectNet's -2) lose their V/A terms.
* an image-folder layout: ``ROOT/<class name>/*.png`` (no valence/arousal; V/A terms off).
* ``None``: labelled synthetic renders of the built-in head (emotion presets at random
  intensities, :func:`emorig.emotion.presets.labelled_batch`), rendered once into a pool.

The loop: class-balanced sampling (a class drawn uniformly, then an image of it), EMOCA's
augmentation (random scale 0.8-1.2 and rotation ±10°, plus a horizontal flip and a small
brightness change), EMOCA's loss mix (:func:`emorig.emotion.emodeca.emodeca_loss`: NLL + V/A
MSE, PCC and CCC terms with shaken weights), validation on a held-out split every
``val_every`` steps with early stopping on its loss, and resumable checkpoints that carry the
run's config. Batches are drawn from generators seeded by (seed, step, rank), so a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emorig.emotion.emodeca import emodeca_loss
from emorig.emotion.metrics import emotion_metrics
from emorig.emotion.predict import parse_expression
from emorig.emotion.recognizers import (
    ResNetEmotionConfig,
    ResNetEmotionRecognizer,
    load_recognizer,
    save_recognizer,
)
from emorig.errors import EmorigError
from emorig.io.atomic import atomic_write
from emorig.io.images import ImageReadError, read_image
from emorig.train.checkpoint import RunConfig, append_log, optimise, resume_run, save_checkpoint
from emorig.types import EMOTION_CLASSES

__all__ = ["EmotionSet", "EmotionTrainConfig", "EmotionTrainResult", "train_emotion"]

N_CLASSES = len(EMOTION_CLASSES)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class EmotionTrainConfig(RunConfig):
    """Everything an emotion-recogniser training run needs; saved in every checkpoint.

    Attributes:
        out: run folder (checkpoints, ``log.jsonl``, ``model/`` = the best model).
        data: AffectNet-style CSV, image-folder root, or None for synthetic built-in-head faces.
        images_root: folder the CSV's paths are relative to (default: the CSV's folder).
        init: recogniser to start from (:func:`load_recognizer` spec; must be a ResNet one).
        backbone, width, input_size: architecture of a new model (``resnet18``/``resnet50``).
        steps, batch_size, lr: optimisation (Adam, EMOCA's lr 1e-4).
        val_fraction: share of the data held out for validation (split by path hash).
        val_every, patience: validate every ``val_every`` steps; stop when the validation
            loss has not improved for ``patience`` validations (0: never stop early).
        augment: EMOCA's scale/rotation augmentation plus flip and brightness.
        va_scheme: V/A loss weights, ``"shake"`` (EMOCA), ``"norm"`` or ``"none"``.
        synthetic_count, synthetic_val: sizes of the synthetic train and validation pools.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (Accelerate).

    A checkpoint resumes when its settings equal these by value except ``out`` and
    ``steps``, the ``PATHS`` compared as content (``train.checkpoint.run_identity``).
    """

    #: Path-valued settings, compared resolved.
    PATHS: ClassVar[tuple[str, ...]] = ("data", "images_root", "init")

    out: str
    data: str | None = None
    images_root: str | None = None
    init: str | None = None
    backbone: str = "resnet50"
    width: int = 64
    input_size: int = 224
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-4
    val_fraction: float = 0.1
    val_every: int = 500
    patience: int = 10
    augment: bool = True
    va_scheme: str = "shake"
    synthetic_count: int = 2048
    synthetic_val: int = 256
    save_every: int = 500
    keep: int = 2
    mixed_precision: str = "no"
    seed: int = 0
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise EmorigError("steps must be positive and the batch hold at least 2 images")
        if not 0.0 < self.val_fraction < 1.0:
            raise EmorigError(f"val_fraction {self.val_fraction}: choose a value in (0, 1)")
        if self.val_every < 1 or self.save_every < 1:
            raise EmorigError("val_every and save_every must be positive")


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class EmotionSet:
    """Labelled faces: either in memory (``images`` (N, 3, S, S) in [0, 1]) or as files.

    Attributes:
        labels: (N,) class indices into :data:`EMOTION_CLASSES`.
        valence_arousal: (N, 2) in [-1, 1]; rows with ``has_va`` False are ignored.
        has_va: (N,) whether the V/A labels of a row are valid.
        paths: file paths (file-backed sets) or None.
        images: the pixels (in-memory sets) or None.
    """

    labels: Tensor
    valence_arousal: Tensor
    has_va: Tensor
    paths: tuple[str, ...] | None = None
    images: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> EmotionSet:
        idx = index.tolist()
        return EmotionSet(
            self.labels[index],
            self.valence_arousal[index],
            self.has_va[index],
            None if self.paths is None else tuple(self.paths[i] for i in idx),
            None if self.images is None else self.images[index],
        )

    def load(self, index: list[int], size: int) -> Tensor:
        """(len(index), 3, size, size) images in [0, 1]."""
        if self.images is not None:
            return _fit(self.images[index], size)
        assert self.paths is not None
        out = []
        for i in index:
            try:
                pixels = read_image(self.paths[i]).pixels
            except ImageReadError as err:
                raise EmorigError(f"{self.paths[i]}: {err}") from None
            t = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)[None].float()
            out.append(_fit(t / 255.0, size))
        return torch.cat(out)


def _fit(images: Tensor, size: int) -> Tensor:
    if images.shape[-2:] == (size, size):
        return images
    shrink = min(images.shape[-2:]) > size
    return F.interpolate(
        images, (size, size), mode="bilinear", align_corners=False, antialias=shrink
    ).clamp(0, 1)


def _affect(value: str | None) -> float:
    try:
        v = float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan
    return v if -1.0 <= v <= 1.0 else math.nan


def read_csv_set(path: str | Path, images_root: str | Path | None = None) -> EmotionSet:
    """An AffectNet-style CSV (see the module docstring) as a file-backed :class:`EmotionSet`."""
    path = Path(path)
    root = Path(images_root) if images_root else path.parent
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise EmorigError(f"{path}: cannot read the label CSV ({err})") from None
    if not rows:
        raise EmorigError(f"{path}: no rows")
    columns = set(rows[0])
    key = "path" if "path" in columns else "subDirectory_filePath"
    if key not in columns or "expression" not in columns:
        raise EmorigError(
            f"{path}: needs columns 'path' (or 'subDirectory_filePath') and 'expression' "
            f"(found {sorted(columns)})"
        )
    paths, labels, va = [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            label = parse_expression(row.get("expression"))
        except ValueError as err:
            raise EmorigError(f"{path}, line {line}: {err}") from None
        if label is None:
            continue  # AffectNet's none / uncertain / no-face
        file = Path(row[key])
        paths.append(str(file if file.is_absolute() else root / file))
        labels.append(label)
        va.append((_affect(row.get("valence")), _affect(row.get("arousal"))))
    if not paths:
        raise EmorigError(f"{path}: no row has one of the 8 expression classes")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise EmorigError(
            f"{path}: {len(missing)} listed images do not exist (first: {missing[0]}); "
            "set the images root with --images-root"
        )
    va_t = torch.tensor(va, dtype=torch.float32)
    has_va = ~torch.isnan(va_t).any(1)
    return EmotionSet(torch.tensor(labels), torch.nan_to_num(va_t), has_va, paths=tuple(paths))


def read_folder_set(root: str | Path) -> EmotionSet:
    """``ROOT/<class>/*`` (class folder names from :data:`EMOTION_CLASSES`, any case; also
    FER's ``angry``) as a file-backed :class:`EmotionSet` without V/A."""
    root = Path(root)
    paths, labels = [], []
    unknown = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            label = parse_expression(folder.name)
        except ValueError:
            label = None
        if label is None:
            unknown.append(folder.name)
            continue
        for file in sorted(folder.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(file))
                labels.append(label)
    if unknown:
        raise EmorigError(
            f"{root}: folders {unknown} are not emotion classes; name them after "
            f"{', '.join(EMOTION_CLASSES)}"
        )
    if not paths:
        raise EmorigError(f"{root}: no images in class folders ({', '.join(EMOTION_CLASSES)})")
    n = len(paths)
    return EmotionSet(
        torch.tensor(labels), torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool), tuple(paths)
    )


def synthetic_set(count: int, size: int, seed: int, device: torch.device) -> EmotionSet:
    """``count`` labelled renders of the built-in head (in memory, CPU)."""
    from emorig.emotion.presets import labelled_batch
    from emorig.flame.heads import load_head
    from emorig.render.face import FaceRenderer

    renderer = FaceRenderer(load_head("builtin")).to(device)
    g = torch.Generator().manual_seed(seed)
    images, labels, va = [], [], []
    for start in range(0, count, 64):
        batch = labelled_batch(renderer, min(64, count - start), g, image_size=size)
        images.append(batch.images.cpu())
        labels.append(batch.labels.cpu())
        va.append(batch.valence_arousal.cpu())
    labels_t = torch.cat(labels)
    return EmotionSet(
        labels_t,
        torch.cat(va).float(),
        torch.ones(count, dtype=torch.bool),
        images=torch.cat(images),
    )


def _split(data: EmotionSet, fraction: float, seed: int) -> tuple[EmotionSet, EmotionSet]:
    """Hold out ~``fraction`` of the items (by a hash of the path, stable across runs)."""
    if data.paths is not None:
        keys = [
            int.from_bytes(hashlib.sha1(f"{seed}:{p}".encode()).digest()[:4], "little")
            for p in data.paths
        ]
        held = torch.tensor([k / 2**32 < fraction for k in keys])
    else:
        g = torch.Generator().manual_seed(seed + 17)
        held = torch.rand(len(data), generator=g) < fraction
    if held.all() or not held.any():
        raise EmorigError(
            f"{len(data)} images cannot be split into training and validation sets; add images"
        )
    return data.subset(torch.nonzero(~held)[:, 0]), data.subset(torch.nonzero(held)[:, 0])


def balanced_indices(labels: Tensor, batch: int, generator: torch.Generator) -> list[int]:
    """Class-balanced draw: a class uniformly among the present ones, then one of its items."""
    present = torch.unique(labels)
    classes = present[torch.randint(len(present), (batch,), generator=generator)]
    out = []
    for c in classes.tolist():
        members = torch.nonzero(labels == c)[:, 0]
        out.append(int(members[torch.randint(len(members), (1,), generator=generator)]))
    return out


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """EMOCA's affine augmentation (scale 0.8-1.2, rotation ±10°) about the centre, a
    horizontal flip with probability 0.5 and brightness ×[0.8, 1.2]; images in [0, 1]."""
    import kornia

    b, _, h, w = images.shape
    rand = torch.rand(b, 4, generator=generator).to(images.device, images.dtype)
    scale = (0.8 + 0.4 * rand[:, 0:1]).expand(b, 2)
    angle = -10.0 + 20.0 * rand[:, 1]
    centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]], device=images.device).expand(b, 2)
    matrix = kornia.geometry.transform.get_rotation_matrix2d(centre, angle, scale)
    out = kornia.geometry.transform.warp_affine(
        images, matrix.to(images.dtype), (h, w), padding_mode="border"
    )
    flip = rand[:, 2] < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return (out * (0.8 + 0.4 * rand[:, 3, None, None, None])).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Loss and validation


def _loss(model, images, labels, va, has_va, generator, scheme, training):
    out = model(images)
    if bool(has_va.all()):
        terms = emodeca_loss(out, labels, va, generator, scheme=scheme, training=training)
        return (
            out,
            terms.total,
            {
                "nll": float(terms.expression_nll.detach()),
                "v_mse": float(terms.v_mse.detach()),
                "a_mse": float(terms.a_mse.detach()),
            },
        )
    nll = F.nll_loss(out.logits, labels)
    parts = {"nll": float(nll.detach())}
    if bool(has_va.any()) and out.valence_arousal is not None:
        m = has_va
        mse = F.mse_loss(out.valence_arousal[m], va[m])
        parts["va_mse"] = float(mse.detach())
        nll = nll + mse
    return out, nll, parts


@torch.no_grad()
def evaluate_set(model, data: EmotionSet, size: int, batch: int = 64) -> dict[str, float]:
    """EMOCA's metrics (:func:`emotion_metrics`) and the mean NLL of ``model`` on ``data``."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    logits, va = [], []
    for start in range(0, len(data), batch):
        idx = list(range(start, min(len(data), start + batch)))
        out = model(data.load(idx, size).to(device))
        logits.append(out.logits.float().cpu())
        va.append(None if out.valence_arousal is None else out.valence_arousal.float().cpu())
    model.train(was)
    lg = torch.cat(logits)
    nll = float(F.nll_loss(lg, data.labels))
    m = data.has_va.numpy()
    va_pred = torch.cat(va).numpy() if va[0] is not None and m.any() else None
    metrics = emotion_metrics(
        pred_va=None if va_pred is None else va_pred[m],
        true_va=None if va_pred is None else data.valence_arousal.numpy()[m],
        pred_class=lg.argmax(1).numpy(),
        true_class=data.labels.numpy(),
    )
    return {"nll": nll, **{k: float(v) for k, v in metrics.items()}}


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class EmotionTrainResult:
    step: int
    stopped_early: bool
    best_step: int
    best: dict[str, float]
    model_folder: Path | None
    seconds: float


def _load_data(cfg: EmotionTrainConfig, device) -> tuple[EmotionSet, EmotionSet]:
    if cfg.data is None:
        train = synthetic_set(cfg.synthetic_count, cfg.input_size, cfg.seed, device)
        val = synthetic_set(cfg.synthetic_val, cfg.input_size, cfg.seed + 1_000_003, device)
        return train, val
    path = Path(cfg.data)
    if path.is_file() and path.suffix.lower() == ".csv":
        data = read_csv_set(path, cfg.images_root)
    elif path.is_dir():
        data = read_folder_set(path)
    else:
        raise EmorigError(f"{path}: expected a label CSV or a folder of class sub-folders")
    return _split(data, cfg.val_fraction, cfg.seed)


def _build_model(cfg: EmotionTrainConfig) -> ResNetEmotionRecognizer:
    if cfg.init is not None:
        model = load_recognizer(cfg.init)
        if not isinstance(model, ResNetEmotionRecognizer):
            raise EmorigError(
                f"--init {cfg.init}: only ResNet recognisers (EMOCA's or ours) are trained"
            )
        return model.train()
    config = ResNetEmotionConfig(
        backbone=cfg.backbone, layout="torchvision", width=cfg.width, input_size=cfg.input_size
    )
    return ResNetEmotionRecognizer(config)


def _generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + rank)


@dataclass
class _EmotionRun:
    """The state of a training run between steps: data, model, optimiser and the best model."""

    accelerator: Any
    train_set: EmotionSet
    val_set: EmotionSet
    model: Any  # as prepared by Accelerate
    optimizer: Any
    raw: ResNetEmotionRecognizer  # the unwrapped model
    step: int = 0
    best_loss: float = math.inf
    best_step: int = 0
    bad: int = 0  # validations in a row without improvement
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    best_state: dict[str, Tensor] | None = None
    stopped: bool = False


def _start_run(cfg: EmotionTrainConfig, accelerator: Any) -> _EmotionRun:
    """Data, a new (or ``cfg.init``) model and its optimiser, resumed from the newest matching
    checkpoint in ``cfg.out`` if there is one, prepared by Accelerate."""
    train_set, val_set = _load_data(cfg, accelerator.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = _build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    resumed: dict[str, Any] = {}
    rank, scaler = accelerator.process_index, accelerator.scaler
    state = resume_run(Path(cfg.out), cfg, model, optimizer, rank=rank, scaler=scaler)
    if state is not None:
        resumed = {
            "step": int(state["step"]),
            "best_loss": float(state["best_loss"]),
            "best_step": int(state["best_step"]),
            "bad": int(state["bad"]),
            "best_metrics": json.loads(state["best_metrics"]),
            "best_state": state.get("best_model"),
        }
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    run = _EmotionRun(
        accelerator, train_set, val_set, model, optimizer, accelerator.unwrap_model(model)
    )
    for name, value in resumed.items():
        setattr(run, name, value)
    run.stopped = cfg.patience > 0 and run.bad >= cfg.patience
    return run


def _train_step(cfg: EmotionTrainConfig, run: _EmotionRun) -> dict[str, Any]:
    """One optimiser step on a class-balanced, augmented batch; the step's log record."""
    accelerator, data, step = run.accelerator, run.train_set, run.step
    device = accelerator.device
    g = _generator(cfg.seed, step, accelerator.process_index)
    idx = balanced_indices(data.labels, cfg.batch_size, g)
    images = data.load(idx, cfg.input_size).to(device)
    if cfg.augment:
        images = augment(images, g)
    labels = data.labels[idx].to(device)
    va = data.valence_arousal[idx].to(device)
    has_va = data.has_va[idx]
    with accelerator.autocast():
        _, loss, parts = _loss(run.model, images, labels, va, has_va, g, cfg.va_scheme, True)
    optimise(accelerator, run.optimizer, loss, step)
    run.step = step = step + 1
    return {"step": step, "loss": float(loss.detach()), **parts}


def _validate(cfg: EmotionTrainConfig, run: _EmotionRun, record: dict[str, Any]) -> None:
    """Validate, keep the best model so far and decide on early stopping."""
    metrics = evaluate_set(run.raw, run.val_set, cfg.input_size)
    record.update({f"val_{k}": v for k, v in metrics.items()})
    if metrics["nll"] < run.best_loss:
        run.best_loss, run.best_step, run.bad = metrics["nll"], run.step, 0
        run.best_metrics = metrics
        run.best_state = {k: v.detach().cpu().clone() for k, v in run.raw.state_dict().items()}
    else:
        run.bad += 1
    run.stopped = cfg.patience > 0 and run.bad >= cfg.patience


def _log_and_save(
    cfg: EmotionTrainConfig,
    run: _EmotionRun,
    record: dict[str, Any],
    end: int,
    progress: Callable[[int, int, dict[str, float]], None] | None,
) -> None:
    """Append the record to ``log.jsonl``, report it, and save a checkpoint when due."""
    out, step = Path(cfg.out), run.step
    append_log(out, record, "log.jsonl")
    if progress is not None:
        progress(step, cfg.steps, record)
    if step % cfg.save_every == 0 or step == end or run.stopped:
        extra = {} if run.best_state is None else {"best_model": run.best_state}
        save_checkpoint(
            out,
            step,
            {
                "model": run.raw.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "best_loss": run.best_loss,
                "best_step": run.best_step,
                "bad": run.bad,
                "best_metrics": json.dumps(run.best_metrics),
                **extra,
            },
            cfg,
            keep=cfg.keep,
            scaler=run.accelerator.scaler,
        )


def _save_best(cfg: EmotionTrainConfig, run: _EmotionRun) -> Path:
    """Save the best model with its ``training.json`` in ``cfg.out/model``; the folder."""
    final = ResNetEmotionRecognizer(run.raw.config)
    final.load_state_dict(run.best_state)
    folder = save_recognizer(final, Path(cfg.out) / "model")
    with atomic_write(folder / "training.json", "w") as f:
        json.dump(
            {
                "config": cfg.to_dict(),
                "best_step": run.best_step,
                "validation": run.best_metrics,
                "stopped_early": run.stopped,
                "synthetic_data": cfg.data is None,
            },
            f,
            indent=1,
        )
    return folder


def train_emotion(
    cfg: EmotionTrainConfig,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
) -> EmotionTrainResult:
    """Run (or resume) a recogniser training; the best model (by validation loss) is saved
    with :func:`save_recognizer` in ``cfg.out/model``.

    Resumes from the newest intact checkpoint in ``cfg.out`` of the same run (settings equal
    except ``steps``, see :class:`EmotionTrainConfig`), RNG states included.
    ``stop_after`` ends this call after that many steps (simulates a kill).
    """
    from accelerate import Accelerator

    t0 = time.perf_counter()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)
    run = _start_run(cfg, accelerator)
    end = cfg.steps if stop_after is None else min(cfg.steps, run.step + stop_after)
    while run.step < end and not run.stopped:
        record = _train_step(cfg, run)
        if run.step % cfg.val_every == 0 or run.step == cfg.steps:
            _validate(cfg, run, record)
        if accelerator.is_main_process:
            _log_and_save(cfg, run, record, end, progress)
        accelerator.wait_for_everyone()
    folder = None
    done = run.step == cfg.steps or run.stopped
    if accelerator.is_main_process and done and run.best_state is not None:
        folder = _save_best(cfg, run)
    return EmotionTrainResult(
        run.step, run.stopped, run.best_step, run.best_metrics, folder, time.perf_counter() - t0
    )

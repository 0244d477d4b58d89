"""Training the conditional diffusion model: one loop, stages as configuration.

* ``stage1``: many faces; the denoiser and the global latent encoder learn together
  (DiffusionRig: lr 1e-4, global batch 256, 50k steps).
* ``stage2``: about 20 photos of one person, starting from a stage-1 model; every parameter
  outside ``denoisingUNet.`` is frozen (the latent encoder keeps what stage 1 learnt),
  lr 1e-5, batch 4, 5k steps (DiffusionRig's defaults).

What differs between stages is data here: :data:`STAGE_DEFAULTS` and ``trainable``.
The loop: P2-weighted epsilon loss at uniformly drawn timesteps, Adam, gradient clipping,
optional EMA, mixed precision and 1..N processes through Accelerate. Each process takes its
batches from an epoch-wise permutation seeded by ``(seed, epoch)``; the step alone fixes what
a step sees (data order, timesteps, noise), so a run resumed from a checkpoint continues
exactly as an uninterrupted one (``kill -9`` loses at most ``save_every`` steps).

DiffusionRig-EMO adds (all off by default, see ``docs/diffusionrig-emo.md``):
``expression_dim`` (an expression encoder conditioning the denoiser next to the global
latent, zero effect at initialisation) and ``emotion_weight`` (EMOCA's emotion-consistency
loss between the training image and the model's predicted clean image).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from emorig.diffusion.config import model_preset
from emorig.diffusion.loading import load_rig
from emorig.diffusion.model import RigModel
from emorig.diffusion.pipeline import RigPipeline
from emorig.diffusion.schedule import epsilon_loss
from emorig.errors import EmorigError
from emorig.io.atomic import atomic_write
from emorig.train.checkpoint import (
    RunConfig,
    adam,
    append_log,
    optimise,
    resume_run,
    save_checkpoint,
)

__all__ = [
    "STAGE_DEFAULTS",
    "RigTrainConfig",
    "RigTrainResult",
    "build_rig",
    "train_rig",
]

#: Per-stage defaults (DiffusionRig's README and train.py).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "stage1": {"lr": 1e-4, "batch_size": 32, "steps": 50_000, "trainable": ("",)},
    "stage2": {"lr": 1e-5, "batch_size": 4, "steps": 5_000, "trainable": ("denoisingUNet.",)},
}


@dataclass(frozen=True)
class RigTrainConfig(RunConfig):
    """Everything a diffusion training run needs; saved in every checkpoint.

    Attributes:
        stage: ``"stage1"`` or ``"stage2"``.
        data: a folder made by ``emorig prepare`` (or ``emorig synth --prepare``).
        out: run folder (checkpoints, ``losses.jsonl``, ``samples/``, ``model/``).
        init: weights to start from: an emorig model folder, DiffusionRig's ``model*.pt``,
            or None (random; stage 1 only).
        model: architecture preset for a new model (:data:`MODEL_PRESETS`); ignored with
            ``init``.
        model_overrides: :class:`RigConfig` fields changed on the preset.
        steps, batch_size, lr: per process; None takes :data:`STAGE_DEFAULTS`.
        trainable: parameter-name prefixes that train (``""`` = all); None = the stage's.
        grad_clip: gradient-norm clip (DiffusionRig: 1.0).
        ema: EMA decay of the weights (0 = off, DiffusionRig); the exported model is the EMA.
        p2_k, p2_gamma: P2 weighting (DiffusionRig: 1, 1; gamma 0 = plain MSE).
        expression_dim: DiffusionRig-EMO's expression conditioning (0 = off).
        expression_source: what the expression encoder reads: ``"code"`` (FLAME expression
            + jaw of the buffers) or ``"emotion"`` (the emotion recogniser's features of the
            image).
        emotion_weight: weight of the emotion-consistency loss on the predicted x0 (0 = off).
        recognizer: emotion recogniser for ``emotion_weight`` / ``expression_source=emotion``
            (:func:`emorig.emotion.recognizers.load_recognizer` spec).
        sample_every, sample_steps: sample grid period and its DDIM respacing.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (Accelerate).
        autoencoder: latent DiffusionRig-EMO: denoise this autoencoder's latents
            (``builtin-f4``, ``builtin-f8`` or a diffusers folder); None = pixels. A model
            from ``init`` keeps its own space (giving another one is refused).
        condition_method: how a new latent model reads the buffers (``unshuffle``, the
            default, ``resize`` or ``encode``; see ``docs/latent-diffusion.md``).

    A checkpoint resumes when its settings equal these by value except ``out`` and
    ``steps``, the ``PATHS`` compared as content (``train.checkpoint.run_identity``).
    """

    #: Path-valued settings, compared resolved (``data``: by its manifest's fingerprint).
    PATHS: ClassVar[tuple[str, ...]] = ("data", "init", "recognizer", "autoencoder")

    stage: str
    data: str
    out: str
    init: str | None = None
    model: str = "official"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    trainable: tuple[str, ...] | None = None
    grad_clip: float = 1.0
    ema: float = 0.0
    p2_k: float = 1.0
    p2_gamma: float = 1.0
    expression_dim: int = 0
    expression_source: str = "code"
    emotion_weight: float = 0.0
    recognizer: str | None = None
    save_every: int = 500
    log_every: int = 10
    sample_every: int = 1000
    sample_steps: str = "ddim20"
    keep: int = 2
    mixed_precision: str = "no"
    seed: int = 0
    cpu: bool = False
    autoencoder: str | None = None
    condition_method: str = "unshuffle"

    def __post_init__(self) -> None:
        from emorig.diffusion.config import CONDITION_METHODS

        if self.condition_method not in CONDITION_METHODS:
            raise EmorigError(
                f"condition method '{self.condition_method}': choose {', '.join(CONDITION_METHODS)}"
            )
        if self.stage not in STAGE_DEFAULTS:
            raise EmorigError(f"unknown stage '{self.stage}'; choose stage1 or stage2")
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))
        if self.stage == "stage2" and self.init is None:
            raise EmorigError("stage 2 personalises a stage-1 model: pass --init")
        if self.expression_source not in ("code", "emotion"):
            raise EmorigError("expression source: choose code or emotion")
        uses_emotion = self.emotion_weight > 0 or (
            self.expression_dim > 0 and self.expression_source == "emotion"
        )
        if uses_emotion and self.recognizer is None:
            raise EmorigError(
                "the emotion loss and emotion-feature conditioning need --recognizer "
                "(fer, emoca:DIR or a trained recogniser folder)"
            )
        if not 0.0 <= self.ema < 1.0:
            raise EmorigError(f"ema {self.ema}: choose a decay in [0, 1)")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EmorigError(f"{name} must be positive")

    def resolved(self, name: str) -> Any:
        value = getattr(self, name)
        return STAGE_DEFAULTS[self.stage][name] if value is None else value


# ---------------------------------------------------------------------------------------------
# Model


def build_rig(
    cfg: RigTrainConfig, condition: tuple[str, ...], image_size: int, expression_input: int = 0
) -> RigModel:
    """The model a run starts from (before any checkpoint is restored).

    ``expression_input`` is the size of the expression encoder's input (DiffusionRig-EMO)."""
    from emorig.diffusion.model import with_expression

    if cfg.init is not None:
        model = load_rig(cfg.init)
        if model.config.condition_names != condition:
            raise EmorigError(
                f"{cfg.init} is conditioned on {'+'.join(model.config.condition_names)}, the "
                f"data on {'+'.join(condition)}"
            )
        if cfg.model_overrides:
            raise EmorigError("model overrides apply to new models only (drop --init)")
        _check_space(cfg, model)
        if cfg.expression_dim and not model.config.expression_dim:
            model = with_expression(
                model, cfg.expression_dim, expression_input, cfg.expression_source
            )
        elif cfg.expression_dim and (
            model.config.expression_input_dim != expression_input
            or model.config.expression_source != cfg.expression_source
        ):
            raise EmorigError(
                f"{cfg.init} reads a {model.config.expression_input_dim}-d "
                f"{model.config.expression_source} expression input; this run gives a "
                f"{expression_input}-d {cfg.expression_source} one"
            )
        return model.train()
    config = model_preset(cfg.model, image_size, condition, latent_space(cfg))
    try:
        config = config.replace(**cfg.model_overrides).replace(
            expression_dim=cfg.expression_dim,
            expression_input_dim=expression_input if cfg.expression_dim else 0,
            expression_source=cfg.expression_source,
        )
    except (TypeError, ValueError) as err:
        raise EmorigError(f"model settings: {err}") from None
    return RigModel(config)


def latent_space(cfg: RigTrainConfig) -> dict[str, Any]:
    """The :class:`RigConfig` fields of a new model's space: empty for pixels; for a latent
    model the autoencoder (loaded once to read its f and channels) and the condition method."""
    if cfg.autoencoder is None:
        return {}
    from emorig.diffusion.autoencoder import load_autoencoder

    ae = load_autoencoder(cfg.autoencoder)
    return {
        "autoencoder": ae.spec,
        "autoencoder_factor": ae.factor,
        "autoencoder_channels": ae.latent_channels,
        "condition_method": cfg.condition_method,
    }


def _check_space(cfg: RigTrainConfig, model: RigModel) -> None:
    """Refuse an ``--autoencoder`` that differs from the one an ``--init`` model works in."""
    if cfg.autoencoder is None:
        return
    from emorig.diffusion.autoencoder import autoencoder_key

    wanted = autoencoder_key(cfg.autoencoder)
    if model.config.autoencoder != wanted:
        have = model.config.autoencoder or "pixels"
        raise EmorigError(
            f"{cfg.init} denoises {have}; it cannot continue on {wanted} (drop --autoencoder "
            "to keep the model's own space)"
        )


def train_mode(model: nn.Module) -> None:
    """Training mode, except for sub-modules with nothing to train: those stay in eval mode
    so a frozen latent encoder also keeps its batch-norm statistics (DiffusionRig's stage 2
    only stops their gradients, letting the statistics drift towards the album)."""
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=True))
        if params and not any(p.requires_grad for p in params):
            module.eval()


def set_trainable(model: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Parameter]:
    """Freeze every parameter whose name starts with none of ``prefixes``; return the rest."""
    out = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(pre) for pre in prefixes))
        if p.requires_grad:
            out.append(p)
    if not out:
        raise EmorigError(f"no parameter name starts with {list(prefixes)}: nothing to train")
    return out


# ---------------------------------------------------------------------------------------------
# Data order


def step_indices(n: int, batch: int, step: int, rank: int, world: int, seed: int) -> list[int]:
    """The items of one process's batch at ``step``: consecutive slices of per-epoch
    permutations (seeded by ``(seed, epoch)``), so every item is seen once per epoch and a
    step's batch depends on nothing but its arguments."""
    start = (step * world + rank) * batch
    out = []
    for pos in range(start, start + batch):
        epoch, offset = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n, generator=g)[offset]))
    return out


def _collate(dataset, indices: list[int], device) -> dict[str, Any]:
    items = [dataset[i] for i in indices]
    batch: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]).to(device),
        "condition": torch.stack([it["condition"] for it in items]).to(device),
        "mask": torch.stack([it["mask"] for it in items]).to(device),
        "crop_transform": torch.stack([it["crop_transform"] for it in items]).to(device),
    }
    if "code" in items[0]:
        batch["code"] = {
            k: torch.stack([it["code"][k] for it in items]).to(device) for k in items[0]["code"]
        }
    return batch


class _InMemory:
    """A whole (small) prepared set in RAM, as DiffusionRig's stage 2 keeps its album."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class RigTrainResult:
    step: int
    losses: dict[str, float]
    checkpoint: Path | None
    model_folder: Path | None
    seconds: float


def _ema_update(ema: dict[str, Tensor], model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                ema[k].copy_(v)


@dataclass
class _Run:
    """The state of a training run between steps."""

    cfg: RigTrainConfig
    out: Path
    accelerator: Any
    data: Any
    emo: Any
    model: nn.Module  # as prepared by Accelerate
    raw: RigModel  # the unwrapped model
    pipeline: RigPipeline
    optimizer: torch.optim.Optimizer
    trainable: list[nn.Parameter]
    ema: dict[str, Tensor] | None
    start: int
    steps: int
    batch_size: int
    sample_batch: dict[str, Any]
    #: latent models: each item's latents and (``encode`` method) model condition, made once
    cache: dict[tuple[str, int], Tensor] = field(default_factory=dict)


def _start_run(cfg: RigTrainConfig) -> _Run:
    """Data, model, optimiser and EMA of a run, restored from its newest checkpoint."""
    from accelerate import Accelerator

    from emorig.data.dataset import CONDITION_NAMES, BufferDataset
    from emorig.train.emo import EmoTerms

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)
    device = accelerator.device
    latent_space(cfg)  # a missing or malformed --autoencoder fails before any data is read
    steps, batch_size, lr = (cfg.resolved(n) for n in ("steps", "batch_size", "lr"))
    dataset = BufferDataset(cfg.data, condition=CONDITION_NAMES, codes=True)
    if len(dataset) < 1:
        raise EmorigError(f"{cfg.data}: the prepared set is empty")
    data = _InMemory(dataset) if cfg.stage == "stage2" or len(dataset) <= 512 else dataset
    emo = EmoTerms.build(cfg, device)
    expression_input = emo.input_dim(dataset.manifest.code_fields) if cfg.expression_dim else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_rig(cfg, tuple(CONDITION_NAMES), dataset.size, expression_input)
    if model.config.image_size != dataset.size:
        raise EmorigError(
            f"the model works at {model.config.image_size} px, {cfg.data} at {dataset.size} px"
        )
    trainable = set_trainable(model, tuple(cfg.resolved("trainable")))
    optimizer = adam(trainable, lr)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema > 0 else None
    start = 0
    state = resume_run(
        cfg.out, cfg, model, optimizer, rank=accelerator.process_index, scaler=accelerator.scaler
    )
    if state is not None:
        if ema is not None:
            ema = state["ema"]
        start = int(state["step"])
    train_mode(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw: RigModel = accelerator.unwrap_model(model)
    if ema is not None:
        ema = {k: v.to(device) for k, v in ema.items()}
    sample_batch = _collate(data, list(range(min(4, len(data)))), device)
    return _Run(
        cfg, Path(cfg.out), accelerator, data, emo, model, raw, RigPipeline(raw), optimizer,
        trainable, ema, start, steps, batch_size, sample_batch,
    )  # fmt: skip


def _step(run: _Run, step: int) -> dict[str, float]:
    """One optimisation step; returns its losses."""
    cfg, accelerator = run.cfg, run.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    idx = step_indices(len(run.data), run.batch_size, step, rank, world, cfg.seed)
    batch = _collate(run.data, idx, accelerator.device)
    g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 131 + rank)
    x0 = _cached(run, "x0", idx, batch["image"], run.pipeline.to_model)
    cond = batch["condition"]
    if run.raw.config.latent and run.raw.config.condition_method == "encode":
        cond = _cached(run, "condition", idx, cond, run.pipeline.model_condition)
    else:
        cond = run.pipeline.model_condition(cond)
    x0, t, noise, x_t = run.pipeline.training_inputs(batch["image"], g, x0=x0)
    with accelerator.autocast():
        expression = run.emo.expression_input(batch)
        x_start = run.pipeline.encoder_input(batch["image"])
        eps = run.model(x_t, t, cond, x_start=x_start, expression=expression)
        schedule = run.pipeline.schedule
        terms = {
            "diffusion": epsilon_loss(
                eps.float(), noise, t, schedule, p2_k=cfg.p2_k, p2_gamma=cfg.p2_gamma
            ).mean()
        }
        terms.update(run.emo.losses(batch, x_t, t, eps, run.pipeline))
        loss = sum(terms.values())
    optimise(accelerator, run.optimizer, loss, step, run.trainable, cfg.grad_clip)
    if run.ema is not None:
        _ema_update(run.ema, run.raw, cfg.ema)
    return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def _cached(run: _Run, what: str, idx: list[int], values: Tensor, make) -> Tensor:
    """``make(values)`` per item, remembered by item for latent models (the autoencoder is
    frozen and deterministic, so an item's latents never change); pixels pass through."""
    if not run.pipeline.latent:
        return make(values)
    missing = [j for j, i in enumerate(idx) if (what, i) not in run.cache]
    if missing:
        made = make(values[missing])
        for row, j in enumerate(missing):
            run.cache[(what, idx[j])] = made[row].detach().cpu()
    return torch.stack([run.cache[(what, i)] for i in idx]).to(values.device)


def _after_step(run: _Run, done: int, end: int, last: dict[str, float], progress) -> Path | None:
    """Log, report progress, write the sample grid and the checkpoint when they are due (main
    process only); returns the checkpoint written, if any."""
    cfg, out = run.cfg, run.out
    if done % cfg.log_every == 0 or done == end:
        append_log(out, {"step": done, **last})
    if progress is not None:
        progress(done, run.steps, last)
    if done % cfg.sample_every == 0 or done == run.steps:
        write_sample_grid(
            run.pipeline, run.emo, run.sample_batch, cfg, out / "samples" / f"step-{done:08d}.png"
        )
        train_mode(run.raw)
    if done % cfg.save_every == 0 or done == end:
        extra = {} if run.ema is None else {"ema": run.ema}
        payload = {"model": run.raw.state_dict(), "optimizer": run.optimizer.state_dict()}
        return save_checkpoint(
            out, done, {**payload, **extra}, cfg, keep=cfg.keep, scaler=run.accelerator.scaler
        )
    return None


def _export(run: _Run) -> Path:
    """The final model (the EMA weights when EMA is on) as a model folder, with the run's
    settings in ``training.json``."""
    from emorig.data.dataset import BufferDataset
    from emorig.diffusion.pretrained import save_pretrained

    final = run.raw
    if run.ema is not None:
        final = RigModel(run.raw.config)
        final.load_state_dict(run.ema)
    folder = save_pretrained(final, run.out / "model")
    with atomic_write(folder / "training.json", "w") as f:
        info = {"config": run.cfg.to_dict(), "steps": run.steps, "data": str(run.cfg.data)}
        settings = BufferDataset(run.cfg.data).manifest.settings
        # What the model has seen: `emorig edit` warns when it meets photos of another kind.
        info["trained_on"] = {
            "head": settings.head,
            "synthetic_head": settings.synthetic_head,
            "reconstructor": settings.reconstructor,
        }
        json.dump(info, f, indent=1)
    return folder


def train_rig(
    cfg: RigTrainConfig,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
) -> RigTrainResult:
    """Run (or resume) a diffusion training stage.

    Resumes from the newest intact checkpoint in ``cfg.out`` (of the same run: settings equal
    except ``steps``, see :class:`RigTrainConfig`), RNG states included.
    ``stop_after`` ends this call after that many steps (tests use it to simulate
    a kill). The final model is written with ``save_pretrained`` to ``cfg.out/model``.
    """
    t0 = time.perf_counter()
    run = _start_run(cfg)
    end = run.steps if stop_after is None else min(run.steps, run.start + stop_after)
    last: dict[str, float] = {}
    checkpoint = None
    for step in range(run.start, end):
        last = _step(run, step)
        if run.accelerator.is_main_process:
            checkpoint = _after_step(run, step + 1, end, last, progress) or checkpoint
        run.accelerator.wait_for_everyone()
    folder = None
    if run.accelerator.is_main_process and end == run.steps:
        folder = _export(run)
    return RigTrainResult(end, last, checkpoint, folder, time.perf_counter() - t0)


@torch.no_grad()
def write_sample_grid(
    pipeline: RigPipeline, emo, batch: dict[str, Any], cfg: RigTrainConfig, path: Path
) -> None:
    """Lambertian buffer | training image | DDIM sample from fixed noise, one row per item."""
    from emorig.io.images import contact_sheet, save_png, to_uint8

    model = pipeline.model
    was = model.training
    model.eval()
    image, cond = batch["image"], batch["condition"]
    latent = pipeline.encode_latent(image)
    expression = emo.expression_input(batch)
    noise = pipeline.noise(image.shape[0], torch.Generator().manual_seed(cfg.seed))
    sample = pipeline.sample(noise, cond, latent, expression, timesteps=cfg.sample_steps)
    model.train(was)
    rows = [
        [to_uint8(cond[i, :3].clamp(0, 1)), to_uint8(image[i]), to_uint8(sample[i])]
        for i in range(image.shape[0])
    ]
    save_png(contact_sheet(rows, column_labels=["buffer", "image", "sample"]), path)

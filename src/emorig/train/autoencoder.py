"""Training the small autoencoders of latent DiffusionRig-EMO (``emorig train autoencoder``).

A diffusers ``AutoencoderKL`` (f = 2 ** (levels - 1)) learns to reconstruct the images of a
prepared folder, and their condition buffers (Lambertian render, normals, albedo) a quarter
of the time, so that buffers can also be encoded. Loss: L1 + 0.2 (1 - SSIM) + a small KL
(1e-6, as latent diffusion's autoencoders). Training reads random square crops (the network
is fully convolutional; crops of 128 px cost a quarter of whole 256 px images). After
training, the scaling factor is set to 1 / std of the held-out latents (diffusers'
``scaling_factor``) and the reconstruction PSNR of held-out images is measured and written to
``training.json``. Resumable (checkpoints carry the config), Accelerate for 1..N processes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from emorig.errors import EmorigError
from emorig.train.checkpoint import RunConfig, append_log, optimise, resume_run, save_checkpoint

__all__ = [
    "AUTOENCODER_SIZES",
    "AutoencoderTrainConfig",
    "AutoencoderTrainResult",
    "build_autoencoder",
    "psnr",
    "train_autoencoder",
]

#: Block widths by downsampling factor (f = 2 ** (len - 1)); one ResNet block per level.
AUTOENCODER_SIZES: dict[int, tuple[int, ...]] = {
    4: (32, 64, 128),
    8: (32, 64, 128, 128),
}

#: Share of training crops taken from a condition buffer instead of the image.
BUFFER_SHARE = 0.25


@dataclass(frozen=True)
class AutoencoderTrainConfig(RunConfig):
    """Everything an autoencoder training run needs; saved in every checkpoint.

    Attributes:
        data: a prepared folder (``emorig prepare`` or ``emorig synth --prepared``).
        out: run folder (checkpoints, ``losses.jsonl``, ``model/`` in diffusers' layout).
        factor: downsampling factor f (4 or 8).
        latent_channels: C of the latents.
        steps, batch_size, lr: Adam optimisation.
        crop: side of the random training crops (0: whole images).
        held_out: images kept out of training for the PSNR and the scaling factor.
        kl_weight: weight of the KL term.
    """

    PATHS: ClassVar[tuple[str, ...]] = ("data",)

    data: str
    out: str
    factor: int = 8
    latent_channels: int = 4
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    crop: int = 128
    held_out: int = 64
    kl_weight: float = 1e-6
    save_every: int = 200
    log_every: int = 10
    keep: int = 2
    mixed_precision: str = "no"
    seed: int = 0
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.factor not in AUTOENCODER_SIZES:
            raise EmorigError(
                f"factor {self.factor}: choose {' or '.join(map(str, AUTOENCODER_SIZES))}"
            )
        if self.crop and self.crop % self.factor:
            raise EmorigError(f"crop {self.crop} must be divisible by the factor {self.factor}")
        if self.steps < 1 or self.batch_size < 1 or self.latent_channels < 1:
            raise EmorigError("steps, batch size and latent channels must be positive")


@dataclass(frozen=True)
class AutoencoderTrainResult:
    step: int
    losses: dict[str, float]
    model_folder: Path | None
    psnr: float | None
    seconds: float


def build_autoencoder(factor: int, latent_channels: int = 4, sample_size: int = 256):
    """A fresh diffusers ``AutoencoderKL`` of :data:`AUTOENCODER_SIZES` for ``factor``."""
    from diffusers import AutoencoderKL

    widths = AUTOENCODER_SIZES[factor]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=sample_size,
    )


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """(B,) peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = (a.clamp(0, 1) - b.clamp(0, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


class _Images:
    """The prepared set's images and (first three) condition buffers as uint8 in memory."""

    def __init__(self, folder: str, held_out: int):
        from emorig.data.dataset import BufferDataset
        from emorig.diffusion.autoencoder import buffer_images

        dataset = BufferDataset(folder, codes=False)
        n = len(dataset)
        if n <= held_out:
            raise EmorigError(f"{folder}: {n} images; need more than the {held_out} held out")
        self.size = dataset.size
        images, buffers = [], []
        for i in range(n):
            item = dataset[i]
            images.append((item["image"] * 255).round().to(torch.uint8))
            cond = torch.cat(buffer_images(item["condition"][None], dataset.condition), 1)[0]
            buffers.append((cond * 255).round().to(torch.uint8))
        self.images = torch.stack(images)
        self.buffers = torch.stack(buffers)
        self.train_count = n - held_out
        self.synthetic = bool(dataset.manifest.settings.synthetic_head)

    def held_out(self) -> Tensor:
        return self.images[self.train_count :].float() / 255

    def batch(self, batch: int, crop: int, generator: torch.Generator) -> Tensor:
        """Random crops of training images (or, a quarter of the time, of a buffer)."""
        idx = torch.randint(self.train_count, (batch,), generator=generator)
        which = torch.randint(self.buffers.shape[1] // 3, (batch,), generator=generator)
        use_buffer = torch.rand(batch, generator=generator) < BUFFER_SHARE
        side = crop or self.size
        ys = torch.randint(self.size - side + 1, (batch,), generator=generator)
        xs = torch.randint(self.size - side + 1, (batch,), generator=generator)
        out = []
        for i, w, b, y, x in zip(idx, which, use_buffer, ys, xs, strict=True):
            src = self.buffers[i, 3 * w : 3 * w + 3] if b else self.images[i]
            out.append(src[:, y : y + side, x : x + side])
        return torch.stack(out).float() / 255


class _WithLoss(torch.nn.Module):
    """The autoencoder and its training loss in one forward, so that Accelerate's wrapper
    (DDP on several processes) sees every parameter used."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        from kornia.losses import ssim_loss

        posterior = self.vae.encode(images * 2 - 1).latent_dist
        recon = (self.vae.decode(posterior.sample()).sample + 1) / 2
        # kornia's ssim_loss is (1 - SSIM) / 2.
        return {
            "l1": (recon - images).abs().mean(),
            "ssim": 0.2 * 2 * ssim_loss(recon.clamp(0, 1), images, window_size=7),
            "kl": self.kl_weight * posterior.kl().mean(),
        }


@torch.no_grad()
def evaluate_autoencoder(vae, images: Tensor, batch: int = 8) -> tuple[float, float]:
    """(mean PSNR in dB of reconstructions from the posterior mode, std of the latents)."""
    scores, latents = [], []
    device = next(vae.parameters()).device
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(device)
        z = vae.encode(x * 2 - 1).latent_dist.mode()
        latents.append(z.flatten().cpu())
        scores.append(psnr((vae.decode(z).sample + 1) / 2, x).cpu())
    return float(torch.cat(scores).mean()), float(torch.cat(latents).std())


def _export(vae, cfg: AutoencoderTrainConfig, data: _Images, step: int) -> tuple[Path, float]:
    """Write ``out/model`` in diffusers' layout (atomically: written beside, then renamed)."""
    score, std = evaluate_autoencoder(vae, data.held_out())
    vae.register_to_config(scaling_factor=round(1.0 / max(std, 1e-6), 5))
    out = Path(cfg.out)
    final = out / "model"
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=out))
    vae.save_pretrained(str(tmp), safe_serialization=True)
    info = {
        "config": cfg.to_dict(),
        "steps": step,
        "held_out_images": int(data.images.shape[0] - data.train_count),
        "held_out_psnr_db": round(score, 2),
        "latent_std": round(std, 5),
        "trained_on": "SYNTHETIC renders of the built-in head" if data.synthetic else cfg.data,
    }
    (tmp / "training.json").write_text(json.dumps(info, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final, score


def train_autoencoder(
    cfg: AutoencoderTrainConfig,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
) -> AutoencoderTrainResult:
    """Run (or resume from ``cfg.out``'s newest checkpoint) an autoencoder training run; the
    final model goes to ``cfg.out/model`` (diffusers' layout, ``training.json`` beside)."""
    from accelerate import Accelerator

    t0 = time.perf_counter()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)
    data = _Images(cfg.data, cfg.held_out)
    if cfg.crop > data.size:
        raise EmorigError(f"crop {cfg.crop} is larger than the {data.size} px images")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = build_autoencoder(cfg.factor, cfg.latent_channels, data.size)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = resume_run(out, cfg, vae, optimizer, rank=accelerator.process_index)
    start = 0 if state is None else int(state["step"])
    trainee = _WithLoss(vae, cfg.kl_weight).train()
    model, optimizer = accelerator.prepare(trainee, optimizer)
    rank = accelerator.process_index
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    last: dict[str, float] = {}
    for step in range(start, end):
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 131 + rank)
        images = data.batch(cfg.batch_size, cfg.crop, g).to(accelerator.device)
        with accelerator.autocast():
            terms = model(images)
            loss = sum(terms.values())
        optimise(accelerator, optimizer, loss, step, list(model.parameters()), 1.0)
        last = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        done = step + 1
        if accelerator.is_main_process:
            if done % cfg.log_every == 0 or done == end:
                append_log(out, {"step": done, **last})
            if progress is not None:
                progress(done, cfg.steps, last)
            if done % cfg.save_every == 0 or done == end:
                payload = {"model": vae.state_dict(), "optimizer": optimizer.state_dict()}
                save_checkpoint(out, done, payload, cfg, keep=cfg.keep)
        accelerator.wait_for_everyone()
    folder, score = None, None
    if accelerator.is_main_process and end == cfg.steps:
        vae.eval()
        folder, score = _export(vae, cfg, data, end)
    return AutoencoderTrainResult(end, last, folder, score, time.perf_counter() - t0)

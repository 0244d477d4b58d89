"""Latent vs pixel DiffusionRig at 256x256: edit latency, training step and peak memory.

Run through ``python benchmarks/bench_diffusion.py --latent`` (it calls :func:`compare`).

Models (random weights; speed does not depend on the values), both of DiffusionRig's official
width (128 base channels, two residual blocks per level, attention at 16x16, ResNet-18
latent encoder):

* pixel: ``RigConfig.official()``, the released model, denoising 3x256x256 images;
* latent f = 8: ``RigConfig.official(256, autoencoder="builtin-f8", ...)``, denoising the
  4x32x32 latents of the shipped builtin-f8 autoencoder (channel multipliers (1, 2, 4, 4)),
  condition buffers moved into channels (``condition_method`` unshuffle, the default);
* latent f = 4 likewise at 64x64 (multipliers (1, 2, 3, 4)).

Each model runs in its own child process, one after the other, so that each process's peak
resident memory is its own. Timed, through the real :class:`RigPipeline`:

* an edit, DiffusionRig's way: the photo's global latent, DDIM-20 from the fixed noise under
  the edited buffers, and for latent models the autoencoder's encode of the photo and decode
  of the result (both included);
* a training step as ``emorig train diffusion`` runs one: forward + P2 epsilon loss +
  backward + clip + Adam (fused, as train_rig makes it), batch 1 (the pixel model's step
  at 256 takes seconds on a CPU; latent models also at batch 8). Latent models twice: with
  the batch's latents made beforehand, as ``train_rig`` has them (it caches every item's
  latents on first use), and with the frozen autoencoder encoding the batch inside the step
  (a first epoch).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
import time

import torch

PARTS = ("pixel", "latent-f8", "latent-f4")


def _config(part: str):
    from emorig.diffusion.config import RigConfig

    if part == "pixel":
        return RigConfig.official()
    factor = int(part[-1])
    return RigConfig.official(
        256, autoencoder=f"builtin-f{factor}", autoencoder_factor=factor, autoencoder_channels=4
    )


def _edit_fn(pipe, batch: int):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, 256, 256, generator=g)
    cond = torch.rand(batch, 9, 256, 256, generator=g)

    def edit():
        with torch.inference_mode():
            latent = pipe.encode_latent(image)
            if pipe.latent:
                pipe.to_model(image)  # the source's latents (inversion / refinement start)
            noise = pipe.fixed_noise(batch, 0)
            return pipe.sample(noise, cond, latent, timesteps="ddim20")

    return edit


def _train_fn(pipe, batch: int, cached: bool = False):
    """A training step; ``cached``: the batch's latents made beforehand, as ``train_rig``
    has them from its second epoch on (it caches every item's latents)."""
    from emorig.diffusion.schedule import epsilon_loss
    from emorig.train.checkpoint import adam

    model = pipe.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adam(params, 1e-4)  # as train_rig makes it
    g = torch.Generator().manual_seed(1)
    image = torch.rand(batch, 3, 256, 256, generator=g)
    cond = torch.rand(batch, 9, 256, 256, generator=g)
    latents = pipe.to_model(image) if cached else None

    def step():
        _x0, t, noise, x_t = pipe.training_inputs(image, g, x0=latents)
        eps = model(x_t, t, pipe.model_condition(cond), x_start=pipe.encoder_input(image))
        loss = epsilon_loss(eps.float(), noise, t, pipe.schedule).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(loss.detach())

    return step


def _condition_times(config, runs: int) -> dict[str, float]:
    """Milliseconds to bring one image's buffers (9 x 256 x 256) to the latent side, per
    condition method (minimum of ``runs``)."""
    from emorig.diffusion.config import CONDITION_METHODS
    from emorig.diffusion.model import RigModel
    from emorig.diffusion.pipeline import RigPipeline

    cond = torch.rand(1, 9, 256, 256)
    out = {}
    for method in CONDITION_METHODS:
        tiny = config.replace(channels=32, condition_method=method, norm_groups=8)
        pipe = RigPipeline(RigModel(tiny).eval())
        with torch.inference_mode():
            prepare = functools.partial(pipe.model_condition, cond)
            out[method] = round(1000 * min(_times(prepare, runs, 1)), 2)
    return out


def _times(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_part(part: str, runs: int) -> dict:
    """Time one model (in this process) and return the figures."""
    from emorig.diffusion.model import RigModel
    from emorig.diffusion.pipeline import RigPipeline

    torch.manual_seed(0)
    config = _config(part)
    model = RigModel(config).eval()
    pipe = RigPipeline(model)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    pixel = part == "pixel"
    # the pixel model's DDIM-20 edit takes minutes on a CPU: measured once, after no warm-up
    edit = _times(_edit_fn(pipe, 1), 1 if pixel else runs, 0 if pixel else 1)
    rss_edit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train = {}
    for batch in (1,) if pixel else (1, 8):
        train[str(batch)] = _times(_train_fn(pipe, batch), 2 if pixel else runs, 1)
        if not pixel:
            train[f"{batch} cached"] = _times(_train_fn(pipe, batch, cached=True), runs, 1)
    conditions = _condition_times(config, runs) if part == "latent-f8" else {}
    return {
        "part": part,
        "condition_ms": conditions,
        "describe": config.describe(),
        "parameters_m": round(params, 1),
        "autoencoder": None if pipe.autoencoder is None else pipe.autoencoder.describe(),
        "edit_s": edit,
        "train_s": train,
        "peak_rss_edit_mb": round(rss_edit),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }


def _cell(r: dict, batch: int) -> str:
    t = r["train_s"]
    if str(batch) not in t:
        return "not run"
    if f"{batch} cached" not in t:
        return f"{min(t[str(batch)]):.2f}"
    return f"{min(t[f'{batch} cached']):.2f} / {min(t[str(batch)]):.2f}"


def compare(runs: int = 3, threads: int | None = None) -> None:
    """Run every part in a child process and print the table and the ratios."""
    results = {}
    here = os.path.dirname(os.path.abspath(__file__))
    for part in PARTS:
        cmd = [sys.executable, os.path.join(here, "latent_vs_pixel.py"), part, str(runs)]
        if threads:
            cmd.append(str(threads))
        print(f"running {part} ...", flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[part] = json.loads(out.strip().splitlines()[-1])
    pixel = results["pixel"]
    print(f"\nthreads {pixel['threads']}; load average now {os.getloadavg()[0]:.1f}")
    for part in PARTS:
        r = results[part]
        print(f"{part}: {r['parameters_m']}M parameters; {r['describe']}")
        if r["autoencoder"]:
            print(f"  autoencoder: {r['autoencoder']}")
    print(
        "\n| model | DDIM-20 edit, batch 1 (s) | train step, batch 1 (s): latents cached "
        "/ encoded in the step | train step, batch 8 (s): cached / encoded | peak RSS, edit (MB) "
        "| peak RSS, edit + training (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for part in PARTS:
        r = results[part]
        print(
            f"| {part} | {min(r['edit_s']):.2f} | {_cell(r, 1)} | {_cell(r, 8)} "
            f"| {r['peak_rss_edit_mb']} | {r['peak_rss_mb']} |"
        )
    print(
        "\ncondition buffers of one 256 px image brought to 32x32 (builtin-f8), ms: "
        + ", ".join(f"{k} {v}" for k, v in results["latent-f8"]["condition_ms"].items())
    )
    print("\nratios against the pixel model (minimum times):")
    for part in PARTS[1:]:
        r = results[part]
        edit = min(pixel["edit_s"]) / min(r["edit_s"])
        cached = min(pixel["train_s"]["1"]) / min(r["train_s"]["1 cached"])
        encoded = min(pixel["train_s"]["1"]) / min(r["train_s"]["1"])
        verdict = ""
        if part == "latent-f8":  # the target is set for f = 8
            ok = edit >= 15 and cached >= 15
            verdict = f" -> {'PASS' if ok else 'FAIL'} (target for f = 8: >= 15x, edit and step)"
        print(
            f"  {part}: edit {edit:.1f}x faster; training step (batch 1) {cached:.1f}x faster "
            f"with the latents cached as train_rig runs it ({encoded:.1f}x when the step also "
            f"encodes the image){verdict}"
        )
    path = os.environ.get("EMORIG_BENCH_JSON")
    if path:  # the raw figures, for docs
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    print(json.dumps(run_part(sys.argv[1], int(sys.argv[2]))))

"""Speed and memory of the DiffusionRig denoiser: one call, DDIM-20 edits, training steps.

Usage: ``python benchmarks/bench_diffusion.py [--quick] [--device cpu|cuda] [--threads N]``
or ``python benchmarks/bench_diffusion.py --latent [--runs N] [--threads N]``: latent
DiffusionRig-EMO (f = 8 and 4) against the pixel model at 256x256, both of the official width
(edit latency with the autoencoder included, training steps, peak memory; see
``benchmarks/latent_vs_pixel.py``).

Models (random weights, the zero-initialised output layers given small random values; speed
does not depend on the values): the ``small`` training preset at 64x64
(``model_preset("small", 64, ...)``) and DiffusionRig's official configuration at 256x256
(``RigConfig.official()``, 145M parameters with the latent encoder).

Reported, each against a baseline measured in the same run on the SAME weights:

* one denoiser call (official model, batch 1): the figure the issue puts at about 4 s per
  call upstream on this machine (idle);
* edit latency = one latent encode of the photo + DDIM-20 sampling (20 denoiser calls,
  ``ddim_sample`` with clipping), batch 1 and 8 for the small model, batch 1 for the official
  one (``--quick``: extrapolated from one call + one encode, and labelled so);
* training steps per second: forward (latent encoder + UNet) + P2-weighted epsilon loss +
  backward + gradient clipping (1.0) + Adam, as ``emorig train diffusion`` runs a step; small
  model at batch 16, official model at batch 1 (not in ``--quick``);
* peak resident memory of the process (``getrusage``) after each part, and on CUDA
  ``torch.cuda.max_memory_allocated`` per part.

Ours: ``torch.inference_mode()``, the fused ``F.scaled_dot_product_attention`` of
:class:`~emorig.diffusion.unet.AttentionBlock`, the residual blocks' GroupNorm affine and
FiLMs composed into one per-channel pass (in place without autograd), and the faster of NCHW
and channels-last memory layout (measured per model in this run, except the official model
in ``--quick`` where channels-last is used: it was 6-18 % faster in every development
measurement). Training runs as ``train_rig`` runs it: NCHW with autograd.

Upstream-style baseline: plain eager float32 NCHW with autograd available; sampling and the
single call under ``torch.no_grad()`` (as guided-diffusion's ``p_sample_loop``), with two
pieces patched in for the duration of the call, both written here from the math:
guided-diffusion's legacy QKV attention (q and k each scaled by ``d ** -1/4``, two einsums,
softmax in float32) and its residual block (GroupNorm with affine, then each FiLM as its own
full-size pass). The script checks that both paths predict the same noise.

Ours and the baseline are timed alternately (ours, baseline, baseline, ours, ...) so that
load changes on a shared machine hit both alike; wall-time medians and minima and the
process's CPU time are printed. Ratios compare the minimum wall times; the verdict (PASS when
ours is no slower for the official denoiser call) compares CPU times on the CPU, which the
scheduling noise of a shared machine barely touches and which equal the wall time of a
single-threaded run on an idle core (on CUDA: minimum wall times). The thread count
defaults to torch's unless the load average says the cores are busy: on a loaded 2-core VM
two OpenMP threads make small-tensor work up to 10x slower (threads spin at barriers while
the other core runs something else).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from emorig.data.dataset import CONDITION_NAMES
from emorig.diffusion import NoiseSchedule, RigConfig, RigModel, ddim_sample, epsilon_loss
from emorig.diffusion.config import model_preset
from emorig.diffusion.unet import AttentionBlock, DenoisingUNet, ResBlock
from timing import time_ms

#: The issue's figure for one official-size denoiser call upstream on this machine (idle).
UPSTREAM_CALL_S = 4.0
DDIM_STEPS = 20


# ---------------------------------------------------------------------------------------------
# The upstream-style baseline: legacy attention and unfused residual blocks, patched in for
# the duration of a call.


def _legacy_attention(self: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's "legacy" QKV attention, from the math: heads split before q, k, v,
    ``softmax((q d^-1/4)^T (k d^-1/4))`` in float32, then the weighted sum of v, two einsums."""
    b, c, *spatial = x.shape
    flat = x.reshape(b, c, -1)
    qkv = self.qkv(self.norm(flat))
    d = c // self.heads
    q, k, v = qkv.reshape(b * self.heads, 3 * d, -1).split(d, dim=1)
    scale = 1.0 / math.sqrt(math.sqrt(d))  # 1/sqrt(d) shared by q and k (better in fp16)
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return (flat + self.proj_out(a.reshape(b, c, -1))).reshape(b, c, *spatial)


def _plain_resblock(
    self: ResBlock,
    x: torch.Tensor,
    emb: torch.Tensor,
    latent: torch.Tensor,
    expression: torch.Tensor | None = None,
) -> torch.Tensor:
    """The residual block as guided-diffusion / DiffusionRig evaluate it: GroupNorm with its
    affine, then each FiLM ``h * (1 + s) + b`` as its own full-size pass, SiLU, dropout, conv,
    and the skip sum, every step into a new tensor."""
    if self.updown:
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self.h_upd(h))
        x = self.x_upd(x)
    else:
        h = self.in_layers(x)
    h = self.out_layers[0](h)
    films = [(self.emb_layers, emb), (self.cond_emb_layers, latent)]
    if self.expr_emb_layers is not None and expression is not None:
        films.append((self.expr_emb_layers, expression))
    for layers, code in films:
        scale, shift = layers(code).to(h.dtype)[..., None, None].chunk(2, dim=1)
        h = h * (1 + scale) + shift
    return self.skip_connection(x) + self.out_layers[1:](h)


@contextlib.contextmanager
def upstream_style() -> Iterator[None]:
    """Inside the ``with``, every AttentionBlock computes the legacy einsum attention and
    every ResBlock the unfused FiLM sequence (same weights, same math)."""
    saved = AttentionBlock.forward, ResBlock.forward
    AttentionBlock.forward = _legacy_attention  # type: ignore[method-assign]
    ResBlock.forward = _plain_resblock  # type: ignore[method-assign]
    try:
        yield
    finally:
        AttentionBlock.forward, ResBlock.forward = saved  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# Helpers.


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)  # KiB on Linux


def pick_threads(requested: int | None) -> str:
    """Set torch's thread count; return how it was chosen."""
    default = torch.get_num_threads()
    if requested:
        torch.set_num_threads(requested)
        return "--threads"
    cores = os.cpu_count() or default
    load = os.getloadavg()[0]
    idle = max(1, int(cores - load + 0.5))
    if idle < default:
        torch.set_num_threads(idle)
        return f"auto: load average {load:.1f} on {cores} cores; --threads N to override"
    return f"torch default; load average {load:.1f} on {cores} cores"


@dataclass(frozen=True)
class Timing:
    """Milliseconds: median and minimum wall time, median CPU time of this process."""

    median: float
    min: float
    cpu: float

    def text(self, per: int = 1) -> str:
        return f"{fmt(self.median / per)} (min {fmt(self.min / per)}, cpu {fmt(self.cpu / per)})"


def _timing(wall: list[float], cpu: list[float]) -> Timing:
    return Timing(statistics.median(wall), min(wall), statistics.median(cpu))


def paired(
    ours: Callable[[], object],
    base: Callable[[], object],
    rounds: int,
    device: torch.device,
    warmup: int,
) -> tuple[Timing, Timing]:
    """Timings of ``ours`` and of ``base``, called alternately (ours first in even rounds,
    the baseline first in odd ones) after ``warmup`` calls of each. CPU time (all threads of
    this process) is what a busy machine perturbs least."""
    for _ in range(warmup):
        ours()
        base()
    runs: dict[str, tuple[list[float], list[float]]] = {"o": ([], []), "b": ([], [])}
    for r in range(rounds):
        order = (("o", ours), ("b", base))
        for key, fn in order if r % 2 == 0 else order[::-1]:
            start = time.process_time()
            runs[key][0].append(time_ms(fn, 1, device, warmup=0)[0])
            runs[key][1].append((time.process_time() - start) * 1000)
    return _timing(*runs["o"]), _timing(*runs["b"])


def compare(o: Timing, b: Timing) -> str:
    """Ratio of the minimum wall times, and of the CPU times (CPU only)."""
    text = ratio(b.min, o.min)
    if o.cpu > 0 and b.cpu > 0:
        text += f" (cpu time: {b.cpu / o.cpu:.2f}x)"
    return text


def ratio(base_ms: float, ours_ms: float) -> str:
    r = base_ms / ours_ms
    return f"ours {r:.2f}x faster" if r >= 1 else f"ours {1 / r:.2f}x SLOWER"


def fmt(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def randomize_zero_layers(model: RigModel, std: float = 0.02) -> None:
    """Small random values in the zero-initialised output layers (a trained model's are not
    zero), so every layer computes something."""
    unet: DenoisingUNet = model.denoisingUNet
    layers = [m.out_layers[3] for m in unet.modules() if isinstance(m, ResBlock)]
    layers += [m.proj_out for m in unet.modules() if isinstance(m, AttentionBlock)]
    layers.append(unet.out[2])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


class Bench:
    """One model in two copies with the same weights: ours (inference layout) and the
    baseline (NCHW)."""

    def __init__(self, config: RigConfig, device: torch.device):
        torch.manual_seed(0)
        model = RigModel(config)
        randomize_zero_layers(model)
        self.config = config
        self.device = device
        self.base = model.eval().to(device)
        self.ours = copy.deepcopy(self.base)
        self.channels_last = False
        self.schedule = NoiseSchedule.linear()

    def inputs(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        s = self.config.image_size
        image = torch.rand(batch, 3, s, s, generator=g) * 2 - 1
        cond = torch.rand(batch, self.config.condition_channels, s, s, generator=g)
        noise = torch.randn(batch, 3, s, s, generator=g)
        return tuple(v.to(self.device) for v in (image, cond, noise))

    def set_layout(self, channels_last: bool) -> None:
        fmt_ = torch.channels_last if channels_last else torch.contiguous_format
        self.ours.to(memory_format=fmt_)
        self.channels_last = channels_last

    def _ours_inputs(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        fmt_ = torch.channels_last if self.channels_last else torch.contiguous_format
        return [v.contiguous(memory_format=fmt_) for v in tensors]

    # -- one denoiser call ------------------------------------------------------------------

    def call_fns(self, batch: int) -> tuple[Callable[[], object], Callable[[], object]]:
        image, cond, noise = self.inputs(batch)
        t = torch.full((batch,), 500, dtype=torch.long, device=self.device)
        with torch.no_grad():
            z = self.base.encode(image)
        x_o, c_o = self._ours_inputs(noise, cond)

        def ours() -> torch.Tensor:
            with torch.inference_mode():
                return self.ours(x_o, t, c_o, latent=z)

        def base() -> torch.Tensor:
            with torch.no_grad(), upstream_style():
                return self.base(noise, t, cond, latent=z)

        return ours, base

    def encode_fn(self, batch: int) -> Callable[[], object]:
        image, _, _ = self.inputs(batch)
        (image_o,) = self._ours_inputs(image)

        def ours() -> torch.Tensor:
            with torch.inference_mode():
                return self.ours.encode(image_o)

        return ours

    # -- an edit: encode + DDIM-20 ------------------------------------------------------------

    def edit_fns(self, batch: int) -> tuple[Callable[[], object], Callable[[], object]]:
        image, cond, noise = self.inputs(batch)
        image_o, cond_o, noise_o = self._ours_inputs(image, cond, noise)
        steps = f"ddim{DDIM_STEPS}"

        def run(model: RigModel, image, cond, noise) -> torch.Tensor:
            z = model.encode(image)
            return ddim_sample(
                lambda x, t: model(x, t, cond, latent=z), noise, self.schedule, steps
            )

        def ours() -> torch.Tensor:
            with torch.inference_mode():
                return run(self.ours, image_o, cond_o, noise_o)

        def base() -> torch.Tensor:
            with torch.no_grad(), upstream_style():
                return run(self.base, image, cond, noise)

        return ours, base

    # -- a training step ----------------------------------------------------------------------

    def train_fns(self, batch: int) -> tuple[Callable[[], object], Callable[[], object]]:
        """Ours and the baseline share the model and the optimiser (the baseline only swaps
        the attention), so both step the same weights."""
        model = self.base.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-4)
        image, cond, _ = self.inputs(batch)
        g = torch.Generator().manual_seed(2)

        def step() -> float:
            t = self.schedule.sample_timesteps(batch, generator=g).to(self.device)
            noise = torch.randn(image.shape, generator=g).to(self.device)
            x_t = self.schedule.q_sample(image, t, noise)
            eps = model(x_t, t, cond, x_start=image)
            loss = epsilon_loss(eps.float(), noise, t, self.schedule).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            return float(loss.detach())

        def base() -> float:
            with upstream_style():
                return step()

        return step, base


def train_line(batch: int, o: Timing, b: Timing) -> str:
    return (
        f"  training step (NCHW; fwd+bwd+clip+Adam, P2 loss), batch {batch}: ours "
        f"{1000 / o.median:.3g} steps/s, {o.text()}/step | baseline {1000 / b.median:.3g} "
        f"steps/s, {b.text()} | {compare(o, b)}"
    )


def memory_line(device: torch.device) -> str:
    line = f"peak RSS so far {peak_rss_mb():.0f} MB"
    if device.type == "cuda":
        line += f", CUDA max allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"
        torch.cuda.reset_peak_memory_stats(device)
    return line


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, no 256 DDIM/training")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--latent", action="store_true", help="latent vs pixel models at 256")
    parser.add_argument("--runs", type=int, default=3, help="--latent: runs per latent figure")
    args = parser.parse_args()
    if args.latent:
        from latent_vs_pixel import compare as compare_latent

        compare_latent(args.runs, args.threads)
        return
    dev = torch.device(args.device)
    quick = args.quick
    how = pick_threads(args.threads)
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads ({how})")
    print("times: median (min, cpu = median CPU time) of runs alternating ours and baseline;")
    print("ratios compare the minimum wall times. Baseline: the same weights run upstream-style")
    print("(NCHW, legacy einsum attention, unfused residual blocks, no_grad for inference).")

    # -- small 64x64 model --------------------------------------------------------------------
    small = Bench(model_preset("small", 64, tuple(CONDITION_NAMES)), dev)
    n_small = sum(p.numel() for p in small.base.parameters()) / 1e6
    print(f"\nsmall preset, 64x64 ({n_small:.1f}M parameters): {small.config.describe()}")
    layouts = {}
    for channels_last in (False, True):
        small.set_layout(channels_last)
        layouts[channels_last] = time_ms(small.call_fns(8)[0], 1 if quick else 4, dev, 1)
    small.set_layout(layouts[True][1] < layouts[False][1])
    print(
        f"  layout, ours, one call at batch 8: NCHW {fmt(layouts[False][0])} (min "
        f"{fmt(layouts[False][1])}), channels_last {fmt(layouts[True][0])} (min "
        f"{fmt(layouts[True][1])}) -> keep {'channels_last' if small.channels_last else 'NCHW'}"
    )
    ours_call, base_call = small.call_fns(2)
    diff = float((ours_call() - base_call()).abs().max())
    print(f"  ours and baseline agree: max |eps difference| {diff:.1e} (batch 2)")
    for batch in (1, 8):
        rounds = 1 if quick else (3 if batch == 1 else 2)
        o, b = paired(*small.edit_fns(batch), rounds, dev, warmup=0 if quick else 1)
        print(
            f"  edit latency (encode + DDIM-{DDIM_STEPS}), batch {batch}: ours {o.text()}"
            f"{f', {fmt(o.median / batch)}/image' if batch > 1 else ''} | baseline {b.text()}"
            f" | {compare(o, b)}"
        )
    o, b = paired(*small.train_fns(16), 1 if quick else 4, dev, warmup=1)
    print(train_line(16, o, b))
    print(f"  {memory_line(dev)}")
    del small

    # -- official 256x256 model ---------------------------------------------------------------
    official = Bench(RigConfig.official(), dev)
    n_off = sum(p.numel() for p in official.base.parameters()) / 1e6
    print(f"\nofficial configuration, 256x256 ({n_off:.1f}M parameters): ", end="")
    print(official.config.describe())
    if quick:
        official.set_layout(True)
        print("  layout, ours: channels_last (not re-measured in --quick; see the docstring)")
    else:
        for channels_last in (False, True):  # the first call of all is a warm-up
            official.set_layout(channels_last)
            warm = 0 if channels_last else 1
            layouts[channels_last] = time_ms(official.call_fns(1)[0], 1, dev, warmup=warm)
        official.set_layout(layouts[True][1] < layouts[False][1])
        print(
            f"  layout, ours, one call at batch 1: NCHW {fmt(layouts[False][1])}, channels_last "
            f"{fmt(layouts[True][1])} -> keep "
            f"{'channels_last' if official.channels_last else 'NCHW'}"
        )
    # no warm-up calls here: --quick has no time for them, and the full mode's layout
    # measurement has warmed both layouts (the baseline's convolutions are NCHW ones)
    call_o, call_b = paired(*official.call_fns(1), 1 if quick else 3, dev, warmup=0)
    print(
        f"  one denoiser call, batch 1: ours {call_o.text()} | baseline {call_b.text()} | "
        f"{compare(call_o, call_b)}"
    )
    print(
        f"    [issue: ~{UPSTREAM_CALL_S:.0f} s per call upstream on this machine when idle; "
        f"load average now {os.getloadavg()[0]:.1f}]"
    )
    enc = time_ms(official.encode_fn(1), 1 if quick else 2, dev, warmup=1)[1]
    extra_o = enc + DDIM_STEPS * call_o.min
    extra_b = enc + DDIM_STEPS * call_b.min
    label = f"EXTRAPOLATED: encode {fmt(enc)} + {DDIM_STEPS} x min call"
    if quick:
        print(
            f"  edit latency (encode + DDIM-{DDIM_STEPS}), batch 1, {label}: ours "
            f"~{fmt(extra_o)} | baseline ~{fmt(extra_b)} | {ratio(extra_b, extra_o)}"
        )
    else:
        measured = time_ms(official.edit_fns(1)[0], 1, dev, warmup=0)[0]
        print(
            f"  edit latency (encode + DDIM-{DDIM_STEPS}), batch 1: ours {fmt(measured)} "
            f"(measured once) | baseline ~{fmt(extra_b)} ({label}) | "
            f"{ratio(extra_b, measured)}"
        )
    print(f"  {memory_line(dev)}")
    if quick:
        print("  training at 256, batch 1: skipped in --quick")
    else:
        official.ours = None  # free the inference copy before training
        ours_step, base_step = official.train_fns(1)
        ours_step()  # warm-up; it also creates the Adam state both share
        o, b = paired(ours_step, base_step, 2, dev, warmup=0)
        print(train_line(1, o, b))
        print(f"  {memory_line(dev)}")

    peak = peak_rss_mb()
    print(f"\npeak RSS of this process (all of the above): {peak:.0f} MB")
    if dev.type == "cpu":  # CPU time: what the scheduling noise of a shared machine spares
        what, o_t, b_t = "median CPU time", call_o.cpu, call_b.cpu
        wall = f"; minimum wall time: {ratio(call_b.min, call_o.min)}"
    else:
        what, o_t, b_t, wall = "minimum wall time", call_o.min, call_b.min, ""
    ok = o_t <= b_t
    print(
        f"verdict: {'PASS' if ok else 'FAIL'}: one official denoiser call (256, batch 1, "
        f"{torch.get_num_threads()} threads), {what}: ours {fmt(o_t)} vs upstream-style "
        f"{fmt(b_t)}: {ratio(b_t, o_t)}{wall}"
    )


if __name__ == "__main__":
    main()

"""Wall-clock timing shared by the benchmark scripts (run them from any directory: Python puts
this folder on the path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_ms(
    fn: Callable[[], object],
    runs: int,
    device: torch.device | str | None = None,
    warmup: int = 2,
) -> tuple[float, float]:
    """Median and minimum wall time of ``fn()`` in milliseconds after ``warmup`` calls (the
    first ones build kernels). On CUDA the device is synchronised around each call. Shared VMs
    stall now and then, so both figures are worth printing."""
    dev = torch.device(device) if device is not None else None

    def sync() -> None:
        if dev is not None and dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, min(times) * 1000

"""Progress bars on stderr (tqdm: count, rate and time left), off when stderr is not a
terminal. Shared by the CLI and the demo."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["progress_bar", "stage_progress"]


def progress_bar(total: int, desc: str, unit: str):
    """A progress bar of ``total`` ``unit`` on stderr; the caller moves it with ``update(n)``
    and closes it."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=None, file=sys.stderr)


def stage_progress() -> Callable[[str, int, int], None]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage."""
    bars: dict[str, object] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = progress_bar(total, stage, "it")
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update

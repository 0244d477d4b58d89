"""What the ``emorig`` commands tell the user besides their results: notes and progress bars,
all on stderr (results go to stdout). Every command module takes these from here."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from emorig.progress import progress_bar, stage_progress

__all__ = [
    "progress",
    "progress_bar",
    "say",
    "say_building_head",
    "stage_progress",
    "step_progress",
]

#: Progress callback of the training loops: ``progress(step, total, record)``.
StepCallback = Callable[[int, int, dict[str, float]], None]


def say(message: str) -> None:
    """One note on stderr."""
    print(message, file=sys.stderr, flush=True)


def say_building_head() -> None:
    """The note before the built-in head is built, when it is not cached yet (the first run
    takes about 10 s; later runs load it from the user's cache)."""
    from emorig.flame.builtin.cache import is_cached

    if not is_cached():
        say("building the built-in synthetic head (procedural, about 10 s, once: it is cached)...")


def progress(desc: str, *, unit: str = "img", enabled: bool = True):
    """A function wrapping an iterable in a progress bar on stderr (off when stderr is not a
    terminal, or when not ``enabled``)."""
    from tqdm import tqdm

    def wrap(items: Iterable) -> Iterable:
        return tqdm(items, unit=unit, desc=desc, disable=None if enabled else True, file=sys.stderr)

    return wrap


@contextmanager
def step_progress(total: int, desc: str) -> Iterator[StepCallback]:
    """A step progress bar on stderr for the block; yields the ``progress(step, total,
    record)`` callback of the training loops that moves it (showing the record's ``loss``)."""
    bar = progress_bar(total, desc, "step")

    def update(step: int, _total: int, record: dict[str, float]) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()

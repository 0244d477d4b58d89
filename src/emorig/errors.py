"""Errors that reach users as one readable line instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class EmorigError(Exception):
    """Base class: the CLI prints ``str(error)`` and exits with status 2."""


class AssetError(EmorigError):
    """A licensed or data file is missing or not in the expected format.

    The message names the file, what is wrong and, when known, where users obtain it.
    """

    def __init__(self, source: str, problem: str, obtain: str | None = None):
        self.source = str(source)
        self.problem = problem
        self.obtain = obtain
        message = f"{self.source}: {problem}"
        if obtain:
            message += f" (obtain it from {obtain})"
        super().__init__(message)


def short_reason(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 120 characters) for one-line errors."""
    text = str(err).splitlines()[0] if str(err) else ""
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextmanager
def reading(source: str, obtain: str | None = None) -> Iterator[None]:
    """Turn the operating system's errors while reading ``source`` into one-line AssetErrors:
    not found, a folder where a file was expected, or unreadable."""
    try:
        yield
    except FileNotFoundError:
        raise AssetError(source, "not found", obtain) from None
    except IsADirectoryError:
        raise AssetError(source, "is a folder, expected a file", obtain) from None
    except OSError as err:
        raise AssetError(source, f"cannot be read ({short_reason(err)})", obtain) from None

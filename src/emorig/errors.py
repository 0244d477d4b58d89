"""Errors that reach users as one readable line instead of a traceback."""

from __future__ import annotations


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

"""The user's cache folder: things emorig can always rebuild (the built-in head, the trained
emotion predictor), kept to skip the rebuild."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

#: The environment variable that moves the cache.
CACHE_ENV = "EMORIG_CACHE"


def cache_root() -> Path:
    """``$EMORIG_CACHE``, else ``$XDG_CACHE_HOME/emorig``, else ``~/.cache/emorig``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "emorig"
    return Path.home() / ".cache" / "emorig"

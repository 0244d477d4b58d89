"""Shared pytest setup. Keep it small: helpers live in their own modules (fixtures_official)."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # lets tests in sub-folders `import fixtures_official`


_CACHE_VAR = "_EMORIG_TEST_SESSION_CACHE"
_OWNED: list[str] = []  # cache folders this process made (removed when the session ends)


def _use_a_session_cache() -> None:
    """Point EMORIG_CACHE (the built-in head's disk cache) at a temporary folder made for this
    test session, so tests never write the user's ~/.cache. xdist workers inherit the
    controller's folder (the head is then built once for the whole session)."""
    import os
    import tempfile

    folder = os.environ.get(_CACHE_VAR)
    if not (folder and os.environ.get("PYTEST_XDIST_WORKER")):
        folder = tempfile.mkdtemp(prefix="emorig-test-cache-")
        os.environ[_CACHE_VAR] = folder
        _OWNED.append(folder)
    os.environ["EMORIG_CACHE"] = folder


def pytest_unconfigure(config):
    import shutil

    for folder in _OWNED:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_configure(config):
    """Sets a per-session EMORIG_CACHE (see :func:`_use_a_session_cache`).

    Under pytest-xdist each worker already keeps a core busy: one torch thread per worker
    avoids oversubscribing the cores (two threads per worker on two cores made the suite
    markedly slower on a loaded machine)."""
    import os

    _use_a_session_cache()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)

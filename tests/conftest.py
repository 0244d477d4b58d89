"""Shared pytest setup. Keep it small: helpers live in their own modules (fixtures_official)."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # lets tests in sub-folders `import fixtures_official`


def pytest_configure(config):
    """Under pytest-xdist each worker already keeps a core busy: one torch thread per worker
    avoids oversubscribing the cores (two threads per worker on two cores made the suite
    markedly slower on a loaded machine)."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)

"""Shared pytest setup. Keep it small: helpers live in their own modules (fixtures_official)."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # lets tests in sub-folders `import fixtures_official`

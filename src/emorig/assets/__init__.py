"""Registry of the licensed files users bring, and where to find them on disk.

emorig ships none of these files. Users put them in one folder (any layout, up to
``MAX_DEPTH`` levels deep) and point to it with ``--assets DIR`` or ``$EMORIG_HOME``;
:func:`find_asset` locates a file by its official name, and :func:`check_assets` reports what
is present and whether it looks right, without loading large files.

The package has two parts: :mod:`emorig.assets.catalogue` (the entries, the folder search and
:func:`obtain_text`; it imports no reader, so :mod:`emorig.io` can use it) and
:mod:`emorig.assets.check` (the content checks, which use the :mod:`emorig.io` readers, only
when they run). Both are re-exported here.

Nothing here touches the disk at import time, and no folder is searched unless the user named
it.
"""

from __future__ import annotations

from emorig.assets.catalogue import (
    ASSETS,
    ENV_VAR,
    MAX_DEPTH,
    NO_HOME,
    AssetError,
    AssetSpec,
    asset_home,
    asset_spec,
    find_asset,
    obtain_text,
    spec_for_file,
)
from emorig.assets.check import AssetStatus, check_assets

__all__ = [
    "ASSETS",
    "ENV_VAR",
    "MAX_DEPTH",
    "NO_HOME",
    "AssetError",
    "AssetSpec",
    "AssetStatus",
    "asset_home",
    "asset_spec",
    "check_assets",
    "find_asset",
    "obtain_text",
    "spec_for_file",
]

"""Steps several ``emorig`` commands share: which head codes belong to, loading a head, and
photos -> a prepared folder (``prepare``, and ``edit`` for photo inputs). Imports no command
module."""

from __future__ import annotations

import os
from pathlib import Path

from emorig.cli.output import progress, say, say_building_head
from emorig.errors import EmorigError

__all__ = ["entries_skipped", "input_files", "load_head", "prepare_images", "resolve_head"]


def resolve_head(head: str | None, trained_for: str | None) -> str:
    """The head codes belong to: the one asked for, else the weights', else the built-in
    one; weights trained for another head are refused (FLAME 2020 weights fit every FLAME)."""
    name = head or trained_for or "builtin"
    if (
        trained_for is not None
        and name != trained_for
        and not (trained_for == "flame2020" and name.startswith("flame"))
    ):
        raise EmorigError(
            f"these weights were trained for the {trained_for} head; --head {name} does not match"
        )
    return name


def load_head(name: str, assets: str | os.PathLike[str] | None, *, announce: bool = True, **kw):
    """:func:`emorig.flame.heads.load_head`, saying first that the built-in head is being built
    (when ``announce``)."""
    from emorig.flame.heads import load_head as load

    if name == "builtin" and announce:
        say_building_head()
    return load(name, assets, **kw)


def entries_skipped(n: int) -> str:
    """``1 entry skipped`` / ``3 entries skipped``."""
    return f"{n} {'entry' if n == 1 else 'entries'} skipped"


def input_files(src: Path, exclude: Path | None, verb: str) -> tuple[list[Path], int]:
    """The photos under ``src`` (a file or a folder; ``exclude``: the output, not listed) and
    how many entries were skipped (symlink loops, dangling links, folders named like images:
    each said on stderr with its reason). Nothing to ``verb`` is an :class:`EmorigError`."""
    from emorig.faces.pipeline import scan_images

    scan = scan_images(Path(src), exclude=exclude)
    for path, reason in scan.skipped:
        say(f"skipped: {path}: {reason}")
    if not scan.files:
        more = f" ({entries_skipped(len(scan.skipped))})" if scan.skipped else ""
        raise EmorigError(f"{src}: no files to {verb}{more}")
    return scan.files, len(scan.skipped)


def prepare_images(
    src: Path,
    out: Path,
    method: str,
    config=None,
    *,
    weights: str | None = None,
    head: str | None = None,
    assets: str | None = None,
    device: str | None = None,
    photometric: bool = True,
):
    """Prepare the photos under ``src`` into ``out`` with the reconstructor ``method`` and a
    :class:`~emorig.data.prepare.PrepareConfig` (default: its defaults). Returns the manifest
    (None on processes other than the main one) and how many entries of ``src`` were skipped
    before reading (symlink loops and the like; said on stderr)."""
    from emorig.data.prepare import PrepareConfig, prepare, process_state
    from emorig.reconstruct.pipeline import Reconstructor, load_model

    config = PrepareConfig() if config is None else config
    src, out = Path(src), Path(out)
    if not src.exists():
        raise EmorigError(f"{src}: not found")
    if out.exists() and not out.is_dir():
        raise EmorigError(f"--out {out}: is a file; DATA is a folder")
    files, skipped = input_files(src, out, "prepare")
    state = process_state(device)
    device = device or state.device
    model, trained_for = load_model(method, weights, assets)
    head_name = resolve_head(head, trained_for)
    face_head = load_head(head_name, assets, announce=state.is_main_process)
    rec = Reconstructor(method, face_head, model, photometric=photometric, device=device)
    label = method if weights is None else f"{method} ({Path(weights).name})"
    desc = "preparing" if state.num_processes == 1 else f"preparing [{state.process_index}]"
    result = prepare(
        files,
        src,
        out,
        rec,
        config,
        head_name=head_name,
        label=label,
        state=state,
        progress=progress(desc, enabled=state.is_local_main_process),
    )
    return result.manifest, skipped

"""``emorig studio``: edit a face in the browser. Thin: flags -> the page of
:mod:`emorig.studio.app` over :class:`~emorig.studio.session.StudioSession` objects."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from emorig.cli import options
from emorig.cli.output import say

#: The command's name and its line in ``emorig --help``.
NAME = "studio"
HELP = "edit a face in the browser: photo in, sliders, live preview (needs emorig[studio])"

DESCRIPTION = """\
Open a local web page to edit a portrait: upload a photo (it starts with a SYNTHETIC sample of
the built-in head), see the fitted 3D face and its fit verdict, pick a face when there are
several, and move sliders for an emotion and its intensity, named expressions (smile, brow
raise, blink, ...), jaw opening, head yaw / pitch / roll and a light's direction and strength.
The preview warps the photo's own pixels (emorig edit --method warp) in a fraction of a
second; the download is the photo at its own size with its FLAME code (.npz, .json). With
--model, "refine with diffusion" runs warp+diffusion (cancellable).

The page is served on 127.0.0.1 (this machine only) and fetches nothing from the internet;
Gradio's share links and analytics are off. Needs the extra: pip install 'emorig[studio]'."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``studio`` command to ``emorig``'s sub-commands; returns its parser."""
    p = subparsers.add_parser(
        NAME, help=HELP, description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--model", help="a diffusion model folder for 'refine with diffusion'")
    options.add_assets(p)
    p.add_argument(
        "--port", type=options.int_in(1, 65535, "a port"), default=7860, help="port (7860)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--share-nothing",
        action="store_true",
        help="keep nothing on disk: uploads and downloads live in a temporary folder that is "
        "removed when the studio stops (default: downloads stay in emorig-out/studio)",
    )
    p.add_argument("--out", default="emorig-out/studio", help="where downloads are written")
    options.add_device(p)
    p.set_defaults(func=cmd_studio)
    return p


def cmd_studio(args: argparse.Namespace) -> int:
    import os

    from emorig.studio.app import build_page, gradio_module

    scratch = Path(tempfile.mkdtemp(prefix="emorig-studio-"))
    # uploads go to this run's scratch folder (Gradio reads the variable when imported)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(scratch / "uploads"))
    gradio_module()  # one clear line before anything loads when Gradio is missing
    out = scratch / "downloads" if args.share_nothing else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    new_session, refine = session_factory(args.model, args.assets, args.device or "cpu")
    page = build_page(new_session, refine=refine, out_dir=str(out))
    say(f"emorig studio: http://{args.host}:{args.port} (Ctrl+C stops it)")
    # a plain `kill` stops it as Ctrl+C does, so the scratch folder is removed either way
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        page.queue().launch(**launch_options(args.host, args.port, out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def launch_options(host: str, port: int, out: Path) -> dict:
    """Gradio's ``launch`` settings: local, no share link, system fonts, no server-side
    rendering (no Node process), downloads readable from ``out``."""
    gr = __import__("gradio")
    font = ["ui-sans-serif", "system-ui", "sans-serif"]
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "ssr_mode": False,
        "show_error": False,
        "quiet": True,
        "allowed_paths": [str(out)],
        "theme": gr.themes.Default(font=font, font_mono=["ui-monospace", "monospace"]),
        "footer_links": [],
    }


def serve_in_background(out: Path, model: str | None = None, device: str = "cpu"):
    """Start the studio on a free local port without blocking (tests, benchmarks); returns
    the Gradio page (``page.close()`` stops it) and its address."""
    import socket

    from emorig.studio.app import build_page

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    new_session, refine = session_factory(model, None, device)
    page = build_page(new_session, refine=refine, out_dir=str(out))
    page.queue().launch(prevent_thread_lock=True, **launch_options("127.0.0.1", port, out))
    return page, f"http://127.0.0.1:{port}"


def session_factory(model: str | None, assets: str | None, device: str):
    """``(new_session, refine)``: a function making a visitor's session (sharing one head,
    renderer, fitter and emotion predictor, loaded once here) and whether a model refines."""
    from emorig.cli.shared import load_head
    from emorig.edit.emotion import emotion_predictor
    from emorig.reconstruct.pipeline import Reconstructor
    from emorig.render.face import FaceRenderer
    from emorig.studio.session import StudioSession

    head = load_head("builtin", assets)
    renderer = FaceRenderer(head).to(device)
    fitter = Reconstructor("fit", head, device=device)
    predictor = emotion_predictor("codes", renderer, "builtin", None, device, say)
    refiner = None
    if model:
        from emorig.diffusion.loading import load_rig
        from emorig.edit.methods import WarpEditor
        from emorig.edit.pipeline import Editor

        rig = load_rig(model, device=device)
        refiner = WarpEditor(renderer, refiner=Editor(rig, renderer, timesteps="ddim20"))

    def new_session() -> StudioSession:
        session = StudioSession(renderer, fitter, predictor, refiner)
        session.load_sample()
        session.search_emotions()
        return session

    return new_session, refiner is not None


__all__ = [
    "add_parser",
    "cmd_studio",
    "launch_options",
    "serve_in_background",
    "session_factory",
]

"""The ``emorig studio`` page (Gradio): widgets wired to a per-visitor
:class:`~emorig.studio.session.StudioSession`.

Every handler turns a failure into one sentence in the status line (``#status``) and leaves
the page working; nothing reaches the browser as a stack trace. Nothing is fetched from the
internet: analytics are off and the theme uses the system's fonts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from emorig.errors import EmorigError
from emorig.studio.session import EXPRESSION_SLIDERS, Controls, StudioSession
from emorig.types import EMOTION_CLASSES

__all__ = ["build_page", "gradio_module"]

#: The image buttons: no "share" (it posts to a hosting service); download and full screen.
_IMAGE_BUTTONS = ["download", "fullscreen"]

#: Shown in the status line when something unexpected fails (the details go to the terminal).
_UNEXPECTED = "Something went wrong with this step; the terminal running emorig studio says what."


def gradio_module():
    """``gradio``, imported with its analytics off; one clear line when it is not installed."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise EmorigError("emorig studio needs Gradio: pip install 'emorig[studio]'") from None
    return gradio


def _sentence(err: Exception) -> str:
    if isinstance(err, EmorigError):
        text = str(err).strip()
        return text[0].upper() + text[1:] if text else _UNEXPECTED
    import traceback

    traceback.print_exc()
    return _UNEXPECTED


def _controls(values: list) -> Controls:
    emotion, intensity, *rest = values
    n = len(EXPRESSION_SLIDERS)
    expressions = dict(zip(EXPRESSION_SLIDERS, (float(v) for v in rest[:n]), strict=True))
    jaw, yaw, pitch, roll, direction, strength = (float(v) for v in rest[n:])
    return Controls(
        emotion=emotion or "none",
        intensity=float(intensity),
        expressions=expressions,
        jaw=jaw,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        light_direction=direction,
        light_strength=strength,
    )


def build_page(new_session: Callable[[], StudioSession], *, refine: bool, out_dir: str):
    """The page as a ``gradio.Blocks``; ``new_session()`` makes each visitor's session (with the
    sample face loaded); ``refine`` shows the diffusion refinement; downloads go to
    ``out_dir``."""
    gr = gradio_module()
    with gr.Blocks(title="emorig studio", analytics_enabled=False) as page:
        gr.Markdown(
            "## emorig studio\nUpload a portrait, then move the sliders: the photo's own pixels "
            "follow the fitted 3D face (warp preview). It starts with a SYNTHETIC sample of the "
            "built-in head."
        )
        state = gr.State()
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="photo", type="filepath", elem_id="upload")
                face = gr.Dropdown(["face 1"], value="face 1", label="face", visible=False,
                                   elem_id="face")  # fmt: skip
                quality = gr.Markdown("", elem_id="quality")
                overlay = _image(gr, "fitted 3D face", "overlay")
                shape = _image(gr, "3D face asked for", "shape")
            with gr.Column(scale=1):
                emotion = gr.Dropdown(["none", *EMOTION_CLASSES], value="none", label="emotion",
                                      elem_id="emotion")  # fmt: skip
                intensity = gr.Slider(0, 1, 1.0, step=0.05, label="intensity", elem_id="intensity")
                sliders = [
                    gr.Slider(-2, 2, 0.0, step=0.1, label=name.replace("_", " "), elem_id=name)
                    for name in EXPRESSION_SLIDERS
                ]
                sliders += [
                    gr.Slider(0, 25, 0.0, step=1, label="jaw open (degrees)", elem_id="jaw"),
                    gr.Slider(-20, 20, 0.0, step=1, label="yaw (degrees)", elem_id="yaw"),
                    gr.Slider(-20, 20, 0.0, step=1, label="pitch (degrees)", elem_id="pitch"),
                    gr.Slider(-20, 20, 0.0, step=1, label="roll (degrees)", elem_id="roll"),
                    gr.Slider(
                        0,
                        360,
                        180,
                        step=15,
                        label="light from (degrees: 0 right, 90 above, 180 left)",
                        elem_id="light_direction",
                    ),
                    gr.Slider(
                        0, 1, 0.0, step=0.05, label="light strength", elem_id="light_strength"
                    ),
                ]
                reset = gr.Button("reset", elem_id="reset")
            with gr.Column(scale=1):
                preview = _image(gr, "preview", "preview")
                timing = gr.Markdown("", elem_id="timing")
                with gr.Row():
                    download = gr.Button("make the download", elem_id="make_download")
                    refine_button = gr.Button("refine with diffusion", visible=refine,
                                              elem_id="refine")  # fmt: skip
                    cancel = gr.Button("cancel", visible=refine, elem_id="cancel")
                files = gr.File(
                    label="download (the photo's own size, PNG + code)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="download",
                )
        controls = [emotion, intensity, *sliders]
        views = [overlay, shape, preview, quality, timing, status, face]
        _wire(gr, page, state, new_session, upload, face, controls, views, reset, download,
              refine_button, cancel, files, out_dir)  # fmt: skip
    return page


def _image(gr, label: str, elem_id: str):
    """An image the page shows (not an input), without Gradio's "share" button, sent as JPEG
    (encoded in about 1 ms at 512², against 27 ms for Gradio's default WebP: it is redrawn on
    every slider move; the download is a PNG)."""
    return gr.Image(
        label=label, type="numpy", interactive=False, buttons=_IMAGE_BUTTONS, elem_id=elem_id,
        format="jpeg",
    )  # fmt: skip


def _views(gr, session: StudioSession, controls: Controls, note: str = "") -> list:
    """Values of the views after a (re)load: overlay, shape, preview, quality, timing, status,
    face picker."""
    image, seconds = session.preview(controls)
    names = [f"face {i + 1}" for i in range(len(session.faces))]
    picker = gr.update(choices=names, value=names[session.index], visible=len(names) > 1)
    return [
        session.overlay(),
        session.shape_view(controls),
        image,
        session.quality_text(),
        f"preview {seconds:.2f} s",
        note,
        picker,
    ]


def _wire(gr, page, state, new_session, upload, face, controls, views, reset, download,
          refine_button, cancel, files, out_dir) -> None:  # fmt: skip
    """Connect the widgets to the session."""

    def start():
        session = new_session()
        return [session, *_views(gr, session, Controls())]

    def load(session, path, *values, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """Fit the uploaded photo; the upload box is emptied again for the next photo."""
        if path is None:
            return [session, None, *[gr.update() for _ in views]]
        try:
            session.load_file(path, progress=lambda f, d: progress(f, desc=d))
            session.search_emotions(progress=lambda f, d: progress(f, desc=d))
            return [session, None, *_views(gr, session, _controls(list(values)))]
        except Exception as err:  # one sentence on the page; the page keeps working
            kept = [gr.update() for _ in views[:-2]]
            return [session, None, *kept, _sentence(err), gr.update()]

    def pick(session, name, *values):
        try:
            session.pick(int(str(name).split()[-1]) - 1)
            session.search_emotions()
            return _views(gr, session, _controls(list(values)))
        except Exception as err:
            return [*[gr.update() for _ in views[:-2]], _sentence(err), gr.update()]

    def change(session, *values):
        try:
            c = _controls(list(values))
            image, seconds = session.preview(c)
            return image, session.shape_view(c), f"preview {seconds:.2f} s", ""
        except Exception as err:
            return gr.update(), gr.update(), gr.update(), _sentence(err)

    def make_files(session, *values, refine=False):
        try:
            paths = session.export(_controls(list(values)), tempfile.mkdtemp(dir=out_dir),
                                   refine=refine)  # fmt: skip
            return [str(p) for p in paths], ""
        except Exception as err:
            return gr.update(), _sentence(err)

    def refined(session, *values, progress=gr.Progress()):  # noqa: B008
        progress(0.1, desc="refining with the diffusion model")
        return make_files(session, *values, refine=True)

    shape, preview, timing, status = views[1], views[2], views[4], views[5]
    page.load(start, None, [state, *views])
    upload.upload(load, [state, upload, *controls], [state, upload, *views])
    face.change(pick, [state, face, *controls], views)
    for c in controls:
        c.change(change, [state, *controls], [preview, shape, timing, status],
                 trigger_mode="always_last")  # fmt: skip
    defaults = [c.value for c in controls]
    reset.click(lambda: defaults, None, controls)
    download.click(make_files, [state, *controls], [files, status])
    job = refine_button.click(refined, [state, *controls], [files, status])
    cancel.click(None, None, None, cancels=[job])

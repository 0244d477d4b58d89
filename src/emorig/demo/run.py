"""``emorig demo``: the whole system on the embedded default, with nothing downloaded.

1. Synthesise data from the built-in head: a personal album (one identity), target faces
   showing labelled emotions, and a multi-view set (one identity and expression from K yaws).
2. Obtain the stage-1 model: the small 64 px model this project trained on synthetic faces
   (shipped in ``emorig/weights/demo``, reproduced by ``scripts/train_demo_weights.sh``), or
   train one here (``--train-stage1 STEPS``).
3. Personalise it on the album (stage 2: denoiser only, latent encoder frozen).
4. Edit: expression, pose and light transferred from target faces (DDIM-20 from the source's
   inversion), and emotion edits with an intensity sweep.
5. Evaluate (re-reconstructing edits with the shipped built-in-head encoder) and write a
   self-contained HTML report.

Everything here is synthetic: the built-in head is procedural, and numbers measured on it say
nothing about real faces.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emorig.edit.modes import edit_mode, scored_mode_names
from emorig.weights import STAGE1_NAME, packaged_weights

__all__ = ["DEMO_SIZE", "DemoConfig", "DemoResult", "encoder_reconstruct", "run_demo"]

#: Image size of the demo's diffusion model.
DEMO_SIZE = 64


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run (``fast`` shrinks every stage for a ~2 minute run).

    Attributes:
        out: output folder (report, data, models, edits).
        fast: the quick version.
        seed: seeds the data and the sampling noise.
        stage1: a stage-1 model folder to start from (default: the shipped one).
        train_stage1: train the stage-1 model here for this many steps instead.
        device: torch device.
    """

    out: str = "emorig-out/demo"
    fast: bool = False
    seed: int = 0
    stage1: str | None = None
    train_stage1: int = 0
    device: str = "cpu"

    @property
    def album_size(self) -> int:
        return 8 if self.fast else 20

    @property
    def personalise_steps(self) -> int:
        return 10 if self.fast else 150

    @property
    def edit_sources(self) -> int:
        return 2 if self.fast else 4

    @property
    def emotions(self) -> tuple[str, ...]:
        if self.fast:
            return ("happy", "surprise", "sad")
        from emorig.types import EMOTION_CLASSES

        return EMOTION_CLASSES

    @property
    def eval_pairs(self) -> int:
        return 3 if self.fast else 8

    @property
    def multiview(self) -> tuple[int, int]:
        """(groups, views)."""
        return (2, 3) if self.fast else (2, 5)

    @property
    def predictor_steps(self) -> int:
        return 60 if self.fast else 200

    @property
    def sweep(self) -> int:
        return 3 if self.fast else 5

    @property
    def timesteps(self) -> str:
        """DDIM respacing of every sampling (DiffusionRig: ddim20)."""
        return "ddim10" if self.fast else "ddim20"

    @property
    def emotion_steps(self) -> int:
        """Optimisation steps of each emotion search."""
        return 60 if self.fast else 150


@dataclass(frozen=True)
class DemoResult:
    report: Path
    seconds: float
    timings: dict[str, float]


Say = Callable[[str], None]


class _Clock:
    def __init__(self, say: Say):
        self.say, self.t0, self.marks = say, time.perf_counter(), {}

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                clock.say(f"[{time.perf_counter() - clock.t0:6.1f} s] {name}...")
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                clock.marks[name] = time.perf_counter() - self.start

        return _Stage()


def _synth(cfg: DemoConfig, out: Path, renderer) -> dict[str, Path]:
    from emorig.synth.datasets import SynthDatasetConfig, write_dataset
    from emorig.synth.prepared import write_prepared

    groups, views = cfg.multiview
    sets = {
        "album": SynthDatasetConfig(
            mode="album", count=cfg.album_size, album_size=cfg.album_size, size=DEMO_SIZE,
            seed=cfg.seed + 11,
        ),
        "targets": SynthDatasetConfig(
            mode="random", count=max(cfg.edit_sources, cfg.eval_pairs), size=DEMO_SIZE,
            seed=cfg.seed + 12, emotion_fraction=1.0,
        ),
        "multiview": SynthDatasetConfig(
            mode="multiview", count=groups * views, views=views, size=DEMO_SIZE,
            seed=cfg.seed + 13,
        ),
    }  # fmt: skip
    folders = {}
    for name, config in sets.items():
        folder = out / "data" / name
        write_dataset(config.validate(), folder, renderer)
        folders[name] = write_prepared(config, folder / "prepared", renderer).root
    return folders


def _stage1(cfg: DemoConfig, out: Path, say: Say) -> Path:
    if cfg.stage1 is not None:
        return Path(cfg.stage1)
    if not cfg.train_stage1:
        return packaged_weights(STAGE1_NAME)
    from emorig.synth.datasets import SynthDatasetConfig
    from emorig.synth.prepared import write_prepared
    from emorig.train.diffusion import RigTrainConfig, train_rig

    data = out / "data" / "stage1"
    write_prepared(
        SynthDatasetConfig(mode="random", count=2000, size=DEMO_SIZE, seed=100,
                           emotion_fraction=1.0),
        data,
    )  # fmt: skip
    result = train_rig(
        RigTrainConfig(
            stage="stage1", data=str(data), out=str(out / "stage1"), model="small",
            steps=cfg.train_stage1, batch_size=8, lr=5e-4, ema=0.995, save_every=100,
            sample_every=max(100, cfg.train_stage1 // 5), cpu=cfg.device == "cpu",
        ),
        progress=_step_printer(say, "stage 1"),
    )  # fmt: skip
    assert result.model_folder is not None
    return result.model_folder


def _step_printer(say: Say, what: str, every: int = 50):
    """A training ``progress(step, total, record)`` callback: a step bar (rate, time left) on
    a terminal, and a line with the loss every ``every`` steps for logs."""
    from emorig.progress import progress_bar

    bars: list = []

    def progress(step: int, total: int, record: dict[str, float]) -> None:
        if not bars:
            bars.append(progress_bar(total, what, "step"))
        bars[0].n = step
        bars[0].refresh()
        if step % every == 0 or step == total:
            say(f"  {what}: step {step}/{total}, loss {record['loss']:.4f}")
        if step == total:
            bars[0].close()

    return progress


def _personalise(cfg: DemoConfig, out: Path, stage1: Path, album: Path, say: Say):
    from emorig.train.diffusion import RigTrainConfig, train_rig

    steps = cfg.personalise_steps
    result = train_rig(
        RigTrainConfig(
            stage="stage2", data=str(album), out=str(out / "stage2"), init=str(stage1),
            steps=steps, batch_size=4, lr=5e-5, save_every=steps, sample_every=steps,
            sample_steps=cfg.timesteps, log_every=1, seed=cfg.seed, cpu=cfg.device == "cpu",
        ),
        progress=_step_printer(say, "stage 2", every=max(10, steps // 5)),
    )  # fmt: skip
    assert result.model_folder is not None
    return result


def encoder_reconstruct(device):
    """Re-reconstruction of aligned 64 px images with the shipped built-in-head encoder."""
    from emorig.evaluate.protocol import encoder_reconstructor
    from emorig.reconstruct.encoders import encoder_spec

    network, _ = encoder_spec("builtin").load(None, None)
    return encoder_reconstructor(network.to(device))


def run_demo(cfg: DemoConfig, say: Say = print) -> DemoResult:
    """Run every stage; returns the report's path and per-stage seconds."""
    from emorig.data.dataset import BufferDataset
    from emorig.diffusion.pretrained import load_pretrained
    from emorig.edit.emotion import cached_code_predictor
    from emorig.edit.pipeline import Editor
    from emorig.flame.heads import load_head
    from emorig.render.face import FaceRenderer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock(say)
    with clock.stage("loading the built-in synthetic head (built once, then cached)"):
        renderer = FaceRenderer(load_head("builtin")).to(cfg.device)
    with clock.stage("synthesising an album, target faces and a multi-view set"):
        data = _synth(cfg, out, renderer)
    with clock.stage("obtaining the stage-1 model"):
        stage1 = _stage1(cfg, out, say)
    with clock.stage(f"personalising on the album ({cfg.personalise_steps} steps)"):
        stage2 = _personalise(cfg, out, stage1, data["album"], say)
    model = load_pretrained(stage2.model_folder, device=cfg.device)
    album, targets = BufferDataset(data["album"]), BufferDataset(data["targets"])
    editor = Editor(
        model,
        renderer,
        mean_shape=album.mean_shape,
        timesteps=cfg.timesteps,
        seed=cfg.seed,
        invert=True,
        invert_iterations=1 if cfg.fast else 2,
    )
    with clock.stage("editing expression, pose and light"):
        grids = _edit_faces(cfg, editor, album, targets, out / "edits")
    with clock.stage("training the code-space emotion predictor (cached after the first run)"):
        settings = {
            "steps": cfg.predictor_steps,
            "batch_size": 128,
            "seed": cfg.seed,
            "hidden": 256,
        }
        predictor = cached_code_predictor(renderer, "builtin", settings=settings, say=say)
    with clock.stage("editing emotions"):
        emotion_rows = _edit_emotions(cfg, editor, album, predictor)
    with clock.stage("evaluating"):
        evaluation = _evaluate(cfg, editor, renderer, data, predictor)
    with clock.stage("writing the report"):
        report = _report(cfg, out, data, stage2, grids, emotion_rows, evaluation, clock)
    total = time.perf_counter() - clock.t0
    say(f"[{total:6.1f} s] done: {report}")
    return DemoResult(report, total, dict(clock.marks))


def _edit_faces(cfg: DemoConfig, editor, album, targets, edit_dir: Path) -> list[Path]:
    """Every scored mode on the first album faces, each with its target; the grids."""
    from emorig.edit.pipeline import items_from_dataset, write_edits
    from emorig.progress import progress_bar

    grids = []
    bar = progress_bar(cfg.edit_sources, "editing", "face")
    for i in range(cfg.edit_sources):
        source = items_from_dataset(album, [i])
        target = items_from_dataset(targets, [i])
        result = editor.edit(source, target, scored_mode_names())
        grids += write_edits(result, source, target, edit_dir, with_reconstruction=True)
        bar.update(1)
    bar.close()
    return grids


def _edit_emotions(cfg: DemoConfig, editor, album, predictor):
    """Each emotion at full intensity, then a sweep of 'happy', on the first album face."""
    from emorig.edit.emotion import EmotionTarget
    from emorig.edit.pipeline import items_from_dataset
    from emorig.progress import progress_bar

    source = items_from_dataset(album, [0])
    base = editor.source_code(source)
    levels = [k / (cfg.sweep - 1) for k in range(cfg.sweep)]
    requests = [EmotionTarget(e, 1.0) for e in cfg.emotions]
    requests += [EmotionTarget("happy", s) for s in levels]
    bar = progress_bar(len(requests), "searching expressions", "emotion")
    codes = []
    search = edit_mode("emotion").search
    for target in requests:
        codes.append(search(base, predictor, target, cfg.emotion_steps))
        bar.update(1)
    bar.close()
    n = len(cfg.emotions)
    emotion_images = editor.sample_codes(source, codes[:n])
    sweep_images = editor.sample_codes(source, codes[n:])
    return source, codes[:n], emotion_images, levels, sweep_images


def _evaluate(cfg, editor, renderer, data, predictor) -> Any:
    from emorig.data.dataset import BufferDataset
    from emorig.evaluate.protocol import evaluate_model
    from emorig.progress import stage_progress

    return evaluate_model(
        editor.model,
        BufferDataset(data["album"]),
        editor=editor,
        emotion_steps=cfg.emotion_steps,
        renderer=renderer,
        reconstruct=encoder_reconstruct(cfg.device),
        modes=scored_mode_names(),
        emotions=cfg.emotions,
        multiview=BufferDataset(data["multiview"]),
        pairs=cfg.eval_pairs,
        seed=cfg.seed,
        progress=stage_progress(),
        steps=cfg.timesteps,
        invert=True,
        identity="shape",
        predictor=predictor,
    )


def _report(cfg, out, data, stage2, grids, emotion_rows, evaluation, clock) -> Path:
    from emorig.evaluate.report import (
        ImageGrid,
        ImageRow,
        LinePlot,
        Section,
        Series,
        Table,
        write_report,
    )
    from emorig.io.images import read_image

    def picture(path: Path):
        return read_image(path).pixels

    sheets = [
        ImageRow(name, [picture(out / "data" / name / "contact_sheet.png")])
        for name in ("album", "targets", "multiview")
    ]
    losses = [json.loads(x) for x in (out / "stage2" / "losses.jsonl").read_text().splitlines()]
    samples = sorted((out / "stage2" / "samples").glob("*.png"))
    source, _, emotion_images, levels, sweep_images = emotion_rows
    emotions = ImageGrid(
        [ImageRow("edit", [source.image[0], *[img[0] for img in emotion_images]])],
        columns=["source", *cfg.emotions],
        caption="the source's expression and jaw searched for each emotion (code-space "
        "predictor, preset start), then sampled; identity, pose and light untouched",
    )
    sweep = ImageGrid(
        [ImageRow("happy", [img[0] for img in sweep_images])],
        columns=[f"{s:.2f}" for s in levels],
        caption="intensity sweep",
    )
    timings = Table(
        ["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in clock.marks.items()], caption=""
    )
    sections = [
        Section(
            "Data",
            text="Renders of emorig's procedurally generated head: a personal album (one "
            f"identity, {cfg.album_size} images), target faces showing labelled emotions and "
            "a multi-view set. Not photos of people.",
            grids=[ImageGrid(sheets, columns=["contact sheet"])],
            synthetic=True,
        ),
        Section(
            "Personalisation (stage 2)",
            text=f"{cfg.personalise_steps} steps on the album from the shipped stage-1 model "
            "(denoiser only; latent encoder frozen). The loss is the noise-prediction error at "
            "timesteps drawn at random each step, so over so few steps it moves with the "
            "timesteps drawn rather than trending down. The grid shows, per album face, the "
            "Lambertian buffer, the training image and a DDIM sample started from pure noise: "
            "the small model trained on a CPU does not make clean faces from noise alone (the "
            "colour noise), which is why the edits below start from each face's DDIM "
            "inversion instead.",
            plots=[
                LinePlot(
                    [Series("loss", [r["step"] for r in losses], [r["loss"] for r in losses])],
                    title="training loss",
                    x_label="step",
                    y_label="loss",
                )
            ],
            grids=[ImageGrid([ImageRow(p.stem, [picture(p)]) for p in samples[-1:]])],
            synthetic=True,
        ),
        Section(
            "Edits: expression, pose, light",
            text="Each grid: source | target | edits (and the unedited sample after DDIM "
            "inversion); below, the buffers each image was conditioned on.",
            grids=[ImageGrid([ImageRow(g.stem, [picture(g)]) for g in grids])],
            synthetic=True,
        ),
        Section("Edits: emotions", grids=[emotions, sweep], synthetic=True),
        *evaluation.sections(),
        Section("Run", text=f"demo settings: {config_json(cfg)}", tables=[timings]),
    ]
    return write_report(
        sections,
        out,
        title="emorig demo",
        synthetic=True,
        subtitle="DiffusionRig-EMO on the built-in synthetic head",
    )


def config_json(cfg: DemoConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))

"""Bad flags and bad inputs end in one clear line and a non-zero exit, never a traceback.

Every case runs ``emorig.cli.main.main`` in-process: an exception escaping it (other than
argparse's ``SystemExit``), a "Traceback" in the output, or a zero exit where the command
failed, fails the test.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from emorig.cli import options
from emorig.cli.main import build_parser, main
from emorig.emotion.base import EmotionRecognizer
from emorig.faces.pipeline import scan_images
from emorig.types import EmotionOutput


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)``: its exit status (argparse's SystemExit included), stdout, stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def usage_error(argv: list[str], capsys, *needles: str) -> str:
    """Run ``argv``; it must exit 2 with one ``error:`` line holding every needle."""
    code, _, err = run(argv, capsys)
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


# --- the parsers: every numeric flag has a converter ----------------------------------------


def all_parsers(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


PARSERS = dict(all_parsers(build_parser()))
WITH_DEVICE = [
    path for path, p in PARSERS.items() if any("--device" in a.option_strings for a in p._actions)
]


def _id(value) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def test_no_flag_takes_a_bare_int_or_float():
    bare = [
        f"{' '.join(path)} {action.option_strings or action.dest}"
        for path, parser in PARSERS.items()
        for action in parser._actions
        if action.type in (int, float)
    ]
    assert bare == []


def test_every_command_with_photos_or_a_device_is_covered():
    names = {" ".join(path) for path in WITH_DEVICE}
    wanted = {"render", "align", "reconstruct", "prepare", "emotion predict", "synth", "edit"}
    assert wanted | {"evaluate", "demo", "ablation"} <= names


# --- 2. sizes ----------------------------------------------------------------------------------

SIZE_CASES = [
    (["render", "--size", "0"], "--size"),
    (["render", "--size", "-3"], "--size"),
    (["render", "--size", "100000"], "--size"),
    (["render", "--size", "abc"], "--size"),
    (["align", "IN", "OUT", "--size", "0"], "--size"),
    (["align", "IN", "OUT", "--size", "100000"], "--size"),
    (["prepare", "IN", "--model", "fit", "--out", "D", "--size", "-3"], "--size"),
    (["prepare", "IN", "--model", "fit", "--out", "D", "--size", "100000"], "--size"),
    (["synth", "--out", "D", "--size", "0"], "--size"),
    (["synth", "--out", "D", "--size", "100000"], "--size"),
    (
        ["train", "emotion", "--data", "synthetic", "--out", "D", "--input-size", "0"],
        "--input-size",
    ),
    (["evaluate", "--fid-size", "100000"], "--fid-size"),
]


@pytest.mark.parametrize(("argv", "flag"), SIZE_CASES, ids=_id)
def test_sizes_are_bounded(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = usage_error(argv, capsys, f"argument {flag}")
    if argv[-1] not in ("abc",):
        assert "from 16 to 4096" in line


def test_the_renderer_refuses_nonsense_sizes():
    from emorig.render.renderer import MeshRenderer

    faces = torch.tensor([[0, 1, 2]])
    renderer = MeshRenderer(faces, torch.zeros(3, 2), faces)
    vertices = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    texture, light = torch.ones(1, 3, 4, 4), torch.zeros(1, 9, 3)
    for size in (0, -3, 100000, (0, 5)):
        with pytest.raises(ValueError, match="image size"):
            renderer(vertices, vertices, texture, light, size)
    assert renderer(vertices, vertices, texture, light, 8).rendered.shape[-2:] == (8, 8)


# --- 3. devices ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", WITH_DEVICE, ids=" ".join)
def test_cuda_without_cuda_is_a_usage_error(command, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    usage_error(
        [*command, "--device", "cuda"],
        capsys,
        "argument --device",
        "CUDA is not available on this machine (torch",
    )


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "meta"])
def test_unknown_devices_are_usage_errors(name, capsys):
    usage_error(["render", "--device", name], capsys, "argument --device")


def test_a_missing_cuda_index_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    usage_error(["align", "IN", "OUT", "--device", "cuda:3"], capsys, "1 CUDA device")
    assert options.device("cuda:0") == "cuda:0"


# --- 4. numeric flags ------------------------------------------------------------------------

DIFFUSION = ["train", "diffusion", "--stage", "stage1", "--data", "D", "--out", "O"]
RECON = ["train", "reconstruct", "--stage", "coarse", "--out", "O"]
EMOTION = ["train", "emotion", "--data", "synthetic", "--out", "O"]
EDIT = ["edit", "--model", "M", "--source", "S", "--out", "O"]
NUMERIC_CASES = [
    (DIFFUSION, "--lr", ["-1", "0", "nan", "inf", "x"]),
    (DIFFUSION, "--steps", ["0", "-5", "1.5"]),
    (DIFFUSION, "--batch-size", ["0", "-1"]),
    (DIFFUSION, "--grad-clip", ["-1"]),
    (DIFFUSION, "--ema", ["1", "-0.1", "2"]),
    (DIFFUSION, "--p2-gamma", ["-1"]),
    (DIFFUSION, "--expression-dim", ["-1", "100000"]),
    (DIFFUSION, "--emotion-weight", ["-1", "nan"]),
    (DIFFUSION, "--save-every", ["0"]),
    (DIFFUSION, "--sample-every", ["-1"]),
    (DIFFUSION, "--seed", ["-1", "99999999999"]),
    (RECON, "--steps", ["0"]),
    (RECON, "--batch-size", ["0"]),
    (RECON, "--group-size", ["0"]),
    (RECON, "--lr", ["-1"]),
    (RECON, "--width", ["0", "100000"]),
    (EMOTION, "--steps", ["-1"]),
    (EMOTION, "--batch-size", ["0"]),
    (EMOTION, "--lr", ["0"]),
    (EMOTION, "--val-fraction", ["0", "1", "-0.5"]),
    (EMOTION, "--val-every", ["0"]),
    (EMOTION, "--patience", ["-1"]),
    (EMOTION, "--synthetic-count", ["0"]),
    (["prepare"], "--shard-size", ["0"]),
    (["prepare"], "--batch-size", ["-2"]),
    (["synth", "--out", "O"], "--count", ["0", "-1"]),
    (["synth", "--out", "O"], "--views", ["0"]),
    (["synth", "--out", "O"], "--max-yaw", ["-10", "500", "nan"]),
    (["synth", "--out", "O"], "--album-size", ["0"]),
    (["synth", "--out", "O"], "--supersample", ["0", "100"]),
    (["synth", "--out", "O"], "--batch-size", ["0"]),
    (EDIT, "--target-index", ["-1"]),
    (EDIT, "--indices", ["-1"]),
    (EDIT, "--batch-size", ["0"]),
    (EDIT, "--intensity", ["-0.5", "3", "nan"]),
    (EDIT, "--valence", ["2"]),
    (EDIT, "--arousal", ["-2"]),
    (EDIT, "--sweep", ["0", "1000"]),
    (EDIT, "--steps", ["ddim0", "ddimx", "fast", "0,5", "ddim999"]),
    (["evaluate"], "--pairs", ["0"]),
    (["evaluate"], "--multiview-groups", ["0"]),
    (["evaluate"], "--batch-size", ["0"]),
    (["evaluate"], "--steps", ["ddim-3"]),
    (["evaluate", "now"], "--icp", ["-1", "100000"]),
    (["demo"], "--train-stage1", ["-1"]),
    (["demo"], "--seed", ["-3"]),
    (["ablation"], "--steps", ["0"]),
    (["ablation"], "--pairs", ["0"]),
    (["align", "IN", "OUT"], "--min-score", ["nan", "x"]),
    (["render"], "--camera", ["a,b,c", "1,2", "0,0,0", "-7,0,0"]),
    (["render"], "--buffers", [",", "", "rendered,nope"]),
]


@pytest.mark.parametrize(
    ("argv", "flag", "values"),
    NUMERIC_CASES,
    ids=_id,
)
def test_numeric_flags_are_checked(argv, flag, values, capsys):
    for value in values:
        usage_error([*argv, f"{flag}={value}"], capsys, f"argument {flag}")


def test_a_negative_loss_weight_is_one_error_line(capsys, tmp_path):
    code, _, err = run([*RECON[:-1], tmp_path / "run", "--weight", "identity=-1"], capsys)
    assert code == 2
    assert "--weight identity=-1: expected NAME=NUMBER" in err


def test_the_converters_accept_what_they_should():
    assert options.positive_float("1e-4") == 1e-4
    assert options.image_size("256") == 256
    assert options.float_in(0, 1, hi_open=True)("0") == 0.0
    assert options.camera("7,0,0.005") == (7.0, 0.0, 0.005)
    assert options.ddim_steps("ddim20") == "ddim20"
    assert options.ddim_steps("10,15,20") == "10,15,20"
    assert options.device("cpu") == "cpu"


# --- 5. --out naming an existing file ------------------------------------------------------


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    return path


OUT_CASES = [
    ["render", "--out", "{file}"],
    ["render", "--out", "{file}/sub"],
    [*DIFFUSION[:-1], "{file}"],
    [*RECON[:-1], "{file}"],
    [*EMOTION[:-1], "{file}"],
    ["align", "{photos}", "{file}"],
    ["reconstruct", "{photos}", "--model", "fit", "--out", "{file}"],
    ["prepare", "{photos}", "--model", "fit", "--out", "{file}"],
    ["synth", "--out", "{file}"],
    [*EDIT[:-1], "{file}"],
    ["evaluate", "--out", "{file}"],
    ["demo", "--out", "{file}"],
    ["ablation", "--out", "{file}"],
    ["emotion", "predict", "{photos}", "--recognizer", "fer", "--out", "{dir}"],
    ["emotion", "evaluate", "--predictions", "p.csv", "--labels", "l.csv", "--out", "{dir}"],
    ["evaluate", "now", "--scan", "s", "--scan-landmarks", "s", "--mesh", "m",
     "--mesh-landmarks", "m", "--json", "{dir}"],
]  # fmt: skip


@pytest.mark.parametrize("argv", OUT_CASES, ids=lambda v: " ".join(v[:2]))
def test_outputs_that_are_files_or_folders_are_refused_once(argv, a_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32)).save(photos / "a.png")
    values = {"file": a_file, "dir": tmp_path, "photos": photos}
    line = usage_error([a.format(**values) for a in argv], capsys)
    assert "is a file" in line or "is a folder" in line


# --- 1 and 6. folders: symlink loops, dangling links, folders named like images, empty ------


def make_links(folder):
    """A symlink loop, a dangling symlink and a folder named like an image (with a photo
    inside that must not be read)."""
    os.symlink("loop.jpg", folder / "loop.jpg")
    os.symlink("nowhere.png", folder / "dangling.png")
    (folder / "folder.jpg").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "folder.jpg" / "inside.png")


needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32",
                                    reason="symlinks")  # fmt: skip


@needs_symlinks
def test_scan_images_skips_bad_entries_with_their_reason(tmp_path):
    make_links(tmp_path)
    (tmp_path / "ok.png").write_bytes(b"")
    scan = scan_images(tmp_path)
    assert scan.files == [tmp_path / "ok.png"]
    reasons = {p.name: r for p, r in scan.skipped}
    assert reasons == {
        "loop.jpg": "a symlink loop",
        "dangling.png": "a dangling symlink to nowhere.png",
        "folder.jpg": "a folder named like an image (not searched)",
    }
    with pytest.raises(Exception, match="symlink loop"):
        scan_images(tmp_path / "loop.jpg")
    assert scan_images(tmp_path / "folder.jpg").files == [tmp_path / "folder.jpg" / "inside.png"]


class StubRecognizer(EmotionRecognizer):
    name = "stub"
    feature_dim = 3
    input_size = 224

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, images):
        m = images.mean((2, 3))
        logits = torch.log_softmax(self.gain * torch.cat([m, m, -m[:, :2]], 1), 1)
        return EmotionOutput(logits, torch.tanh(m[:, :2]), m)


@pytest.fixture
def stub_recognizer(monkeypatch):
    fake = types.ModuleType("emorig.emotion.recognizers")
    fake.load_recognizer = lambda spec, device=None: StubRecognizer()
    monkeypatch.setitem(sys.modules, "emorig.emotion.recognizers", fake)


def photo_commands(src, tmp_path) -> dict[str, list]:
    return {
        "align": ["align", src, tmp_path / "aligned"],
        "emotion predict": ["emotion", "predict", src, "--recognizer", "stub", "--out",
                            tmp_path / "emotions.csv"],
        "reconstruct": ["reconstruct", src, "--model", "fit", "--out", tmp_path / "rec"],
        "prepare": ["prepare", src, "--model", "fit", "--out", tmp_path / "data"],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["align", "emotion predict", "reconstruct", "prepare"])
def test_an_empty_folder_is_nothing_to_do(command, tmp_path, capsys, stub_recognizer):
    src = tmp_path / "empty"
    src.mkdir()
    code, _out, err = run(photo_commands(src, tmp_path)[command], capsys)
    assert code == 2
    assert "no files to" in err
    assert err.count("error:") == 1


@needs_symlinks
@pytest.mark.parametrize("command", ["align", "emotion predict", "reconstruct", "prepare"])
def test_only_bad_links_is_nothing_to_do(command, tmp_path, capsys, stub_recognizer):
    src = tmp_path / "links"
    src.mkdir()
    make_links(src)
    code, _, err = run(photo_commands(src, tmp_path)[command], capsys)
    assert code == 2
    assert "no files to" in err
    assert "3 entries skipped" in err
    assert "skipped: " in err
    assert "loop.jpg: a symlink loop" in err


# --- image contents ----------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def write_bad_photos(folder, *, links: bool = True) -> list[str]:
    """Every awkward photo the readers must survive; returns the names of the files read."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (folder / "truncated.png").write_bytes(_encoded(noise, "PNG")[:300])
    (folder / "truncated.jpg").write_bytes(_encoded(noise, "JPEG")[:300])
    (folder / "text.jpg").write_text("this is not a photo")
    (folder / "empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1), (200, 100, 50)).save(folder / "pixel.png")
    Image.new("RGB", (20000, 20), (90, 90, 90)).save(folder / "strip.png")
    Image.new("CMYK", (48, 48), (10, 50, 90, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((48, 48), 40000, np.uint16)).save(folder / "deep16.png")
    Image.new("RGBA", (48, 48), (255, 0, 0, 128)).save(folder / "alpha.png")
    frames = [Image.new("RGB", (48, 48), (c, c, c)) for c in (0, 120, 240)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    noise.save(folder / "photo.webp")
    noise.save(folder / "gesicht_ü_日本.png")
    names = [p.name for p in folder.iterdir()]
    if links and hasattr(os, "symlink"):
        make_links(folder)
    return names


def check_every_file_reported(names, out: str, err: str) -> None:
    text = out + err
    for name in names:
        assert name in text, name


def test_bad_photos_through_align(tmp_path, capsys):
    src = tmp_path / "photos"
    names = write_bad_photos(src)
    try:
        from skimage import data

        Image.fromarray(data.astronaut()).save(src / "astronaut.png")
    except ImportError:
        pass
    code, out, err = run(["align", src, tmp_path / "out", "--size", "64"], capsys)
    assert code == 1  # some files are unreadable or faceless: not a success
    check_every_file_reported(
        [n for n in names if n.startswith(("trunc", "text", "empty"))], out, err
    )
    assert "unreadable: " in err
    assert "no face: " in err
    assert "(3 entries skipped)" in out
    assert "symlink loop" in err
    assert "dangling symlink" in err
    assert "named like an image" in err
    assert "inside.png" not in out + err
    if (src / "astronaut.png").exists():
        assert (tmp_path / "out" / "astronaut.png").is_file()


def test_bad_photos_through_emotion_predict(tmp_path, capsys, stub_recognizer):
    src = tmp_path / "photos"
    names = write_bad_photos(src)
    out_file = src / "emotions.csv"  # inside IMAGES: not read as a photo
    code, _out, err = run(
        ["emotion", "predict", src, "--recognizer", "stub", "--out", out_file], capsys
    )
    assert code == 1
    rows = out_file.read_text(encoding="utf-8")
    for name in names:
        assert name in rows, name
    assert "emotions.csv" not in rows
    assert "symlink loop" in err
    assert "dangling symlink" in err


def test_bad_photos_through_reconstruct_fit(tmp_path, capsys):
    src = tmp_path / "photos"
    write_bad_photos(src)
    code, out, err = run(["reconstruct", src, "--model", "fit", "--out", tmp_path / "r"], capsys)
    assert code == 1
    assert "3 skipped" in out
    assert "symlink loop" in err
    assert "truncated.png" in err
    assert "text.jpg" in err


@needs_symlinks
def test_bad_links_through_prepare(tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "text.jpg").write_text("this is not a photo")
    make_links(src)
    code, out, err = run(["prepare", src, "--model", "fit", "--out", tmp_path / "data"], capsys)
    assert code == 1
    assert "skipped: " in err
    assert "loop.jpg: a symlink loop" in err
    assert "text.jpg" in err
    assert "0 items (1 skipped)" in out


# --- damaged training inputs through `emorig train diffusion` -------------------------------


@pytest.fixture
def tiny_album(tmp_path):
    from emorig.synth.datasets import SynthDatasetConfig
    from emorig.synth.prepared import write_prepared

    folder = tmp_path / "album"
    write_prepared(
        SynthDatasetConfig(mode="album", count=4, size=32, album_size=4, supersample=1), folder
    )
    return folder


def _train(data, out, steps):
    return ["train", "diffusion", "--stage", "stage1", "--data", data, "--out", out,
            "--model", "tiny", "--steps", steps, "--batch-size", 2, "--save-every", 1,
            "--sample-every", 1000, "--cpu"]  # fmt: skip


def test_a_truncated_shard_is_one_line_naming_it(tiny_album, tmp_path, capsys):
    shard = sorted(tiny_album.glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    code, _, err = run(_train(tiny_album, tmp_path / "run", 2), capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert shard.name in errors[0]
    assert "prepare" in errors[0] or "synth" in errors[0]


def test_a_damaged_newest_checkpoint_is_a_note_and_the_run_goes_on(tiny_album, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(_train(tiny_album, out, 2), capsys)[0] == 0
    newest = out / "checkpoint-00000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    code, _, err = run(_train(tiny_album, out, 3), capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("emorig: note:")]
    assert len(notes) == 1
    assert "checkpoint-00000002.pt cannot be read" in notes[0]
    assert "checkpoint-00000001.pt" in notes[0]
    assert (out / "model" / "model.safetensors").is_file()

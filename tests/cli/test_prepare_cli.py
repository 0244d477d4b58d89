"""``emorig prepare`` flags and handler (through its own add_parser; main.py wires it)."""

import argparse
import json

import pytest
import torch
from PIL import Image

from emorig.cli.prepare import add_parser
from emorig.data.dataset import MANIFEST_NAME, MEAN_SHAPE_NAME, BufferDataset
from emorig.errors import EmorigError
from emorig.flame.builtin import EXPRESSION_COMPONENTS, builtin_head
from emorig.io.images import to_uint8
from emorig.render.face import FaceRenderer
from emorig.render.showcase import parse_face_spec, specs_to_code


def run(argv):
    parser = argparse.ArgumentParser(prog="emorig")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    r = FaceRenderer(builtin_head())
    names = [n for n, _ in EXPRESSION_COMPONENTS]
    code = specs_to_code([parse_face_spec("smile=0.5+yaw=10", names)], r, camera=(8.0, 0.0, 0.01))
    with torch.no_grad():
        out = r(code, 256)
    img = (
        out.buffers.rendered + (1 - out.buffers.mask) * torch.tensor([0.3, 0.5, 0.4])[:, None, None]
    )
    Image.fromarray(to_uint8(img[0])).save(root / "face.png")
    (root / "notes.txt").write_text("not a photo")
    return root


def test_prepare_then_merge_with_the_mean_shape(photos, tmp_path, capsys):
    data = tmp_path / "data"
    argv = [str(photos), "--model", "fit", "--no-photometric", "--out", str(data)]
    assert run([*argv, "--size", "128", "--buffer-dtype", "float32"]) == 1
    captured = capsys.readouterr()
    assert "skipped: notes.txt: unreadable" in captured.err
    assert "1 items (1 skipped) in 1 shards, 128px, fit on builtin" in captured.out
    manifest = json.loads((data / MANIFEST_NAME).read_text())
    assert manifest["buffer_dtype"] == "float32"
    assert manifest["items"][0]["source"] == "face.png"
    ds = BufferDataset(data)
    assert ds[0]["condition"].dtype == torch.float32
    assert float(ds[0]["mask"].mean()) > 0.2

    # everything is done: a rerun reconstructs nothing and reports the same
    assert run([*argv, "--size", "128", "--buffer-dtype", "float32"]) == 1
    assert "1 items (1 skipped)" in capsys.readouterr().out
    # the merge step alone, applying the album mean shape
    assert run(["--merge", str(data), "--mean-shape"]) == 1
    captured = capsys.readouterr()
    assert "re-rendered 1 shards" in captured.err
    assert "album mean shape" in captured.out
    assert (data / MEAN_SHAPE_NAME).exists()
    # other settings are refused instead of mixed in
    with pytest.raises(EmorigError, match="--size 128"):
        run([*argv, "--size", "256"])


def test_usage_errors_are_one_line(tmp_path):
    with pytest.raises(EmorigError, match="needs --model"):
        run([str(tmp_path), "--out", str(tmp_path / "d")])
    with pytest.raises(EmorigError, match="takes no IMAGES"):
        run([str(tmp_path), "--merge", str(tmp_path)])
    with pytest.raises(EmorigError, match="no shards to merge"):
        run(["--merge", str(tmp_path)])
    with pytest.raises(EmorigError, match="not found"):
        run([str(tmp_path / "nowhere"), "--model", "fit", "--out", str(tmp_path / "d")])


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--model",
        "--out",
        "--merge",
        "--size",
        "--mean-shape",
        "--album",
        "--shard-size",
    ):
        assert flag in out


@pytest.fixture(scope="module")
def album(tmp_path_factory):
    """Three renders of one identity with different expressions and yaws."""
    root = tmp_path_factory.mktemp("album")
    r = FaceRenderer(builtin_head())
    names = [n for n, _ in EXPRESSION_COMPONENTS]
    for k, spec in enumerate(("smile=0.5+yaw=10", "frown=0.6+yaw=-15", "sad=0.4")):
        code = specs_to_code([parse_face_spec(spec, names)], r, camera=(8.0, 0.0, 0.01))
        shape = torch.zeros_like(code.shape)
        shape[0, :3] = torch.tensor([0.8, -0.6, 0.5])
        with torch.no_grad():
            out = r(code.replace(shape=shape), 256)
        grey = torch.tensor([0.3, 0.5, 0.4])[:, None, None]
        img = out.buffers.rendered + (1 - out.buffers.mask) * grey
        Image.fromarray(to_uint8(img[0])).save(root / f"face{k}.png")
    return root


def test_album_fits_one_identity_for_stage_two(album, tmp_path, capsys):
    from safetensors.torch import load_file

    from emorig.data.prepare import ALBUM_SHAPE

    data = tmp_path / "data"
    argv = [str(album), "--model", "fit", "--no-photometric", "--out", str(data), "--album"]
    assert run([*argv, "--size", "128"]) == 0
    captured = capsys.readouterr()
    assert "3 items (0 skipped)" in captured.out
    assert "album mean shape (fitted jointly)" in captured.out
    fitted = load_file(str(data / ALBUM_SHAPE))["shape"]
    assert torch.equal(
        load_file(str(data / MEAN_SHAPE_NAME))["shape"].reshape(fitted.shape), fitted
    )
    ds = BufferDataset(data)
    assert all(torch.allclose(ds[i]["code"]["shape"], fitted[0]) for i in range(len(ds)))


def test_album_refuses_a_network_in_one_line(tmp_path):
    with pytest.raises(EmorigError, match=r"--album fits one identity .* needs --model fit"):
        run([str(tmp_path), "--model", "deca", "--out", str(tmp_path / "d"), "--album"])
    with pytest.raises(EmorigError, match="--album fits while preparing"):
        run(["--merge", str(tmp_path), "--album"])

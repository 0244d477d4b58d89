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
    for flag in ("--model", "--out", "--merge", "--size", "--mean-shape", "--shard-size"):
        assert flag in out

"""The edit evaluation protocol on built-in-head data with a tiny trained model: a complete,
finite run with an untrained encoder; an oracle reconstructor proves the bookkeeping (zero
errors, full emotion accuracy, zero multi-view spread that grows with noise); the CLI."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emorig.data.dataset import BufferDataset
from emorig.edit.emotion import CodePredictor, CodeSpacePredictor
from emorig.edit.pipeline import Editor, items_from_dataset
from emorig.errors import EmorigError
from emorig.evaluate.protocol import (
    encoder_reconstructor,
    evaluate_model,
    multiview_groups_of,
    pick_pairs,
)
from emorig.evaluate.report import EMPTY_MARK, write_report
from emorig.flame.builtin import builtin_head
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.render.face import FaceRenderer
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from emorig.types import EMOTION_CLASSES, EmotionOutput, FaceCode
from rig_helpers import album, tiny_model


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    views = root / "multiview"
    faces = album(root / "album", 8)
    write_prepared(
        SynthDatasetConfig(mode="multiview", count=6, views=3, size=32, supersample=1), views
    )
    model = tiny_model(faces, root / "run", steps=20, batch_size=8, lr=2e-3, sample_steps="ddim3")
    return faces, views, model


@pytest.fixture(scope="module")
def model(data):
    from emorig.diffusion.pretrained import load_pretrained

    return load_pretrained(data[2])


def _numbers(value, path=""):
    """Every (path, number) in a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


class LinearEmotion(CodePredictor):
    """Class c is the largest of the first 8 expression coefficients (easy to reach)."""

    def forward(self, code: FaceCode) -> EmotionOutput:
        x = code.expression[:, : len(EMOTION_CLASSES)] * 4
        return EmotionOutput(F.log_softmax(x, -1), None, x)


class TinyFeatures(nn.Module):
    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _key(image: torch.Tensor) -> bytes:
    return image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


class RecordingEditor(Editor):
    """Remembers the code behind every image it samples (for the oracle reconstructor)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.truth: dict[bytes, FaceCode] = {}

    def remember(self, images, code):
        for i in range(images.shape[0]):
            self.truth[_key(images[i])] = code[i : i + 1].detach().to("cpu")

    def edit(self, source, target, modes):
        result = super().edit(source, target, modes)
        for m in modes:
            self.remember(result.images[m], result.codes[m])
        self.remember(result.reconstruction, self.source_code(source))
        return result

    def sample_codes(self, source, codes):
        images = super().sample_codes(source, codes)
        for im, c in zip(images, codes, strict=True):
            self.remember(im, c)
        return images


def _oracle(editor, datasets, noise=0.0, seed=0):
    """Returns the requested code of each image exactly (plus Gaussian expression noise)."""
    for ds in datasets:
        for i in range(len(ds)):
            item = items_from_dataset(ds, [i])
            editor.remember(item.image, item.code)
    g = torch.Generator().manual_seed(seed)

    def reconstruct(images, crops):
        assert crops.shape == (images.shape[0], 3, 3)
        codes = [editor.truth[_key(im)] for im in images]
        code = FaceCode(**{k: torch.cat([getattr(c, k) for c in codes]) for k in ("shape",
                        "expression", "global_pose", "jaw_pose", "camera", "light", "albedo",
                        "neck_pose", "eye_pose")})  # fmt: skip
        if noise:
            e = code.expression
            code = code.replace(expression=e + noise * torch.randn(e.shape, generator=g))
        return code

    return reconstruct


def test_identity_is_measured_against_the_encoders_reading_of_the_source(data, model, renderer):
    """An encoder that reads every identity wrongly, but the same way for the same face, keeps
    identity 1 (the source row is the source against itself); the code errors show the error."""
    album, _, _ = data
    ds = BufferDataset(album)
    editor = RecordingEditor(model, renderer, timesteps="ddim2", seed=1)
    exact = _oracle(editor, [ds])
    n = ds.code([0]).shape.shape[1]
    mix = torch.randn(n, n, generator=torch.Generator().manual_seed(3))

    def misread(images, crops):
        code = exact(images, crops)
        return code.replace(shape=code.shape @ mix)

    ev = evaluate_model(
        model, ds, renderer=renderer, reconstruct=misread, editor=editor,
        modes=("exp", "light"), pairs=3, batch_size=3,
    )  # fmt: skip
    for row in ev.errors:
        assert row.identity.cosine >= 0.9, row.name
    assert ev.row("source").identity.cosine == pytest.approx(1)
    assert ev.row("source").identity.distance == pytest.approx(0, abs=1e-6)


def test_pairs_are_deterministic_and_never_self_pairs():
    a = pick_pairs(5, 12, seed=3)
    assert a == pick_pairs(5, 12, seed=3)
    assert a != pick_pairs(5, 12, seed=4)
    assert len(a) == 12
    assert all(s != t and 0 <= s < 5 and 0 <= t < 5 for s, t in a)
    assert sorted(s for s, _ in a[:5]) == list(range(5))  # every item is a source first
    with pytest.raises(EmorigError, match="at least 2"):
        pick_pairs(1, 3, 0)


def test_bad_settings_are_refused():
    with pytest.raises(EmorigError, match="modes"):
        evaluate_model(None, None, renderer=None, reconstruct=None, modes=("smile",))
    with pytest.raises(EmorigError, match="identity"):
        evaluate_model(None, None, renderer=None, reconstruct=None, identity="face")
    with pytest.raises(EmorigError, match="predictor"):
        evaluate_model(None, None, renderer=None, reconstruct=None, emotions=["happy"])
    with pytest.raises(EmorigError, match="unknown emotion"):
        evaluate_model(None, None, renderer=None, reconstruct=None, emotions=["bored"])


def test_end_to_end_with_an_untrained_encoder(data, model, renderer, tmp_path):
    album, views, _ = data
    from emorig.emotion.emodeca import EmoDecaConfig, EmoDecaMLP

    torch.manual_seed(0)
    encoder = DecaModel(DecaConfig(backbone="resnet18", backbone_width=8, head_hidden=32)).eval()
    mlp = EmoDecaMLP(EmoDecaConfig(use_identity=False, n_expression=50, hidden=32, layers=2))
    calls = []
    ev = evaluate_model(
        model,
        album,
        renderer=renderer,
        reconstruct=encoder_reconstructor(encoder),
        emotions=["happy", "sad"],
        predictor=CodeSpacePredictor(mlp),  # presets start the search
        multiview=views,
        pairs=3,
        steps="ddim2",
        batch_size=2,  # two chunks: accumulation over batches
        fid_network=TinyFeatures(),
        emotion_steps=5,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert ev.synthetic
    assert [r.name for r in ev.errors] == ["exp", "pose", "light", "unedited", "source"]
    assert [r.primary for r in ev.errors[:3]] == ["expression_l2", "pose_deg", "light_rmse"]
    assert len(ev.pairs) == 3
    assert all(len(r.per_item) == 3 for r in ev.errors)
    assert ev.emotion.n == 6
    assert set(ev.emotion.per_class) == {"happy", "sad"}
    assert (ev.multiview.n_groups, ev.multiview.n_views) == (2, 3)
    assert ev.fid is not None
    assert ("edits", 3, 3) in calls
    assert ("emotion", 6, 6) in calls
    assert ("multiview", 2, 2) in calls
    assert {e.part for e in ev.examples} == {"edits", "emotion", "multiview"}
    edits = [e for e in ev.examples if e.part == "edits"]
    assert edits[0].columns == ("source", "target", "exp", "pose", "light", "unedited")
    assert edits[0].images[0].shape == (32, 32, 3)

    record = ev.to_json()
    json.dumps(record, allow_nan=False)
    numbers = dict(_numbers(record))
    assert all(math.isfinite(v) for v in numbers.values())
    for row in record["errors"]:
        for key in ("expression_l2", "pose_deg", "jaw_deg", "light_rmse"):
            assert row[key] is not None
        assert row["identity"]["cosine"] is not None
    assert record["emotion"]["accuracy"] is not None
    assert record["multiview"]["rows"][0]["mean"] is not None

    page = write_report(ev, tmp_path, title="tiny").read_text()
    for section in ev.sections():
        assert f">{section.title}<" in page
    assert EMPTY_MARK not in page
    assert "SYNTHETIC DATA" in page


def test_an_oracle_reconstructor_scores_perfectly(data, model, renderer):
    album, _, _ = data
    ds = BufferDataset(album)
    editor = RecordingEditor(model, renderer, timesteps="ddim2", seed=1)
    ev = evaluate_model(
        model,
        ds,
        renderer=renderer,
        reconstruct=_oracle(editor, [ds]),
        editor=editor,
        modes=("exp", "pose", "light", "latent"),
        emotions=list(EMOTION_CLASSES),
        predictor=LinearEmotion(),
        pairs=3,
        batch_size=3,
    )
    for row in ev.errors:
        e = row.errors
        assert e.expression_l2 == pytest.approx(0, abs=1e-6), row.name
        assert e.pose_deg == pytest.approx(0, abs=1e-3), row.name
        assert e.jaw_deg == pytest.approx(0, abs=1e-3), row.name
        assert e.light_rmse == pytest.approx(0, abs=1e-6), row.name
        assert row.identity.cosine == pytest.approx(1)
        assert row.identity.distance == pytest.approx(0, abs=1e-6)
        assert max(row.per_item) == pytest.approx(0, abs=1e-3)
    assert ev.emotion.requested_accuracy == 1
    assert ev.emotion.accuracy == 1
    assert ev.emotion.n == 3 * len(EMOTION_CLASSES)
    confusion = torch.tensor(ev.emotion.confusion)
    assert torch.equal(confusion, torch.diag(confusion.diagonal()))
    # the requested codes really carry the targets' parameters
    src, tgt = ev.pairs[0]
    names = [r.source for r in ds.manifest.items]
    assert src != tgt
    assert names.index(src) != names.index(tgt)


def test_multiview_consistency_is_zero_for_an_oracle_and_grows_with_noise(data, model, renderer):
    album, views, _ = data
    ds, mv = BufferDataset(album), BufferDataset(views)
    assert {g: len(v) for g, v in multiview_groups_of(mv).items()} == {0: 3, 1: 3}
    spreads = []
    for noise in (0.0, 0.05, 0.5):
        editor = RecordingEditor(model, renderer, timesteps="ddim2")
        ev = evaluate_model(
            model,
            ds,
            renderer=renderer,
            reconstruct=_oracle(editor, [ds, mv], noise=noise),
            editor=editor,
            modes=("exp",),
            multiview=mv,
            pairs=2,
        )
        spreads.append(ev.multiview.row("edited").mean)
        if noise == 0:
            assert ev.multiview.row("unedited").mean == pytest.approx(0, abs=1e-6)
            assert ev.multiview.row("source").mean == pytest.approx(0, abs=1e-6)
            assert ev.multiview.expression_l2 == pytest.approx(0, abs=1e-6)
    assert spreads[0] == pytest.approx(0, abs=1e-6)
    assert 0 < spreads[1] < spreads[2]
    bad = BufferDataset(album)
    for ref in bad.manifest.items:
        ref.info.pop("group", None)
    with pytest.raises(EmorigError, match="group/view"):
        multiview_groups_of(bad)


class ColourIdentity:
    """A stand-in face backend: one face per image, its mean colour as the descriptor."""

    name = "colour"

    class detector:
        @staticmethod
        def detect(image):
            from emorig.faces.backends import Detection

            return [Detection((0.0, 0.0, float(image.shape[1]), float(image.shape[0])), 1.0)]

    class landmarks68:
        @staticmethod
        def landmarks(image, detection):
            return np.zeros((68, 2))

    class embedder:
        dim = 3

        @staticmethod
        def embed(image, landmarks):
            return image.reshape(-1, 3).mean(0) / 255


def test_dlib_identity_compares_source_photos_with_edits(data, model, renderer):
    album, _, _ = data
    ds = BufferDataset(album)
    editor = RecordingEditor(model, renderer, timesteps="ddim2")
    ev = evaluate_model(
        model,
        ds,
        renderer=renderer,
        reconstruct=_oracle(editor, [ds]),
        editor=editor,
        modes=("light",),
        pairs=2,
        identity="dlib",
        identity_backend=ColourIdentity(),
    )
    light, unedited, source = ev.errors
    assert unedited.identity.n == 2
    assert light.identity.method == "dlib"
    assert light.identity.n == 2
    assert -1 <= light.identity.cosine <= 1
    assert 0 <= light.identity.same_rate <= 1
    assert math.isnan(source.identity.cosine)  # the photo against itself is not measured
    record = ev.to_json()
    json.dumps(record, allow_nan=False)
    assert record["errors"][2]["identity"]["cosine"] is None
    assert "same person" in write_report(ev, Path(album).parent / "dlib").read_text()


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(argv):
    from emorig.cli.evaluate import add_parser

    parser = argparse.ArgumentParser(prog="emorig")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_evaluate_writes_a_report(data, tmp_path, capsys):
    from emorig.reconstruct.checkpoints import save_pretrained

    album, views, folder = data
    with pytest.raises(EmorigError, match=r"--reconstructor-weights .*not found"):
        _cli(["evaluate", "--model", str(folder), "--data", str(album), "--out", str(tmp_path),
              "--reconstructor-weights", str(tmp_path / "missing")])  # fmt: skip
    with pytest.raises(EmorigError, match="--model"):
        _cli(["evaluate", "--data", str(album), "--out", str(tmp_path)])
    with pytest.raises(EmorigError, match="--emotions"):
        _cli(["evaluate", "--model", "m", "--data", str(album), "--out", "o", "--emotions", "x"])
    torch.manual_seed(0)
    encoder = DecaModel(DecaConfig(backbone="resnet18", backbone_width=8, head_hidden=32))
    save_pretrained(encoder.eval(), tmp_path / "encoder")
    out = tmp_path / "report"
    code = _cli(
        ["evaluate", "--model", str(folder), "--data", str(album), "--out", str(out),
         "--reconstructor-weights", str(tmp_path / "encoder"), "--pairs", "2", "--modes",
         "exp,pose", "--steps", "ddim2", "--multiview", str(views)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "expression_l2" in printed
    assert "SYNTHETIC" in printed
    record = json.loads((out / "report.json").read_text())
    assert record["synthetic"] is True
    settings = record["evaluations"][0]["settings"]
    assert settings["identity"] == "shape"
    assert settings["reconstructor_weights"] == str(tmp_path / "encoder")
    assert "Multi-view consistency" in (out / "report.html").read_text()


def test_cli_now_prints_scan_to_mesh_error(tmp_path, capsys):
    from emorig.io.obj import write_obj

    # a bumpy 6x6 grid mesh; the scan is its vertices under a similarity transform
    u, v = np.meshgrid(np.linspace(0, 1, 6), np.linspace(0, 1, 6))
    verts = np.stack([u.ravel(), v.ravel(), 0.1 * np.sin(3 * u.ravel() + 2 * v.ravel())], 1)
    faces = []
    for r in range(5):
        for c in range(5):
            a = r * 6 + c
            faces += [(a, a + 1, a + 6), (a + 1, a + 7, a + 6)]
    faces = np.array(faces)
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])  # fmt: skip
    scan = 2.0 * verts @ rot.T + np.array([1.0, -2.0, 0.5])
    write_obj(tmp_path / "mesh.obj", verts.astype(np.float32), faces)
    write_obj(tmp_path / "scan.obj", scan.astype(np.float32), faces)
    picks = [0, 5, 14, 21, 30, 35, 17]
    np.savetxt(tmp_path / "mesh.txt", verts[picks])
    np.savetxt(tmp_path / "scan.txt", scan[picks])
    code = _cli(
        ["evaluate", "now", "--scan", str(tmp_path / "scan.obj"), "--scan-landmarks",
         str(tmp_path / "scan.txt"), "--mesh", str(tmp_path / "mesh.obj"), "--mesh-landmarks",
         str(tmp_path / "mesh.txt"), "--json", str(tmp_path / "now.json")]
    )  # fmt: skip
    assert code == 0
    lines = dict(line.split() for line in capsys.readouterr().out.strip().splitlines())
    assert set(lines) == {"mean", "median", "std"}
    assert float(lines["mean"]) < 1e-4
    assert json.loads((tmp_path / "now.json").read_text())["scale"] == pytest.approx(2.0, rel=1e-4)
    np.savetxt(tmp_path / "bad.txt", verts[:5])
    with pytest.raises(EmorigError, match="7 lines"):
        _cli(
            ["evaluate", "now", "--scan", str(tmp_path / "scan.obj"), "--scan-landmarks",
             str(tmp_path / "bad.txt"), "--mesh", str(tmp_path / "mesh.obj"),
             "--mesh-landmarks", str(tmp_path / "mesh.txt")]
        )  # fmt: skip


def test_methods_are_compared_on_the_same_pairs(data, model, renderer, tmp_path):
    from emorig.edit.methods import WarpEditor

    album, _, _ = data
    torch.manual_seed(0)
    encoder = DecaModel(DecaConfig(backbone="resnet18", backbone_width=8, head_hidden=32)).eval()
    refiner = Editor(model, renderer, timesteps="ddim2")
    methods = {
        "warp": WarpEditor(renderer),
        "warp+diffusion": WarpEditor(renderer, refiner=refiner, strength=0.5),
    }
    ev = evaluate_model(
        model, album, renderer=renderer, reconstruct=encoder_reconstructor(encoder),
        modes=("exp", "light"), pairs=3, steps="ddim2", batch_size=3, methods=methods,
    )  # fmt: skip
    names = [r.name for r in ev.errors]
    for method in methods:
        for mode in ("exp", "light"):
            assert f"{mode} · {method}" in names
    rows = {r.name: r for r in ev.errors}
    assert all(rows[f"exp · {m}"].errors.n == 3 for m in methods)
    assert rows["exp · warp"].kind == "edit"
    assert rows["exp · warp"].primary == "expression_l2"
    assert ev.settings["methods"] == ["warp", "warp+diffusion"]
    # the three methods edit differently: their re-reconstructed codes differ
    values = {rows[n].errors.expression_l2 for n in ("exp", "exp · warp", "exp · warp+diffusion")}
    assert len(values) == 3
    html = write_report(ev, tmp_path / "report", title="methods")
    assert "exp · warp+diffusion" in html.read_text()

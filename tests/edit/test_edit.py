"""Editing: DiffusionRig's transfer semantics, re-centring, and edit smoke runs on built-in-head
data with a tiny trained model (library and CLI), with and without DDIM inversion."""

import dataclasses
import json

import pytest
import torch

from emorig.data.dataset import BufferDataset
from emorig.edit.pipeline import Editor, items_from_dataset
from emorig.edit.transfer import ffhq_centre, parse_modes, recentre, transfer, with_mean_shape
from emorig.errors import EmorigError
from emorig.flame.builtin import builtin_head
from emorig.render.face import FaceRenderer
from emorig.synth.datasets import SynthDatasetConfig
from emorig.types import FaceCode
from rig_helpers import album, tiny_model


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


def _codes(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    code = FaceCode.neutral(batch_size=b)
    return code.replace(
        shape=torch.randn(code.shape.shape, generator=g),
        expression=torch.randn(code.expression.shape, generator=g),
        global_pose=0.2 * torch.randn(b, 3, generator=g),
        jaw_pose=0.1 * torch.rand(b, 3, generator=g),
        light=torch.randn(b, 9, 3, generator=g),
    )


def test_transfer_takes_exactly_the_mode_parameters():
    src, tgt = _codes(2, 0), _codes(1, 1)
    exp = transfer(src, tgt, "exp")
    assert torch.equal(exp.expression, tgt.expression.expand(2, -1))
    assert torch.equal(exp.jaw_pose, tgt.jaw_pose.expand(2, -1))  # expression includes the jaw
    assert torch.equal(exp.global_pose, src.global_pose)
    assert torch.equal(exp.shape, src.shape)
    pose = transfer(src, tgt, "pose")
    assert torch.equal(pose.global_pose, tgt.global_pose.expand(2, -1))
    assert torch.equal(pose.jaw_pose, src.jaw_pose)
    light = transfer(src, tgt, "light")
    assert torch.equal(light.light, tgt.light.expand(2, -1, -1))
    assert torch.equal(light.expression, src.expression)
    assert transfer(src, tgt, "latent") is src
    with pytest.raises(EmorigError, match="choose"):
        parse_modes("exp,smile")
    assert parse_modes(" exp , pose") == ("exp", "pose")


def test_mean_shape_replaces_identity_only():
    src = _codes(3)
    mean = torch.randn(1, src.shape.shape[1])
    out = with_mean_shape(src, mean)
    assert torch.equal(out.shape, mean.expand(3, -1))
    assert torch.equal(out.expression, src.expression)
    with pytest.raises(EmorigError, match="coefficients"):
        with_mean_shape(src, torch.zeros(1, 7))


def test_ffhq_centre_formula():
    lm = torch.zeros(1, 68, 2)
    lm[0, 36:42] = torch.tensor([0.0, 0.0])
    lm[0, 42:48] = torch.tensor([2.0, 0.0])
    lm[0, 48] = torch.tensor([0.0, 10.0])
    lm[0, 54] = torch.tensor([2.0, 10.0])
    assert torch.allclose(ffhq_centre(lm), torch.tensor([[1.0, 1.0]]))


def test_recentre_keeps_the_face_in_place_under_pose_edits(renderer):
    src = _codes(1, 3).replace(global_pose=torch.zeros(1, 3))
    turned = src.replace(global_pose=torch.tensor([[0.0, 0.6, 0.0]]))
    fixed = recentre(renderer, src, turned)

    def centre(code):
        return ffhq_centre(renderer(code, 64).landmarks)

    before = (centre(turned) - centre(src)).norm()
    after = (centre(fixed) - centre(src)).norm()
    assert before > 0.02
    assert after < 0.2 * before


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    data = album(root / "album", 8)
    return data, tiny_model(data, root / "run", steps=30, batch_size=8, lr=2e-3)


def test_edit_smoke_and_inversion(trained, renderer):
    from emorig.diffusion.pretrained import load_pretrained

    data, folder = trained
    ds = BufferDataset(data)
    model = load_pretrained(folder)
    source, target = items_from_dataset(ds, [0, 1]), items_from_dataset(ds, [5])
    plain = Editor(model, renderer, timesteps="ddim10").edit(source, target, ["exp", "pose"])
    assert set(plain.images) == {"exp", "pose"}
    for img in plain.images.values():
        assert img.shape == (2, 3, 32, 32)
        assert img.min() >= 0
        assert img.max() <= 1
    # The edited buffers differ from the source's where the face moved.
    assert not torch.allclose(plain.buffers["exp"], plain.buffers["pose"])
    inverted = Editor(model, renderer, timesteps="ddim10", invert=True)
    result = inverted.edit(source, target, ["light"])
    err_inverted = (result.reconstruction - source.image).abs().mean()
    err_plain = (plain.reconstruction - source.image).abs().mean()
    # Inversion then sampling under the source's own buffers gives the source back.
    assert err_inverted < 0.05
    assert err_inverted < 0.5 * err_plain


def test_the_mode_registry_drives_editor_and_evaluation(trained, renderer, monkeypatch):
    from emorig.diffusion.pretrained import load_pretrained
    from emorig.edit.modes import EDIT_MODES, EditMode, edit_mode, register_edit_mode
    from emorig.evaluate.protocol import PRIMARY_METRIC

    assert PRIMARY_METRIC == {"pose": "pose_deg", "exp": "expression_l2", "light": "light_rmse"}
    assert edit_mode("emotion").target == "emotion"
    from emorig.evaluate.metrics import EmotionAccuracy

    assert edit_mode("emotion").metric in EmotionAccuracy.__dataclass_fields__
    assert edit_mode("emotion").search is not None
    with pytest.raises(EmorigError, match="needs a search"):
        register_edit_mode(EditMode("mood", "no search", target="emotion"))
    with pytest.raises(EmorigError, match="takes no target face"):
        edit_mode("emotion").apply(_codes(1), _codes(1))
    with pytest.raises(EmorigError, match="exists already"):
        register_edit_mode(EDIT_MODES["exp"])

    def take_albedo(source, target):
        return source.replace(albedo=target.albedo.to(source.albedo))

    # a new mode is one entry: the editor, parse_modes and the evaluation's metric follow
    monkeypatch.setitem(EDIT_MODES, "albedo", EditMode("albedo", "skin colour", change=take_albedo))
    assert parse_modes("albedo,exp") == ("albedo", "exp")
    data, folder = trained
    ds = BufferDataset(data)
    source, target = items_from_dataset(ds, [0]), items_from_dataset(ds, [3])
    # an album shares one identity: give the target another skin
    target = dataclasses.replace(target, code=target.code.replace(albedo=target.code.albedo + 2))
    result = Editor(load_pretrained(folder), renderer, timesteps="ddim4").edit(
        source, target, ["albedo"]
    )
    assert torch.equal(result.codes["albedo"].albedo, target.code.albedo)
    assert torch.equal(result.codes["albedo"].expression, source.code.expression)
    assert not torch.equal(result.buffers["albedo"], result.source_buffer)


def test_edit_cli_writes_edits_and_grids(trained, tmp_path, capsys):
    from emorig.cli.main import main

    data, folder = trained
    out = tmp_path / "edits"
    code = main(
        ["edit", "--model", str(folder), "--source", str(data), "--target", str(data),
         "--target-index", "3", "--indices", "0", "1", "--modes", "exp,light,latent",
         "--steps", "ddim5", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert len([n for n in names if n.endswith("_grid.png")]) == 2
    assert len(names) == 2 * 3 + 2
    record = json.loads((out / "edits.json").read_text())
    assert record["modes"] == ["exp", "light", "latent"]
    assert "faces x 3 edits" in capsys.readouterr().out
    assert main(["edit", "--model", str(folder), "--source", str(data), "--target",
                 str(data), "--modes", "frown", "--out", str(out)]) == 2  # fmt: skip


def test_edit_cli_emotion_sweep(trained, tmp_path, monkeypatch):
    import emorig.edit.emotion as emotion
    from emorig.cli.main import main

    # a small code-space predictor: what is tested here is the sweep, not the predictor
    small = {"steps": 40, "batch_size": 64, "seed": 0, "hidden": 64}
    monkeypatch.setattr(emotion, "CODE_PREDICTOR_SETTINGS", small)

    data, folder = trained
    out = tmp_path / "emotion"
    code = main(
        ["edit", "--model", str(folder), "--source", str(data), "--indices", "2",
         "--emotion", "happy", "--intensity", "0.8", "--sweep", "3", "--steps", "ddim3",
         "--out", str(out)]
    )  # fmt: skip
    name = BufferDataset(data).manifest.items[2].source.split("/")[-1]
    for suffix in ("happy.png", "happy_grid.png", "happy_sweep.png"):
        assert (out / f"{name}_{suffix}").is_file(), suffix
    record = json.loads((out / "edits.json").read_text())
    assert record["emotion"] == "happy 0.8"
    # every face's edit is checked on the pixels; the status says whether all of them moved
    check = record["emotion_checks"][name]
    assert set(check["probabilities_before"]) == set(check["probabilities_after"])
    assert len(check["sweep_frame_change"]) == 2
    assert code == (1 if check["problems"] else 0)
    # A target and an emotion together are refused.
    assert main(["edit", "--model", str(folder), "--source", str(data), "--target", str(data),
                 "--emotion", "sad", "--out", str(out)]) == 2  # fmt: skip


def test_mixed_deca_and_emoca_editing_runs(trained, tmp_path):
    """Source photos reconstructed by DECA, the target by EMOCA (as the prototype allows)."""
    from PIL import Image

    from emorig.cli.main import main
    from emorig.reconstruct.checkpoints import save_pretrained
    from emorig.reconstruct.deca import DecaConfig, DecaModel
    from emorig.reconstruct.emoca import EmocaConfig, EmocaModel
    from emorig.synth.datasets import synthesize

    _, folder = trained
    torch.manual_seed(0)
    nets = {
        "deca": DecaModel(DecaConfig(backbone="resnet18", backbone_width=8)),
        "emoca": EmocaModel(
            EmocaConfig(backbone="resnet18", backbone_width=8, expression_backbone="resnet18")
        ),
    }  # fmt: skip
    for name, net in nets.items():
        save_pretrained(net.eval(), tmp_path / name)
        (tmp_path / name / "training.json").write_text(json.dumps({"synthetic_head": True}))
    # Two synthetic faces that dlib's detector finds (a few random heads are too odd for it).
    faces = synthesize(SynthDatasetConfig(mode="random", count=6, size=256, seed=4, supersample=1))
    for i, name in ((0, "source"), (2, "target")):
        (tmp_path / name).mkdir()
        image = (faces.images[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(image).save(tmp_path / name / f"{name}.png")
    out = tmp_path / "out"
    code = main(
        ["edit", "--model", str(folder), "--source", str(tmp_path / "source"),
         "--target", str(tmp_path / "target" / "target.png"),
         "--source-reconstructor", "deca", "--source-weights", str(tmp_path / "deca"),
         "--target-reconstructor", "emoca", "--target-weights", str(tmp_path / "emoca"),
         "--modes", "exp,pose", "--steps", "ddim3", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert (out / "source_grid.png").is_file()
    assert (out / "prepared" / "source-deca" / "manifest.json").is_file()
    assert (out / "prepared" / "target-emoca" / "manifest.json").is_file()
    manifest = json.loads((out / "prepared" / "target-emoca" / "manifest.json").read_text())
    assert manifest["reconstructor"].startswith("emoca")

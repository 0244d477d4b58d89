"""Photo -> code -> files, with weight-free fitting and with a (small) DECA network."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from emorig.cli.main import main
from emorig.errors import EmorigError
from emorig.flame.builtin import builtin_head
from emorig.io.images import read_image, to_uint8
from emorig.io.obj import read_obj
from emorig.reconstruct.checkpoints import save_pretrained
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.pipeline import Reconstructor, load_model, reconstruct_files
from emorig.render.face import FaceRenderer
from emorig.render.showcase import parse_face_spec, specs_to_code
from emorig.types import FaceCode

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def head():
    return builtin_head()


@pytest.fixture(scope="module")
def render_photo(head):
    """A 320 px render of the built-in head with a known expression and pose."""
    from emorig.flame.builtin import EXPRESSION_COMPONENTS

    r = FaceRenderer(head)
    names = [n for n, _ in EXPRESSION_COMPONENTS]
    code = specs_to_code(
        [parse_face_spec("smile=0.6+jaw=8+yaw=15", names)], r, camera=(8.0, 0.0, 0.01)
    )
    with torch.no_grad():
        out = r(code, 320)
    img = out.buffers.rendered + (1 - out.buffers.mask) * 0.5
    return to_uint8(img[0]), code, ((out.landmarks[0] + 1) * 160).numpy()


def test_fit_reconstructs_a_render_of_the_head(head, render_photo):
    image, code, _truth = render_photo
    rec = Reconstructor("fit", head, photometric=False).reconstruct(image)
    assert len(rec) == 1
    # pixels of the 224 crop against dlib's landmarks, whose jaw line runs 10-15 px off the
    # synthetic head's own outline (the inner points agree to ~4% of the eye distance)
    assert rec[0].landmark_error < 4.5
    # the jaw the photo shows is recovered (8 degrees = 0.14 rad)
    assert abs(float(rec[0].code.jaw_pose[0, 0]) - float(code.jaw_pose[0, 0])) < 0.08


def test_fit_on_a_real_photo_writes_everything(head, tmp_path):
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    (tmp_path / "broken.jpg").write_text("no")
    rec = Reconstructor("fit", head, photometric=False)
    notes = []
    results = reconstruct_files(
        [tmp_path / "astronaut.png", tmp_path / "broken.jpg"],
        tmp_path,
        tmp_path / "out",
        rec,
        "fit",
        notes=notes,
    )
    assert results[0][1] == "done"
    assert results[1][1] == "unreadable"
    # one quality record per face: a frontal real photo is an ok fit
    assert len(notes) == 1
    assert notes[0][1].ok, notes
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    for suffix in (
        ".npz",
        ".json",
        "_coarse.obj",
        "_rendered.png",
        "_normal.png",
        "_albedo.png",
        "_shape.png",
        "_landmarks.png",
        "_shape_overlay.png",
    ):
        assert "astronaut" + suffix in names, suffix
    meta = json.loads((out / "astronaut.json").read_text())
    assert meta["landmark_error_px"] < 4.0
    assert meta["quality"]["quality"] == "ok"
    assert meta["quality"]["reasons"] == []
    assert meta["quality"]["landmark_error_px"] == meta["landmark_error_px"]
    assert 0 < meta["quality"]["prior"]["shape_rms"] < 1.0
    assert len(meta["code"]["shape"]) == 100
    assert meta["synthetic_head"] is True
    verts, _faces, uv = read_obj(out / "astronaut_coarse.obj")
    assert verts.shape == head.flame.v_template.shape
    assert uv is not None
    npz = np.load(out / "astronaut.npz")
    assert npz["light"].shape == (9, 3)
    assert npz["crop_transform"].shape == (3, 3)
    overlay = read_image(out / "astronaut_shape_overlay.png")
    assert overlay.size == (512, 512)


def test_network_path_with_detail(head, render_photo, tmp_path):
    torch.manual_seed(0)
    model = DecaModel(DecaConfig(backbone="resnet18", backbone_width=8)).eval()
    folder = save_pretrained(model, tmp_path / "model")
    (tmp_path / "model" / "training.json").write_text(json.dumps({"synthetic_head": True}))
    loaded, trained_for = load_model("deca", folder, None)
    assert trained_for == "builtin"
    rec = Reconstructor("deca", head, loaded)
    image, _, _ = render_photo
    Image.fromarray(image).save(tmp_path / "face.png")
    results = reconstruct_files([tmp_path / "face.png"], tmp_path, tmp_path / "out", rec, "deca")
    assert results[0][1] == "done", results
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"face_detail.obj", "face_shape_detail.png"} <= names
    # a network's reconstruction carries the same quality record as a fit's
    quality = json.loads((tmp_path / "out" / "face.json").read_text())["quality"]
    assert quality["quality"] in ("ok", "doubtful")
    assert set(quality["prior"]) == {"shape_rms", "shape_max", "expression_rms", "expression_max"}
    v, f, _uv = read_obj(tmp_path / "out" / "face_detail.obj")
    assert v.shape[0] > 1000
    assert f.max() < v.shape[0]


def test_cli_prints_each_fit_quality_and_warns_on_doubtful_ones(
    render_photo, tmp_path, capsys, monkeypatch
):
    from emorig.reconstruct.fitting_common import DOUBTFUL

    image, _, _ = render_photo
    Image.fromarray(image).save(tmp_path / "face.png")
    argv = ["reconstruct", str(tmp_path / "face.png"), "--model", "fit", "--no-photometric"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "face.png: ok: landmarks " in captured.out
    assert "warning" not in captured.err
    # the same fit judged against a threshold it cannot meet: one warning line
    monkeypatch.setitem(DOUBTFUL, "landmark_px", 0.01)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "face.png: doubtful: landmarks " in captured.out
    warnings = [line for line in captured.err.splitlines() if "emorig: warning:" in line]
    assert len(warnings) == 1
    assert "doubtful fit (landmark error" in warnings[0]
    meta = json.loads((tmp_path / "b" / "face.json").read_text())
    assert meta["quality"]["quality"] == "doubtful"


def test_cli_errors_name_the_missing_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EMORIG_HOME", raising=False)
    assert (
        main(
            [
                "reconstruct",
                str(tmp_path),
                "--model",
                "deca",
                "--out",
                str(tmp_path / "o"),
                "--assets",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "deca_model.tar" in err
    assert "github.com/yfeng95/DECA" in err


def test_the_reconstructor_registry_drives_the_pipeline(head, render_photo, monkeypatch):
    from emorig.reconstruct.encoders import (
        ENCODERS,
        EncoderSpec,
        encoder_names,
        encoder_spec,
        register_encoder,
    )

    assert {"deca", "emoca", "fit", "builtin"} <= set(encoder_names())
    with pytest.raises(EmorigError, match="unknown reconstructor 'nope'; choose deca"):
        encoder_spec("nope")
    with pytest.raises(EmorigError, match="exists already"):
        register_encoder(ENCODERS["fit"])

    seen = {}

    class Neutral:  # a new reconstructor: one class and one registration
        def encode(self, images, landmarks):
            seen["shapes"] = (tuple(images.shape), tuple(landmarks.shape))
            code = FaceCode.neutral(images.shape[0]).replace(
                camera=torch.tensor([[8.0, 0.0, 0.0]]).expand(images.shape[0], 3)
            )
            return code, None

    spec = EncoderSpec(
        "neutral",
        "always the neutral face",
        lambda weights, assets: (None, None),
        lambda head, renderer, network, photometric: Neutral(),
    )
    monkeypatch.setitem(ENCODERS, "neutral", spec)
    assert "neutral" in encoder_names()
    assert load_model("neutral", None, None) == (None, None)
    rec = Reconstructor("neutral", head).reconstruct(render_photo[0])
    assert seen["shapes"] == ((1, 3, 224, 224), (1, 68, 2))
    assert len(rec) == 1
    assert float(rec[0].code.jaw_pose.abs().max()) == 0.0
    assert rec[0].landmark_error > 0  # measured against the detected points, as for any method

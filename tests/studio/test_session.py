"""The studio's state without a browser: the sample, a real photo, the controls, the files,
and one sentence for each bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emorig.errors import EmorigError
from emorig.flame.builtin import builtin_head
from emorig.render.face import FaceRenderer
from emorig.studio import session as studio
from emorig.studio.session import Controls, StudioSession


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


@pytest.fixture(scope="module")
def small_predictor(renderer):
    """A small code-space emotion predictor (the search is what is used here, not its skill)."""
    from emorig.edit.emotion import train_code_predictor

    return train_code_predictor(renderer, steps=60, batch_size=64, hidden=64)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("studio") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def fitted(renderer, small_predictor, astronaut):
    s = StudioSession(renderer, predictor=small_predictor)
    s.load_file(astronaut)
    return s


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that changed by more than 8 levels in some channel."""
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1) > 8).mean())


def test_the_sample_is_synthetic_and_unchanged_controls_give_it_back(renderer):
    s = StudioSession(renderer)
    s.load_sample()
    assert s.synthetic
    assert "SYNTHETIC" in s.quality_text()
    image, seconds = s.preview(Controls())
    assert np.array_equal(image, s.photo)
    assert seconds < 5
    smiled, _ = s.preview(Controls(expressions={"smile": 1.5}, jaw=10))
    assert _changed(smiled, s.photo) > 0.005


def test_a_real_photo_is_fitted_and_every_control_moves_the_preview(fitted):
    assert "found by dlib" in fitted.quality_text()
    assert "fit ok" in fitted.quality_text()
    assert fitted.overlay().shape == fitted.photo.shape
    assert fitted.shape_view().shape == (224, 224, 3)
    same, _ = fitted.preview(Controls())
    assert np.array_equal(same, fitted.photo)
    for controls in (
        Controls(expressions={"smile": 1.0}),
        Controls(expressions={"brow_raise": 1.5}),
        Controls(jaw=12),
        Controls(yaw=10),
        Controls(light_strength=0.5),
        Controls(emotion="sad"),
    ):
        image, _ = fitted.preview(controls)
        assert _changed(image, fitted.photo) > 0.002, controls.describe()  # >= 500 pixels
    a = fitted.code_for(Controls(emotion="surprise", intensity=1.0))
    b = fitted.code_for(Controls(emotion="surprise", intensity=0.3))
    assert float((a.expression - b.expression).abs().max()) > 0.05


def test_the_download_is_the_photo_size_with_its_code(fitted, tmp_path):
    paths = fitted.export(Controls(expressions={"smile": 0.8}, jaw=6), tmp_path)
    png, npz, meta = paths
    assert Image.open(png).size == (fitted.photo.shape[1], fitted.photo.shape[0])
    arrays = np.load(npz)
    assert {"expression", "jaw_pose", "shape", "light", "crop_transform"} <= set(arrays.files)
    record = json.loads(meta.read_text())
    assert record["controls"]["jaw"] == 6
    assert record["synthetic"] is False
    assert record["image_size"] == list(fitted.photo.shape[:2])


def test_bad_inputs_are_one_sentence(renderer, tmp_path, monkeypatch):
    s = StudioSession(renderer)
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    with pytest.raises(EmorigError, match="cannot be read as an image"):
        s.load_file(text)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 160), (90, 120, 150)).save(blank)
    with pytest.raises(EmorigError, match="No face was found"):
        s.load_file(blank)
    monkeypatch.setattr(studio, "MAX_PIXELS", 100 * 100)
    with pytest.raises(EmorigError, match=r"too large \(200 x 160 pixels\)"):
        s.load_file(blank)
    with pytest.raises(EmorigError, match="Load a photo first"):
        s.preview(Controls())
    s.load_sample()
    with pytest.raises(EmorigError, match="no face 3"):
        s.pick(2)
    with pytest.raises(EmorigError, match="needs a diffusion model"):
        s.result(Controls(), refine=True)


def test_several_faces_can_be_picked(renderer, astronaut, tmp_path):
    face = np.asarray(Image.open(astronaut))[:300, 100:400]
    pair = tmp_path / "pair.png"
    Image.fromarray(np.ascontiguousarray(np.concatenate([face, face[:, ::-1]], 1))).save(pair)
    s = StudioSession(renderer)
    s.load_file(pair)
    assert len(s.faces) == 2
    s.pick(1)
    assert s.quality_text().startswith("face 2 of 2")
    image = s.result(Controls(jaw=12))  # the photo's own size (the preview is scaled to 512)
    assert image.shape == s.photo.shape
    changed = np.abs(image.astype(int) - s.photo.astype(int)).max(-1) > 10
    _, xs = np.nonzero(changed)
    centre = s.faces[1].source_landmarks[:, 0].mean()
    assert abs(xs.mean() - centre) < 60  # the second face moved, not the first
    small, _ = s.preview(Controls(jaw=12))
    assert max(small.shape[:2]) == studio.PREVIEW_SIDE


def test_refine_with_the_demo_model_keeps_the_photo_size(renderer, astronaut):
    from emorig.diffusion.loading import load_rig
    from emorig.edit.methods import WarpEditor
    from emorig.edit.pipeline import Editor
    from emorig.weights import STAGE1_NAME, packaged_weights

    model = load_rig(str(packaged_weights(STAGE1_NAME)))
    refiner = WarpEditor(renderer, refiner=Editor(model, renderer, timesteps="ddim4"))
    s = StudioSession(renderer, refiner=refiner)
    s.load_file(astronaut)
    warped = s.result(Controls(jaw=10))
    refined = s.result(Controls(jaw=10), refine=True)
    assert refined.shape == s.photo.shape
    assert _changed(refined, warped) > 0.002  # the model repainted the face

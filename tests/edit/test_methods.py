"""The edit methods behind one interface: warp and warp+diffusion on prepared items, pasting an
aligned face back into its photo, and the pixel check of emotion edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emorig.data.dataset import BufferDataset
from emorig.edit.methods import WarpEditor, paste_back, soft_face_mask
from emorig.edit.photo import emotion_check
from emorig.edit.pipeline import Editor, items_from_dataset
from emorig.flame.builtin import builtin_head
from emorig.render.face import FaceRenderer
from emorig.types import EMOTION_CLASSES
from rig_helpers import album, tiny_model


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    data = album(root / "album", 6)
    return data, tiny_model(data, root / "run", steps=10, batch_size=6, lr=2e-3)


def test_soft_mask_grows_and_feathers_the_alpha():
    alpha = torch.zeros(1, 1, 64, 64)
    alpha[..., 24:40, 24:40] = 1
    mask = soft_face_mask(alpha)
    assert float(mask[..., 32, 32]) == 1.0
    assert float(mask[..., 0, 0]) == 0.0
    ring = mask[..., 20, 32]  # outside the alpha, inside the feather
    assert 0 < float(ring) < 1


def test_paste_back_of_the_photo_own_crop_changes_nothing_outside_the_mask():
    from emorig.faces.align import warp

    g = np.random.default_rng(0)
    photo = (g.random((90, 120, 3)) * 255).astype(np.uint8)
    m = np.array([[0.5, 0.0, -10.0], [0.0, 0.5, -5.0], [0, 0, 1.0]])  # photo -> 32 px crop
    aligned = warp(photo, m, 32)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    out = paste_back(photo, torch.ones_like(aligned), mask, m)
    assert out.shape == photo.shape
    # inside the mask (photo x in [36, 68), y in [26, 58)): white; far outside: untouched
    assert out[40:54, 40:64].min() >= 250
    assert np.array_equal(out[:, :30], photo[:, :30])
    assert np.array_equal(out[70:], photo[70:])


def test_warp_editor_unchanged_code_gives_the_image_and_edits_move_it(trained, renderer):
    data, _ = trained
    ds = BufferDataset(data)
    source, target = items_from_dataset(ds, [0, 1]), items_from_dataset(ds, [4])
    editor = WarpEditor(renderer)
    own = editor.warp_items(source, source.code)
    assert torch.allclose(own, source.image, atol=1 / 255 + 1e-6)
    result = editor.edit(source, target, ["exp", "light"])
    for mode in ("exp", "light"):
        image = result.images[mode]
        assert image.shape == source.image.shape
        assert float((image - source.image).abs().mean()) > 1e-3, mode
    with pytest.raises(Exception, match="latent"):
        editor.edit(source, target, ["latent"])


def test_warp_plus_diffusion_changes_only_the_face_region(trained, renderer):
    from emorig.diffusion.pretrained import load_pretrained

    data, folder = trained
    ds = BufferDataset(data)
    source, target = items_from_dataset(ds, [0]), items_from_dataset(ds, [3])
    refiner = Editor(load_pretrained(folder), renderer, timesteps="ddim4")
    warp_only = WarpEditor(renderer).edit(source, target, ["exp"]).images["exp"]
    both = WarpEditor(renderer, refiner=refiner, strength=0.5).edit(source, target, ["exp"])
    refined = both.images["exp"]
    code = both.codes["exp"]
    alpha = WarpEditor(renderer).render(code, source.crop_transform, 32).mask
    outside = soft_face_mask(alpha) == 0
    diff = (refined - warp_only).abs().sum(1, keepdim=True)
    assert float(diff[~outside].mean()) > 1e-3  # the model repainted the face
    assert float(diff[outside].max()) < 1e-5  # and nothing else
    # strength 0: warp+diffusion is the warp
    zero = WarpEditor(renderer, refiner=refiner, strength=0.0).edit(source, target, ["exp"])
    torch.testing.assert_close(zero.images["exp"], warp_only)


def _probs(**kw):
    p = torch.full((len(EMOTION_CLASSES),), 0.01)
    for name, v in kw.items():
        p[EMOTION_CLASSES.index(name)] = v
    return p


def test_emotion_check_says_why_an_edit_did_not_move():
    from emorig.types import FaceCode

    code = FaceCode.neutral(batch_size=1)
    found = code.replace(expression=code.expression + 0.3)
    a = np.zeros((8, 8, 3), np.uint8)
    b = a + 20
    moved = emotion_check("sad", _probs(happy=0.9, sad=0.02), _probs(sad=0.4), code, found, [a, b])
    assert moved.problems == ()
    assert moved.to_json()["moved"] is True
    stuck = emotion_check("sad", _probs(happy=0.9, sad=0.02), _probs(sad=0.01), code, code, [a, a])
    text = " ".join(stuck.problems)
    assert "the source's" in text
    assert "do not differ" in text
    assert "did not rise" in text
    # a source that already shows the emotion has nothing to prove
    already = emotion_check("happy", _probs(happy=0.9), _probs(happy=0.8), code, code)
    assert already.already
    assert already.problems == ()

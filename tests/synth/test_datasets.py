"""Synthetic datasets: deterministic plans, group structure, FFHQ-like framing, files."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emorig.errors import EmorigError
from emorig.faces.align import ffhq_quad
from emorig.flame.heads import load_head
from emorig.geometry.camera import ndc_to_pixels
from emorig.geometry.rotations import axis_angle_to_matrix
from emorig.render.face import FaceRenderer
from emorig.synth.datasets import (
    SynthDatasetConfig,
    frame_like_ffhq,
    plan_dataset,
    read_codes,
    synthesize,
    write_dataset,
)
from emorig.types import EMOTION_CLASSES


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(load_head("builtin"))


def _codes_equal(a, b):
    return all(
        torch.equal(getattr(a, f), getattr(b, f))
        for f in ("shape", "expression", "global_pose", "jaw_pose", "light", "albedo", "eye_pose")
    )


def test_plan_is_deterministic_and_labels_are_balanced(renderer):
    cfg = SynthDatasetConfig(count=16, seed=3, emotion_fraction=1.0)
    a, b = plan_dataset(renderer, cfg), plan_dataset(renderer, cfg)
    assert _codes_equal(a.code, b.code)
    assert torch.equal(a.labels, b.labels)
    other = plan_dataset(renderer, SynthDatasetConfig(count=16, seed=4, emotion_fraction=1.0))
    assert not torch.equal(a.code.shape, other.code.shape)
    assert torch.bincount(a.labels, minlength=8).tolist() == [2] * 8
    assert not torch.isnan(a.valence_arousal).any()
    assert ((a.valence_arousal >= -1) & (a.valence_arousal <= 1)).all()
    # happy faces have positive valence, sad ones negative
    happy, sad = EMOTION_CLASSES.index("happy"), EMOTION_CLASSES.index("sad")
    assert (a.valence_arousal[a.labels == happy, 0] > 0).all()
    assert (a.valence_arousal[a.labels == sad, 0] < 0).all()


def test_unlabelled_faces_have_nan_affect(renderer):
    plan = plan_dataset(renderer, SynthDatasetConfig(count=40, seed=0, emotion_fraction=0.5))
    unlabelled = plan.labels < 0
    assert 0 < int(unlabelled.sum()) < 40
    assert torch.isnan(plan.valence_arousal[unlabelled]).all()
    assert torch.isnan(plan.intensity[unlabelled]).all()
    assert not torch.isnan(plan.valence_arousal[~unlabelled]).any()
    none = plan_dataset(renderer, SynthDatasetConfig(count=8, emotion_fraction=0.0))
    assert (none.labels == -1).all()


def test_album_shares_identity_and_varies_the_rest(renderer):
    plan = plan_dataset(renderer, SynthDatasetConfig(mode="album", count=12, album_size=5))
    assert plan.groups.tolist() == [0] * 5 + [1] * 5 + [2] * 2
    c = plan.code
    for g in range(3):
        sel = plan.groups == g
        assert (c.shape[sel] == c.shape[sel][:1]).all()
        assert (c.albedo[sel] == c.albedo[sel][:1]).all()
    assert not torch.equal(c.shape[0], c.shape[5])
    assert not torch.equal(c.light[0], c.light[1])
    assert not torch.equal(c.global_pose[0], c.global_pose[1])


def test_multiview_groups_turn_one_face(renderer):
    cfg = SynthDatasetConfig(mode="multiview", count=10, views=5, max_yaw=30.0)
    plan = plan_dataset(renderer, cfg)
    assert plan.views.tolist() == [0, 1, 2, 3, 4] * 2
    assert plan.yaw[:5].tolist() == pytest.approx([-30, -15, 0, 15, 30])
    c = plan.code
    for g in range(2):
        sel = plan.groups == g
        for field in ("shape", "albedo", "expression", "jaw_pose", "eye_pose"):
            value = getattr(c, field)[sel]
            assert (value == value[:1]).all(), field
        # the head turns by the view yaw: relative rotation of view k to view 2 is about +y
        rot = axis_angle_to_matrix(c.global_pose[sel])
        rel = rot @ rot[2].transpose(0, 1)
        yaw = torch.atan2(rel[:, 0, 2], rel[:, 2, 2]) * 180 / math.pi
        assert yaw.tolist() == pytest.approx([-30, -15, 0, 15, 30], abs=1e-3)
        # the key light turns with the head: same strength in every view
        key = c.light[sel][:, 1:4].norm(dim=1)
        assert torch.allclose(key, key[:1].expand_as(key), atol=1e-5)
    assert not torch.equal(c.shape[0], c.shape[5])


def test_framing_puts_the_ffhq_square_on_the_image(renderer):
    plan = plan_dataset(renderer, SynthDatasetConfig(count=6, seed=2))
    size = 64
    exact = frame_like_ffhq(renderer, plan.code)
    with torch.no_grad():
        lm = renderer(exact, size).landmarks
    for i in range(6):
        c, x, _ = ffhq_quad(ndc_to_pixels(lm[i], size, size).numpy())
        assert c == pytest.approx([size / 2, size / 2], abs=1e-3)
        assert np.hypot(*x) == pytest.approx(size / 2, rel=1e-4)
    jittered = frame_like_ffhq(renderer, plan.code, plan.framing)
    ratio = jittered.camera[:, 0] / exact.camera[:, 0]
    assert ((ratio - 1).abs() <= 0.03 + 1e-6).all()


def test_synthesize_tensors_do_not_depend_on_batch_size(renderer):
    cfg = SynthDatasetConfig(mode="album", count=5, size=48, seed=7, album_size=3, supersample=1)
    a = synthesize(cfg, renderer, batch_size=2)
    b = synthesize(cfg, renderer, batch_size=5)
    assert a.images.shape == (5, 3, 48, 48)
    assert float(a.images.min()) >= 0
    assert float(a.images.max()) <= 1
    assert a.buffers is not None
    assert a.buffers.rendered.shape == (5, 3, 48, 48)
    assert a.landmarks.shape == (5, 68, 2)
    assert a.index.tolist() == [0, 1, 2, 3, 4]
    assert a.groups.tolist() == [0, 0, 0, 1, 1]
    assert torch.allclose(a.images, b.images, atol=1e-4)  # float rounding of batched maths
    assert torch.allclose(a.code.camera, b.code.camera)
    # face centred and filling a good part of the frame, background around it
    cover = a.buffers.mask.mean((1, 2, 3))
    assert ((cover > 0.3) & (cover < 0.8)).all()
    assert float(a.buffers.mask[:, :, 24, 24].min()) == 1.0


def test_supersampling_smooths_edges_and_skips_buffers(renderer):
    cfg = SynthDatasetConfig(count=2, size=32, seed=1, supersample=2)
    faces = synthesize(cfg, renderer, with_buffers=False)
    assert faces.buffers is None
    assert faces.images.shape == (2, 3, 32, 32)


def test_write_dataset_files_round_trip_and_are_deterministic(renderer, tmp_path):
    cfg = SynthDatasetConfig(
        mode="multiview", count=4, views=2, size=32, seed=5, supersample=1, emotion_fraction=1.0
    )
    seen = []
    result = write_dataset(
        cfg, tmp_path / "a", renderer, batch_size=3, progress=lambda it: seen.append(len(it)) or it
    )
    assert seen == [4]
    assert [p.name for p in result.images] == [f"{i:06d}.png" for i in range(4)]
    assert result.sheet.is_file()
    assert result.sheet.name == "contact_sheet.png"
    labels = json.loads(result.labels.read_text())
    assert labels["synthetic"] is True
    assert "SYNTHETIC" in labels["note"]
    rows = labels["images"]
    assert [r["group"] for r in rows] == [0, 0, 1, 1]
    assert all(r["emotion"] in EMOTION_CLASSES and r["valence"] is not None for r in rows)
    assert rows[0]["emotion"] == rows[1]["emotion"]
    with np.load(result.codes) as data:
        assert data["labels"].tolist() == [r["label"] for r in rows]
        assert data["landmarks"].shape == (4, 68, 2)
        assert data["files"].tolist() == [r["file"] for r in rows]
    code = read_codes(result.codes)
    again = synthesize(cfg, renderer, with_buffers=False)
    assert torch.allclose(code.camera, again.code.camera)
    assert torch.equal(code.expression, again.code.expression)
    second = write_dataset(cfg, tmp_path / "b", renderer)
    for p, q in zip(result.images, second.images, strict=True):
        assert p.read_bytes() == q.read_bytes()
    assert not list((tmp_path / "a").rglob("*.tmp"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "grid"}, "choose one of"),
        ({"mode": "multiview", "count": 7, "views": 3}, "not a multiple"),
        ({"count": 0}, "at least one"),
        ({"size": 8}, "between 16"),
        ({"emotion_fraction": 1.5}, "must be in"),
    ],
)
def test_bad_settings_are_one_line_errors(changes, message):
    with pytest.raises(EmorigError, match=message):
        SynthDatasetConfig(**changes).validate()


def test_other_heads_and_bad_outputs_are_refused(renderer, tmp_path):
    not_builtin = SimpleNamespace(synthetic=False, head_name="FLAME 2020")
    with pytest.raises(EmorigError, match="built-in head"):
        plan_dataset(not_builtin, SynthDatasetConfig(count=2))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EmorigError, match="not a folder"):
        write_dataset(SynthDatasetConfig(count=1, size=16), blocker, renderer)
    np.savez(tmp_path / "bad.npz", shape=np.zeros(2))
    with pytest.raises(EmorigError, match="codes"):
        read_codes(tmp_path / "bad.npz")

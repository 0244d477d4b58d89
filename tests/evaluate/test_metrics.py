"""Identity, code, emotion and multi-view metrics against hand-computed cases."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emorig.errors import EmorigError
from emorig.evaluate import (
    code_errors,
    cosine_similarity,
    emotion_accuracy,
    expression_error,
    identity_embeddings,
    identity_similarity,
    light_rmse,
    multiview_consistency,
    rotation_angle_deg,
    shape_identity,
)
from emorig.faces.backends import Detection
from emorig.types import FaceCode


def test_cosine_similarity_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0], [-1.0, 0.0]])
    assert cosine_similarity(a, b).tolist() == pytest.approx([0.0, 1.0, 0.0, -1.0])


def test_identity_similarity_skips_missing_faces():
    source = torch.tensor([[3.0, 4.0], [1.0, 0.0], [math.nan, math.nan]])
    edited = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]])
    score = identity_similarity(source, edited)
    assert score.n == 2
    assert score.cosine == pytest.approx(0.5)
    assert score.distance == pytest.approx(math.sqrt(2) / 2)
    assert score.same_rate == pytest.approx(0.5)  # only the first pair is under 0.6
    assert math.isnan(float(score.per_pair_cosine[2]))
    assert identity_similarity(source, edited, threshold=None).same_rate is None
    empty = identity_similarity(source[2:], edited[2:])
    assert empty.n == 0
    assert math.isnan(empty.cosine)
    with pytest.raises(EmorigError, match="differ"):
        identity_similarity(source, edited[:2])


def test_shape_identity_pads_and_measures():
    score = shape_identity(
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]]), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    )
    assert score.per_item_cosine.tolist() == pytest.approx([1.0, 0.0])
    assert score.per_item_l2.tolist() == pytest.approx([1.0, 5.0])
    assert score.l2 == pytest.approx(3.0)


def test_identity_embeddings_use_the_largest_face():
    calls = []

    class Detector:
        def detect(self, image):
            if image.mean() < 10:
                return []
            return [Detection((0, 0, 2, 2), 1.0), Detection((0, 0, 5, 5), 0.5)]

    class Landmarks:
        def landmarks(self, image, detection):
            calls.append(detection.box)
            return np.zeros((68, 2))

    class Embedder:
        dim = 3

        def embed(self, image, landmarks):
            return np.array([image.mean(), 1.0, 2.0])

    backend = SimpleNamespace(
        name="fake", detector=Detector(), landmarks68=Landmarks(), embedder=Embedder()
    )
    images = torch.zeros(2, 3, 8, 8)
    images[0] = 1.0
    out = identity_embeddings(images, backend)
    assert out.shape == (2, 3)
    assert out[0].tolist() == [255.0, 1.0, 2.0]
    assert torch.isnan(out[1]).all()
    assert calls == [(0, 0, 5, 5)]


def test_expression_error_by_hand():
    l2, mae = expression_error(
        torch.tensor([[1.0, 2.0, 0.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.1, 0.0, 0.0]]),
        torch.zeros(1, 3),
    )
    assert float(l2[0]) == pytest.approx(math.sqrt(4.01))
    assert float(mae[0]) == pytest.approx(2.1 / 6)
    l2, mae = expression_error(torch.ones(2, 4), torch.zeros(2, 4))
    assert l2.tolist() == pytest.approx([2.0, 2.0])
    assert mae.tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(EmorigError, match="both jaw"):
        expression_error(torch.ones(1, 2), torch.ones(1, 2), torch.zeros(1, 3))


def test_rotation_angle_is_the_geodesic_distance():
    half = math.pi / 2
    a = torch.tensor(
        [[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, half], [0.0, 0.0, 0.0]], dtype=torch.float64
    )
    b = torch.tensor(
        [[0.0, half, 0.0], [0.5, 0.0, 0.0], [half, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64
    )
    # 90 about y; 0.2 rad about x; 90 about z then 90 about x compose to 120; identity
    assert rotation_angle_deg(a, b).tolist() == pytest.approx(
        [90.0, math.degrees(0.2), 120.0, 0.0], abs=1e-9
    )
    tiny = rotation_angle_deg(
        torch.tensor([[1e-8, 0.0, 0.0]], dtype=torch.float64), torch.zeros(1, 3)
    )
    assert float(tiny[0]) == pytest.approx(math.degrees(1e-8), rel=1e-6)
    near_pi = rotation_angle_deg(
        torch.zeros(1, 3), torch.tensor([[0.0, math.pi - 1e-7, 0.0]], dtype=torch.float64)
    )
    assert float(near_pi[0]) == pytest.approx(180.0 - math.degrees(1e-7), abs=1e-6)
    # symmetric, and the same for equivalent axis-angles (2 pi - t about -axis)
    assert rotation_angle_deg(b, a).tolist() == pytest.approx(rotation_angle_deg(a, b).tolist())
    same = rotation_angle_deg(
        torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64),
        torch.tensor([[0.0, 0.0, 0.5 - 2 * math.pi]], dtype=torch.float64),
    )
    assert float(same[0]) == pytest.approx(0.0, abs=1e-9)


def test_light_rmse_by_hand():
    a = torch.zeros(2, 9, 3)
    b = torch.zeros(2, 9, 3)
    b[0] = 0.5
    b[1, 4, 2] = 3.0
    assert light_rmse(a, b).tolist() == pytest.approx([0.5, math.sqrt(9 / 27)])


def test_code_errors_combine_the_parts():
    req = FaceCode.neutral(2)
    rec = req.replace(
        expression=req.expression + torch.tensor([[0.0], [1.0]]),
        global_pose=torch.tensor([[0.0, math.radians(10), 0.0], [0.0, 0.0, 0.0]]),
        jaw_pose=torch.tensor([[math.radians(4), 0.0, 0.0], [0.0, 0.0, 0.0]]),
        light=req.light + 0.1,
    )
    err = code_errors(req, rec)
    assert err.n == 2
    assert err.pose_deg == pytest.approx(5.0)
    assert err.jaw_deg == pytest.approx(2.0)
    assert err.light_rmse == pytest.approx(0.1)
    # face 0: only the jaw differs (0.0698 rad); face 1: 50 expression coefficients by 1
    jaw = math.radians(4)
    assert err.expression_l2 == pytest.approx((jaw + math.sqrt(50)) / 2)
    assert err.expression_mae == pytest.approx((jaw / 53 + 50 / 53) / 2)


def test_emotion_accuracy_by_hand():
    requested = torch.tensor([0, 1, 1, 2, -1])
    predicted = torch.tensor([0, 1, 2, 2, 5])
    acc = emotion_accuracy(requested, predicted)
    assert acc.n == 4
    assert acc.accuracy == pytest.approx(0.75)
    assert acc.per_class[:3] == pytest.approx((1.0, 0.5, 1.0))
    assert all(math.isnan(v) for v in acc.per_class[3:])
    assert acc.confusion[1, 2] == 1
    assert int(acc.confusion.sum()) == 4
    logits = torch.nn.functional.one_hot(predicted, 8).float()
    assert emotion_accuracy(requested, logits).accuracy == pytest.approx(0.75)
    with pytest.raises(EmorigError, match="integers"):
        emotion_accuracy(requested.float(), predicted)
    with pytest.raises(EmorigError, match=r"\[0, 8\)"):
        emotion_accuracy(torch.tensor([9]), torch.tensor([0]))


def test_multiview_consistency_by_hand():
    codes = torch.tensor([[[0.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    c = multiview_consistency(codes)
    assert c.per_group.tolist() == pytest.approx([1.0, 0.0])
    assert (c.mean, c.max, c.n_groups, c.n_views) == (pytest.approx(0.5), 1.0, 2, 2)
    same = torch.randn(4, 1, 10).expand(4, 6, 10)
    assert multiview_consistency(same).mean == pytest.approx(0.0, abs=1e-12)
    assert multiview_consistency(same).max == pytest.approx(0.0, abs=1e-12)


def test_multiview_consistency_grows_with_injected_inconsistency():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(5, 1, 53, generator=gen, dtype=torch.float64).expand(5, 7, 53)
    noise = torch.randn(5, 7, 53, generator=gen, dtype=torch.float64)
    levels = [0.0, 0.01, 0.1, 0.3, 1.0, 3.0]
    means = [multiview_consistency(base + t * noise).mean for t in levels]
    maxes = [multiview_consistency(base + t * noise).max for t in levels]
    assert means[0] == pytest.approx(0.0, abs=1e-12)
    assert all(b > a for a, b in itertools.pairwise(means))
    assert all(b > a for a, b in itertools.pairwise(maxes))
    # the spread scales linearly with the injected noise
    assert means[-1] / means[2] == pytest.approx(30.0, rel=1e-9)
    with pytest.raises(EmorigError, match="3 dims"):
        multiview_consistency(torch.zeros(4, 5))

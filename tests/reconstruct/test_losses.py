"""Reconstruction losses: hand-computed values on tiny tensors, gradients, DECA's conventions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from emorig.reconstruct.losses import (
    DECA_IDMRF_CONTENT_LAYERS,
    DECA_IDMRF_STYLE_LAYERS,
    DECA_WEIGHTS,
    EMOCA_WEIGHTS,
    EYE_PAIRS,
    LANDMARK_WEIGHTS,
    LIP_PAIRS,
    MEDIAPIPE_EMBEDDING_INDICES,
    MEDIAPIPE_EYELIDS,
    MEDIAPIPE_EYELIDS_EMOCA,
    MEDIAPIPE_LIPS,
    MEDIAPIPE_MOUTH_CORNERS,
    MOUTH_CORNER_PAIRS,
    VGGFACE2_MEAN_BGR,
    IDMRFLoss,
    binary_erosion,
    coefficient_regulariser,
    crop_uv_face,
    displacement_regulariser,
    embedding_positions,
    emotion_consistency_loss,
    eye_closure_loss,
    group_permutation,
    identity_loss,
    jaw_regulariser,
    landmark_loss,
    light_regulariser,
    lip_closure_loss,
    mouth_corner_loss,
    mrf_loss,
    permute_within_groups,
    photometric_loss,
    relative_distance_loss,
    shading_smooth_loss,
    symmetry_loss,
    uv_photometric_loss,
    vggface2_preprocess,
)
from emorig.reconstruct.vgg import VGG19Features, imagenet_normalize

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Landmarks


class TestLandmarkWeights:
    def test_decas_values(self):
        w = LANDMARK_WEIGHTS
        assert len(w) == 68
        assert [w[i] for i in (5, 6, 10, 11)] == [2.0] * 4
        assert [w[i] for i in (27, 28, 29, 32, 33, 34)] == [1.5] * 6
        assert [w[i] for i in (30, 31, 35)] == [3.0] * 3
        assert [w[i] for i in (48, 54)] == [3.0, 3.0]
        assert all(w[i] == 1.5 for i in range(49, 68) if i != 54)
        assert all(w[i] == 1.0 for i in [*range(5), 7, 8, 9, *range(12, 27), *range(36, 48)])
        # 68 + 4 (jaw) + 4.5 + 4.5 (nose) + 10 + 3 (lips)
        assert sum(w) == 94.0


class TestLandmarkLoss:
    def test_hand_computed_with_visibility(self):
        pred = torch.zeros(1, 3, 2)
        target = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0]]])
        # |d| sums 1, 2, 2; w*v = 1, 2, 0 -> (1*1 + 2*2) / (2 * (1 + 2))
        loss = landmark_loss(pred, target, weights=(1.0, 2.0, 3.0))
        assert loss.item() == pytest.approx(5 / 6)

    def test_invisible_points_neither_count_nor_dilute(self):
        pred = torch.zeros(2, 68, 2)
        target = torch.zeros(2, 68, 3)
        target[..., 2] = 1
        target[0, 0, :2] = torch.tensor([0.2, -0.1])
        base = landmark_loss(pred, target)
        hidden = target.clone()
        hidden[1, 5, :2] = 100.0
        hidden[1, 5, 2] = 0.0
        # DECA's k = 2 sum(w v) drops the hidden point's weight (2) from the denominator
        expected = 0.3 / (2 * (2 * 94 - 2))
        assert landmark_loss(pred, hidden).item() == pytest.approx(expected, rel=1e-6)
        assert base.item() == pytest.approx(0.3 / (2 * 2 * 94), rel=1e-6)

    def test_deca_weighting(self):
        pred = torch.zeros(1, 68, 2)
        target = torch.zeros(1, 68, 2)
        target[0, 48, 0] = 0.5  # a mouth corner, weight 3
        assert landmark_loss(pred, target).item() == pytest.approx(3 * 0.5 / (2 * 94))
        target = torch.zeros(1, 68, 2)
        target[0, 0, 1] = 0.5  # contour, weight 1
        assert landmark_loss(pred, target).item() == pytest.approx(0.5 / (2 * 94))

    def test_two_columns_mean_full_visibility(self):
        g = gen(1)
        pred = torch.rand(3, 68, 2, generator=g)
        target = torch.rand(3, 68, 2, generator=g)
        with_vis = torch.cat([target, torch.ones(3, 68, 1)], dim=-1)
        assert torch.allclose(landmark_loss(pred, target), landmark_loss(pred, with_vis))

    def test_uniform_weights_are_the_mean_l1(self):
        g = gen(2)
        pred = torch.rand(2, 105, 2, generator=g)
        target = torch.rand(2, 105, 2, generator=g)
        loss = landmark_loss(pred, target, weights=torch.ones(105))
        assert torch.allclose(loss, (pred - target).abs().mean(), atol=1e-7)

    def test_does_not_modify_target(self):
        target = torch.ones(1, 68, 3)
        landmark_loss(torch.zeros(1, 68, 2), target)
        assert torch.equal(target, torch.ones(1, 68, 3))

    def test_gradcheck(self):
        g = gen(3)
        pred = torch.rand(2, 68, 2, generator=g, dtype=F64, requires_grad=True)
        target = torch.rand(2, 68, 3, generator=g, dtype=F64)
        target[..., 2] = (target[..., 2] > 0.3).to(F64)
        assert gradcheck(lambda p: landmark_loss(p, target), (pred,))

    def test_shape_errors(self):
        with pytest.raises(ValueError, match="weights"):
            landmark_loss(torch.zeros(1, 5, 2), torch.zeros(1, 5, 2))
        with pytest.raises(ValueError, match="target"):
            landmark_loss(torch.zeros(1, 68, 2), torch.zeros(1, 68, 4))


class TestRelativeDistances:
    def test_hand_computed(self):
        pred = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]])
        target = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 1.0]]])
        # pair (0, 1): |5 - 1| = 4; pair (2, 3): |1 - 1| = 0
        loss = relative_distance_loss(pred, target, [0, 2], [1, 3])
        assert loss.item() == pytest.approx(2.0)

    def test_ignores_third_column(self):
        pred = torch.tensor([[[0.0, 0.0, 5.0], [3.0, 4.0, -2.0]]])
        target = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])
        assert relative_distance_loss(pred, target, [0], [1]).item() == pytest.approx(4.0)

    def test_gradcheck(self):
        g = gen(4)
        pred = torch.rand(2, 68, 2, generator=g, dtype=F64, requires_grad=True)
        target = torch.rand(2, 68, 3, generator=g, dtype=F64)
        assert gradcheck(lambda p: relative_distance_loss(p, target, *EYE_PAIRS), (pred,))

    def test_coincident_points_have_finite_gradient(self):
        pred = torch.zeros(1, 68, 2, requires_grad=True)
        target = torch.rand(1, 68, 2, generator=gen(5))
        eye_closure_loss(pred, target).backward()
        assert torch.isfinite(pred.grad).all()

    def test_eye_pairs(self):
        assert EYE_PAIRS == ((37, 38, 43, 44), (41, 40, 47, 46))
        pred = torch.zeros(1, 68, 2)
        target = torch.zeros(1, 68, 2)
        pred[0, 41] = torch.tensor([0.0, 0.1])
        target[0, 41] = torch.tensor([0.0, 0.3])
        # one of four pairs is off by 0.2
        assert eye_closure_loss(pred, target).item() == pytest.approx(0.05)
        assert lip_closure_loss(pred, target).item() == 0.0

    def test_lip_pairs(self):
        assert LIP_PAIRS == ((61, 62, 63), (67, 66, 65))
        pred = torch.zeros(1, 68, 2)
        target = torch.zeros(1, 68, 2)
        target[0, 66] = torch.tensor([0.0, 0.3])  # 62-66 opens by 0.3
        assert lip_closure_loss(pred, target).item() == pytest.approx(0.1)
        assert eye_closure_loss(pred, target).item() == 0.0

    def test_mouth_corner_pairs(self):
        assert MOUTH_CORNER_PAIRS == ((48, 60), (54, 64))
        pred = torch.zeros(1, 68, 2)
        target = torch.zeros(1, 68, 2)
        target[0, 54] = torch.tensor([0.4, 0.0])  # outer corners 48-54 widen by 0.4
        assert mouth_corner_loss(pred, target).item() == pytest.approx(0.2)


class TestMediaPipe:
    def test_lists(self):
        assert len(MEDIAPIPE_EMBEDDING_INDICES) == 105
        assert len(set(MEDIAPIPE_EMBEDDING_INDICES)) == 105
        for upper, lower in (MEDIAPIPE_EYELIDS, MEDIAPIPE_EYELIDS_EMOCA):
            assert len(upper) == len(lower) == 14
        assert sorted(MEDIAPIPE_EYELIDS[0]) == list(MEDIAPIPE_EYELIDS_EMOCA[0])
        assert sorted(MEDIAPIPE_EYELIDS[1]) == list(MEDIAPIPE_EYELIDS_EMOCA[1])
        assert len(MEDIAPIPE_LIPS[0]) == len(MEDIAPIPE_LIPS[1]) == 18
        assert MEDIAPIPE_MOUTH_CORNERS == ((78, 61), (308, 291))
        # the correct pairing keeps 159 above 145 (the right eye's centre)
        assert (159, 145) in set(zip(*MEDIAPIPE_EYELIDS, strict=True))
        # EMOCA's sorted pairing breaks most vertical pairs, e.g. 157 goes with 7
        emoca = set(zip(*MEDIAPIPE_EYELIDS_EMOCA, strict=True))
        assert (157, 7) in emoca
        assert len(emoca & set(zip(*MEDIAPIPE_EYELIDS, strict=True))) == 4

    def test_embedding_positions(self):
        for pairs in (MEDIAPIPE_EYELIDS, MEDIAPIPE_LIPS, MEDIAPIPE_MOUTH_CORNERS):
            for side in pairs:
                pos = embedding_positions(side)
                assert [MEDIAPIPE_EMBEDDING_INDICES[p] for p in pos] == list(side)
        with pytest.raises(ValueError, match=r"\[10\]"):
            embedding_positions([10])
        assert embedding_positions([5, 7], embedding_indices=torch.tensor([7, 9, 5])) == (2, 0)

    def test_relative_loss_in_embedding_order(self):
        g = gen(6)
        target_478 = torch.rand(2, 478, 2, generator=g)
        target_105 = target_478[:, list(MEDIAPIPE_EMBEDDING_INDICES)]
        a, b = (embedding_positions(side) for side in MEDIAPIPE_LIPS)
        assert relative_distance_loss(target_105, target_105, a, b).item() == 0.0
        pred = target_105.clone()
        pred[:, a[0]] += torch.tensor([0.0, 0.18])  # move one upper-lip point
        d_old = (target_105[:, a[0]] - target_105[:, b[0]]).norm(dim=-1)
        d_new = (pred[:, a[0]] - pred[:, b[0]]).norm(dim=-1)
        expected = (d_new - d_old).abs().sum() / (2 * 18)
        assert relative_distance_loss(pred, target_105, a, b).item() == pytest.approx(
            expected.item(), rel=1e-5
        )


# ---------------------------------------------------------------------------------------------
# Images


class TestPhotometric:
    def test_hand_computed(self):
        rendered = torch.ones(1, 3, 2, 2)
        image = torch.zeros(1, 3, 2, 2)
        mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
        assert photometric_loss(rendered, image, mask).item() == pytest.approx(0.5)
        assert photometric_loss(rendered, image, mask, normalization="mask").item() == 1.0
        empty = torch.zeros_like(mask)
        assert photometric_loss(rendered, image, empty, normalization="mask").item() == 0.0

    def test_gradcheck(self):
        g = gen(7)
        rendered = torch.rand(2, 3, 4, 5, generator=g, dtype=F64, requires_grad=True)
        image = torch.rand(2, 3, 4, 5, generator=g, dtype=F64)
        mask = (torch.rand(2, 1, 4, 5, generator=g) > 0.4).to(F64)
        assert gradcheck(lambda r: photometric_loss(r, image, mask), (rendered,))
        assert gradcheck(lambda r: photometric_loss(r, image, mask, "mask"), (rendered,))

    def test_bad_normalization(self):
        x = torch.zeros(1, 3, 2, 2)
        with pytest.raises(ValueError, match="normalization"):
            photometric_loss(x, x, x[:, :1], normalization="sum")  # type: ignore[arg-type]


class TestIdentity:
    def test_values(self):
        a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
        b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
        # 1 - cos: 0, 1, 2
        assert identity_loss(a, b).item() == pytest.approx(1.0)
        assert identity_loss(a[:1], b[:1]).item() == pytest.approx(0.0)

    def test_flattens_feature_maps(self):
        a = torch.rand(2, 4, 1, 1, generator=gen(8))
        assert identity_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)


class TestVGGFace2Preprocess:
    def test_bgr_mean_and_deca_rescale(self):
        image = torch.zeros(1, 3, 224, 224)
        image[:, 0] = 1.0  # pure red
        r, g, b = 255.0 - VGGFACE2_MEAN_BGR[2], -VGGFACE2_MEAN_BGR[1], -VGGFACE2_MEAN_BGR[0]
        plain = vggface2_preprocess(image, deca_rescale=False)
        assert plain.shape == (1, 3, 224, 224)
        assert torch.allclose(plain[0, :, 100, 100], torch.tensor([b, g, r]), atol=1e-4)
        quirk = vggface2_preprocess(image)
        expected = torch.tensor([2 * b - 1, 2 * g - 1, 2 * r - 1])
        assert torch.allclose(quirk[0, :, 100, 100], expected, atol=1e-4)

    def test_margin_is_cropped(self):
        g = gen(9)
        image = torch.rand(2, 3, 224, 224, generator=g)
        noisy_border = image.clone()
        noisy_border[:, :, :10] = 0.0
        noisy_border[:, :, :, -10:] = 1.0
        a = vggface2_preprocess(image)
        assert torch.equal(a, vggface2_preprocess(noisy_border))
        # 204 -> 224 bilinear of the centre, as DECA's x[:, :, 10:214, 10:214]
        centre = image[:, [2, 1, 0], 10:214, 10:214] * 255
        centre = (centre - torch.tensor(VGGFACE2_MEAN_BGR).view(1, 3, 1, 1)) * 2 - 1
        ref = F.interpolate(centre, size=(224, 224), mode="bilinear", align_corners=False)
        assert torch.allclose(a, ref, atol=1e-3)

    def test_other_sizes(self):
        out = vggface2_preprocess(torch.rand(1, 3, 64, 80), margin=4, size=32)
        assert out.shape == (1, 3, 32, 32)
        with pytest.raises(ValueError, match="margin"):
            vggface2_preprocess(torch.rand(1, 3, 16, 16), margin=8)


class TestEmotionConsistency:
    def test_hand_computed(self):
        a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        b = torch.zeros(2, 2)
        assert emotion_consistency_loss(a, b).item() == pytest.approx(7.5)
        assert emotion_consistency_loss(a, b).item() == F.mse_loss(a, b).item()
        mask = torch.tensor([True, False])
        assert emotion_consistency_loss(a, b, mask).item() == pytest.approx(2.5)
        assert emotion_consistency_loss(a, b, torch.tensor([0.0, 1.0])).item() == 12.5

    def test_empty_mask_is_zero_and_differentiable(self):
        a = torch.ones(2, 3, requires_grad=True)
        loss = emotion_consistency_loss(a, torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool))
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(a.grad, torch.zeros(2, 3))

    def test_photo_features_get_no_gradient(self):
        a = torch.ones(2, 3, requires_grad=True)
        b = torch.zeros(2, 3, requires_grad=True)
        emotion_consistency_loss(a, b).backward()
        assert a.grad is not None
        assert b.grad is None


# ---------------------------------------------------------------------------------------------
# Regularisers


def test_coefficient_regulariser_sums_over_the_batch():
    beta = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert coefficient_regulariser(beta).item() == 7.0  # (1 + 4 + 9) / 2
    assert coefficient_regulariser(beta, reduction="mean").item() == 3.5
    doubled = torch.cat([beta, beta])
    assert coefficient_regulariser(doubled).item() == 14.0
    with pytest.raises(ValueError, match="reduction"):
        coefficient_regulariser(beta, reduction="max")  # type: ignore[arg-type]


def test_light_regulariser():
    light = torch.zeros(1, 9, 3)
    light[0, 0] = torch.tensor([1.0, 2.0, 3.0])
    # grey mean 2: squared deviations 1, 0, 1 over 27 entries
    assert light_regulariser(light).item() == pytest.approx(2 / 27)
    assert light_regulariser(torch.ones(2, 9, 3) * 0.7).item() == 0.0


def test_jaw_regulariser():
    jaw = torch.tensor([[-0.1, 0.3, 0.2], [0.4, 0.0, 0.0]])
    # roll: 100 * 0.2^2 / 2 = 2; over-closing (negative x) only in item 0: 10 * 0.01 / 2
    assert jaw_regulariser(jaw).item() == pytest.approx(2.05)
    assert jaw_regulariser(jaw, roll_weight=0.0, close_weight=1.0).item() == pytest.approx(0.005)


# ---------------------------------------------------------------------------------------------
# Consistency


class TestGroupPermutation:
    def test_never_leaves_the_group(self):
        g = gen(10)
        for num_groups, k in ((1, 1), (3, 2), (4, 3), (5, 4)):
            for _ in range(50):
                order = group_permutation(num_groups, k, generator=g)
                assert order.dtype == torch.int64
                assert sorted(order.tolist()) == list(range(num_groups * k))
                assert torch.equal(order // k, torch.arange(num_groups * k) // k)

    def test_actually_shuffles(self):
        g = gen(11)
        orders = {tuple(group_permutation(2, 3, generator=g).tolist()) for _ in range(200)}
        assert len(orders) == 36  # 3! x 3! within-group permutations, all reached

    def test_reproducible(self):
        a = group_permutation(4, 3, generator=gen(12))
        b = group_permutation(4, 3, generator=gen(12))
        assert torch.equal(a, b)

    def test_permute_codes(self):
        g = gen(13)
        ids = torch.arange(4).repeat_interleave(3)  # identity of each row
        codes = torch.stack([ids.float(), torch.arange(12.0)], dim=1)
        for _ in range(20):
            swapped = permute_within_groups(codes, 3, generator=g)
            assert torch.equal(swapped[:, 0], codes[:, 0])  # same identity in every row
            assert sorted(swapped[:, 1].tolist()) == list(range(12))
        with pytest.raises(ValueError, match="groups of 3"):
            permute_within_groups(torch.zeros(7, 2), 3)


# ---------------------------------------------------------------------------------------------
# Detail stage


def test_crop_uv_face_is_decas_box():
    uv = torch.rand(2, 3, 256, 256, generator=gen(14))
    assert torch.allclose(crop_uv_face(uv, size=156), uv[:, :, 50:206, 50:206])
    assert crop_uv_face(uv).shape == (2, 3, 256, 256)
    # 512 maps scale the box: 100:412
    uv512 = torch.rand(1, 1, 512, 512, generator=gen(15))
    assert torch.allclose(crop_uv_face(uv512, size=312), uv512[:, :, 100:412, 100:412])


def test_uv_photometric_loss():
    pred = torch.full((1, 3, 2, 2), 0.5)
    target = torch.zeros(1, 3, 2, 2)
    vis = torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]])
    # |0.5 * 1| + |0.5 * 0.5| per channel over 4 pixels
    assert uv_photometric_loss(pred, target, vis).item() == pytest.approx(0.75 / 4)


def test_displacement_regulariser():
    z = torch.tensor([[[[0.01, -0.03], [0.0, 0.02]]]])
    assert displacement_regulariser(z).item() == pytest.approx(0.015)


class TestShadingSmooth:
    def test_ramps(self):
        h, w = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
        s = (2 * w + 3 * h).expand(2, 3, 5, 6)
        assert shading_smooth_loss(s).item() == pytest.approx(4 + 9)

    def test_only_interior_rows_and_columns(self):
        s = torch.zeros(1, 1, 4, 4)
        s[0, 0, 0, 1] = 1.0  # on the first row: skipped by dx (rows 1:-1) and dy (cols 1:-1 ok)
        # dy = S[1:, 1:-1] - S[:-1, 1:-1]: (1, 0, 1) -> one difference of -1 among 3 x 2
        assert shading_smooth_loss(s).item() == pytest.approx(1 / 6)

    def test_gradient_exists(self):
        s = torch.rand(1, 3, 6, 6, generator=gen(16), requires_grad=True)
        shading_smooth_loss(s).backward()
        assert s.grad is not None
        assert s.grad.abs().sum() > 0


class TestErosionAndSymmetry:
    def test_erosion_hand(self):
        mask = torch.ones(1, 1, 7, 7)
        expected = torch.zeros(1, 1, 7, 7)
        expected[..., 2:5, 2:5] = 1
        assert torch.equal(binary_erosion(mask), expected)
        assert torch.equal(binary_erosion(mask, 3)[..., 1:6, 1:6], torch.ones(1, 1, 5, 5))

    def test_erosion_matches_scipy(self):
        ndimage = pytest.importorskip("scipy.ndimage")
        g = gen(17)
        mask = (torch.rand(3, 1, 20, 24, generator=g) > 0.2).float()
        mask[1, 0, 3:17, 4:20] = 0.7  # non-zero counts as set, as in scipy
        ours = binary_erosion(mask)
        for i in range(3):
            ref = ndimage.binary_erosion(mask[i, 0].numpy(), structure=torch.ones(5, 5).numpy())
            assert torch.equal(ours[i, 0], torch.from_numpy(ref).float())

    def test_symmetry_hand(self):
        z = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]], requires_grad=True)
        loss = symmetry_loss(z, torch.zeros(1, 1, 1, 4))
        assert loss.item() == 8.0  # |1-4| + |2-3| + |3-2| + |4-1|
        loss.backward()
        # the flipped map is detached: only the direct term has a gradient
        assert torch.equal(z.grad, torch.tensor([[[[-1.0, -1.0, 1.0, 1.0]]]]))

    def test_symmetry_only_where_hidden(self):
        z = torch.rand(1, 1, 9, 9, generator=gen(18))
        vis = torch.ones(1, 1, 9, 9)
        hidden = torch.ones(1, 1, 9, 9)
        hidden[..., 2:7, 2:7] = 0  # eroded visible core
        expected = (hidden * (z - z.flip(-1)).abs()).sum()
        assert symmetry_loss(z, vis).item() == pytest.approx(expected.item())

    def test_symmetry_gradcheck(self):
        # The flipped map is a constant (stop-gradient), so finite differences agree with
        # autograd only for values whose mirror image is not penalised: vary the left half and
        # keep the right half visible (no erosion).
        g = gen(19)
        left = torch.rand(2, 1, 6, 4, generator=g, dtype=F64, requires_grad=True)
        right = torch.rand(2, 1, 6, 4, generator=g, dtype=F64)
        vis = torch.ones(2, 1, 6, 8, dtype=F64)
        vis[..., :4] = (torch.rand(2, 1, 6, 4, generator=g) > 0.5).to(F64)

        def loss(values):
            return symmetry_loss(torch.cat([values, right], dim=-1), vis, erosion_size=1)

        assert gradcheck(loss, (left,))


# ---------------------------------------------------------------------------------------------
# ID-MRF


def mrf_reference(gen_feats, tar_feats, bias=1.0, sigma=0.5):
    """DECA's IDMRFLoss.mrf_loss, step by step (conv with 1x1 target patches, exp, sum)."""
    mean_t = tar_feats.mean(1, keepdim=True)
    g = gen_feats - mean_t
    t = tar_feats - mean_t
    g = g / g.norm(p=2, dim=1, keepdim=True)
    t = t / t.norm(p=2, dim=1, keepdim=True)
    losses = []
    for i in range(t.shape[0]):
        patches = t[i].flatten(1).T[:, :, None, None]  # (N_target, C, 1, 1)
        cos = F.conv2d(g[i : i + 1], patches)  # (1, N_target, H, W)
        d = -(cos - 1) / 2
        rel = d / (d.min(dim=1, keepdim=True).values + 1e-5)
        w = torch.exp((bias - rel) / sigma)
        cx = w / w.sum(dim=1, keepdim=True)
        k_max = cx.flatten(2).max(dim=2).values
        losses.append(-torch.log(k_max.mean(dim=1)))
    return torch.cat(losses).sum()


class TestMRF:
    def test_matches_decas_computation(self):
        g = gen(20)
        a = torch.randn(2, 6, 3, 4, generator=g, dtype=F64)
        b = torch.randn(2, 6, 3, 4, generator=g, dtype=F64)
        assert torch.allclose(mrf_loss(a, b), mrf_reference(a, b), rtol=1e-10)
        assert torch.allclose(mrf_loss(a, a), mrf_reference(a, a), atol=1e-10)

    def test_identical_is_zero_and_nonnegative(self):
        a = torch.randn(3, 8, 4, 4, generator=gen(21), dtype=F64)
        assert mrf_loss(a, a).item() == pytest.approx(0.0, abs=1e-8)
        b = torch.randn(3, 8, 4, 4, generator=gen(22), dtype=F64)
        assert mrf_loss(b, a).item() > 0.1

    def test_hand_two_points(self):
        # C=2, two target points; generated equal to the target except swapped order: every
        # target point still has an exact match, so the loss is ~0 (ID-MRF is order-free).
        t = torch.tensor([[[[3.0, 0.0]], [[0.0, 2.0]]]], dtype=F64)  # (1, 2, 1, 2)
        assert mrf_loss(t.flip(-1), t.flip(-1)).item() == pytest.approx(0.0, abs=1e-8)
        # both generated points on target point 0: point 1 is never the best match.
        # Centred by the target's channel mean, t0 -> (1.5, -1.5), t1 -> (-1, 1): opposite,
        # so d(t0, t1) = 1 and CX(i, 1) = 0 to double precision; max_i CX(i, 0) = 1.
        g = torch.tensor([[[[3.0, 3.0]], [[0.0, 0.0]]]], dtype=F64)
        expected = -torch.log(torch.tensor(0.5, dtype=F64))  # -log((1 + 0) / 2)
        assert mrf_loss(g, t).item() == pytest.approx(expected.item(), rel=1e-6)

    def test_zero_feature_vectors_stay_finite(self):
        a = torch.zeros(1, 4, 2, 2)
        a[0, :, 0, 0] = torch.tensor([1.0, -1.0, 0.5, 0.0])
        assert torch.isfinite(mrf_loss(a, a))


@pytest.fixture(scope="module")
def idmrf():
    torch.manual_seed(0)
    return IDMRFLoss(VGG19Features())


def smooth_images(seed: int, size: int = 32) -> torch.Tensor:
    coarse = torch.rand(2, 3, 8, 8, generator=gen(seed))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


class TestIDMRF:
    def test_decas_layers(self, idmrf):
        assert DECA_IDMRF_STYLE_LAYERS == (("relu3_1", 1.0), ("relu4_1", 1.0))
        assert DECA_IDMRF_CONTENT_LAYERS == (("relu4_1", 1.0),)
        assert idmrf.style_layers == DECA_IDMRF_STYLE_LAYERS
        assert idmrf.lambda_style == idmrf.lambda_content == 1.0
        assert idmrf.sigma == 0.5

    def test_zero_for_identical_images(self, idmrf):
        target = smooth_images(23)
        with torch.no_grad():
            assert idmrf(target, target).item() == pytest.approx(0.0, abs=1e-4)

    def test_positive_and_decreasing_towards_target(self, idmrf):
        target = smooth_images(24)
        other = smooth_images(25)
        with torch.no_grad():
            values = [idmrf((1 - a) * other + a * target, target).item() for a in (0, 0.5, 0.75)]
        assert values[0] > values[1] > values[2] > 0
        assert values[2] > 1e-3

    def test_is_the_weighted_layer_sum(self, idmrf):
        a, b = smooth_images(26), smooth_images(27)
        layers = ("relu3_1", "relu4_1")
        with torch.no_grad():
            fa = idmrf.vgg(imagenet_normalize(a), layers)
            fb = idmrf.vgg(imagenet_normalize(b), layers)
            style = mrf_loss(fa["relu3_1"], fb["relu3_1"]) + mrf_loss(fa["relu4_1"], fb["relu4_1"])
            content = mrf_loss(fa["relu4_1"], fb["relu4_1"])
            assert torch.allclose(idmrf(a, b), style + content)

    def test_gradient_reaches_the_image_not_the_vgg(self, idmrf):
        target = smooth_images(28)
        generated = smooth_images(29).requires_grad_(True)
        idmrf(generated, target).backward()
        assert generated.grad is not None
        assert generated.grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in idmrf.vgg.parameters())


# ---------------------------------------------------------------------------------------------
# Weights


def test_deca_weights():
    w = DECA_WEIGHTS
    assert (w.landmark, w.eye_closure, w.lip_closure, w.photometric, w.identity) == (
        1.0,
        1.0,
        0.5,
        2.0,
        0.2,
    )
    assert (w.shape_reg, w.expression_reg, w.albedo_reg, w.light_reg) == (1e-4, 1e-4, 1e-4, 1.0)
    assert (w.detail_mrf, w.detail_photometric) == (5e-2, 2.0)
    assert (w.detail_symmetry, w.detail_displacement, w.detail_shading_smooth) == (5e-3,) * 3
    assert w.detail_mrf_total == pytest.approx(0.1)
    assert w.shape_consistency
    assert w.detail_consistency
    assert w.emotion == w.mouth_corner == w.jaw_reg == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.landmark = 2.0  # type: ignore[misc]


def test_emoca_weights():
    w = EMOCA_WEIGHTS
    assert (w.emotion, w.eye_closure, w.lip_closure, w.mouth_corner, w.photometric) == (
        1.0,
        0.5,
        0.5,
        0.5,
        2.0,
    )
    assert (w.landmark, w.identity) == (0.0, 0.0)
    assert (w.expression_reg, w.shape_reg, w.albedo_reg, w.light_reg) == (1e-4, 1e-4, 1e-5, 12.0)
    assert w.detail_photometric == 5.0
    assert w.detail_mrf_total == pytest.approx(0.25)
    assert not w.shape_consistency
    assert w.detail_consistency
    custom = dataclasses.replace(w, landmark_mediapipe=1.0)
    assert custom.landmark_mediapipe == 1.0
    assert w.landmark_mediapipe == 0.0

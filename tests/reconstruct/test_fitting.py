"""Weight-free fitting on the built-in head: faces rendered from known codes are fitted back."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from emorig.flame.builtin import builtin_head
from emorig.flame.data import MediapipeEmbedding
from emorig.flame.model import FlameModel
from emorig.geometry.landmarks import yaw_of_rotation
from emorig.geometry.mesh import vertex_normals
from emorig.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    yaw_pitch_roll_to_matrix,
)
from emorig.reconstruct.fitting import (
    FitResult,
    batched_lbfgs,
    fit,
    fit_landmarks,
    fit_photometric,
    initialise_pose,
    landmark_weights,
    project_landmarks,
)
from emorig.reconstruct.synthetic_eval import FIT_TEST_EXPRESSIONS, fit_test_codes
from emorig.render.face import FaceRenderer
from emorig.render.showcase import studio_light
from emorig.types import FaceCode

PX = 112.0  # pixels of a 224 crop per NDC unit
EXPRESSIONS = (*FIT_TEST_EXPRESSIONS, "eye_widen", "smirk_left", "lower_lip_down")


def known_codes(b, seed, yaw_degrees=None, dtype=torch.float32):
    """Random faces with known codes (:func:`~emorig.reconstruct.synthetic_eval.
    fit_test_codes`) mixing two of the ten :data:`EXPRESSIONS`."""
    return fit_test_codes(b, seed, yaw_degrees=yaw_degrees, expressions=EXPRESSIONS, dtype=dtype)


def yaw_degrees(pose):
    return torch.rad2deg(yaw_of_rotation(axis_angle_to_matrix(pose)))


def pitch_degrees(pose):
    r = axis_angle_to_matrix(pose)
    return torch.rad2deg(torch.atan2(-r[..., 1, 2], r[..., 2, 2]))


def face_vertex_error(renderer, true, fitted):
    """(B,) mean screen distance of the visible face vertices, as a fraction of the face width."""
    with torch.no_grad():
        a, b = renderer(true, 64), renderer(fitted, 64)
    screen_a, screen_b = a.screen_vertices[..., :2], b.screen_vertices[..., :2]
    lm = a.landmarks
    low, high = lm.min(1).values, lm.max(1).values
    inside = ((screen_a >= low[:, None]) & (screen_a <= high[:, None])).all(-1)
    facing = vertex_normals(a.flame.vertices, renderer.flame.faces)[..., 2] > 0.3
    keep = (inside & facing).float()
    error = (screen_a - screen_b).norm(dim=-1)
    width = (lm[:, 16] - lm[:, 0]).norm(dim=-1)
    return (error * keep).sum(1) / keep.sum(1) / width


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


@pytest.fixture(scope="module")
def known(renderer):
    code = known_codes(4, seed=2)
    with torch.no_grad():
        return code, renderer(code, 224)


@pytest.fixture(scope="module")
def clean_fit(renderer, known):
    return fit_landmarks(renderer.flame, known[1].landmarks, steps=100)


def test_landmark_weights_are_decas():
    w = landmark_weights()
    assert w.shape == (68,)
    assert w[[5, 6, 10, 11]].tolist() == [2.0] * 4
    assert w[[30, 31, 35]].tolist() == [3.0] * 3
    assert w[[27, 32, 34]].tolist() == [1.5] * 3
    assert w[[48, 54]].tolist() == [3.0] * 2
    assert w[[49, 60, 67]].tolist() == [1.5] * 3
    assert w[[0, 8, 17, 36, 47]].tolist() == [1.0] * 5


@pytest.mark.parametrize("yaw", [-40.0, 40.0])
@pytest.mark.parametrize("grid", [None, (-45.0, 0.0, 45.0)])
def test_initialisation_alone_gets_the_yaw_right(renderer, yaw, grid):
    code = known_codes(6, seed=3, yaw_degrees=yaw)
    with torch.no_grad():
        target = renderer(code, 224).landmarks
    kwargs = {} if grid is None else {"yaws": grid}
    pose, camera, residual = initialise_pose(renderer.flame, target, **kwargs)
    found = yaw_degrees(pose)
    assert (torch.sign(found) == math.copysign(1.0, yaw)).all()
    assert (found - yaw).abs().max() < 10.0
    assert (camera[:, 0] / code.camera[:, 0] - 1).abs().max() < 0.25
    assert residual.shape == (6,)
    assert (residual < 15.0).all()  # pixels: neutral template, unknown expression


@pytest.mark.parametrize("roll", [-15.0, 15.0])
def test_initialisation_finds_roll_scale_and_translation(renderer, roll):
    code = FaceCode.neutral(1).replace(
        global_pose=matrix_to_axis_angle(
            yaw_pitch_roll_to_matrix(*torch.deg2rad(torch.tensor([[10.0], [0.0], [roll]])))
        ),
        camera=torch.tensor([[8.0, 0.02, -0.03]]),
    )
    target = project_landmarks(renderer.flame, code)
    pose, camera, residual = initialise_pose(renderer.flame, target)
    r = axis_angle_to_matrix(pose)[0]
    assert abs(math.degrees(math.atan2(float(r[1, 0]), float(r[1, 1]))) - roll) < 2.0
    assert torch.allclose(camera, code.camera, rtol=0.02, atol=0.01)
    assert residual[0] < 2.0  # the grid has the yaw within 10 degrees


def test_fit_recovers_known_faces(renderer, known, clean_fit):
    true, out = known
    assert isinstance(clean_fit, FitResult)
    assert clean_fit.landmark_error.shape == (4,)
    assert (clean_fit.landmark_error < 0.8).all()  # pixels of a 224 crop
    assert (clean_fit.landmark_error_iod < 0.01).all()
    assert (face_vertex_error(renderer, true, clean_fit.code) < 0.015).all()
    assert (
        yaw_degrees(clean_fit.code.global_pose) - yaw_degrees(true.global_pose)
    ).abs().max() < 1.5
    pitch_error = pitch_degrees(clean_fit.code.global_pose) - pitch_degrees(true.global_pose)
    assert pitch_error.abs().max() < 2.0
    jaw_error = torch.rad2deg(clean_fit.code.jaw_pose[:, 0] - true.jaw_pose[:, 0])
    assert jaw_error.abs().max() < 1.5
    assert (clean_fit.code.camera[:, 0] / true.camera[:, 0] - 1).abs().max() < 0.05
    # per image at most 120 evaluations; the batch shares passes, some run for fewer images
    assert 0 < clean_fit.steps <= 4 * 120
    assert len(clean_fit.history) == clean_fit.steps
    assert clean_fit.history[-1] < clean_fit.history[0] / 20
    # the reported error is that of DECA's landmarks of the returned code
    again = (project_landmarks(renderer.flame, clean_fit.code) - out.landmarks) * PX
    assert torch.allclose(again.norm(dim=-1).mean(1), clean_fit.landmark_error, atol=1e-4)


def test_fit_with_noisy_landmarks(renderer):
    true = known_codes(4, seed=5)
    with torch.no_grad():
        out = renderer(true, 224)
    g = torch.Generator().manual_seed(0)
    noisy = out.landmarks + torch.randn(out.landmarks.shape, generator=g) / PX  # 1 px
    result = fit_landmarks(renderer.flame, noisy, steps=100)
    clean = ((project_landmarks(renderer.flame, result.code) - out.landmarks) * PX).norm(dim=-1)
    assert (clean.mean(1) < 1.5).all()
    assert (face_vertex_error(renderer, true, result.code) < 0.03).all()
    assert (yaw_degrees(result.code.global_pose) - yaw_degrees(true.global_pose)).abs().max() < 3
    jaw_error = torch.rad2deg(result.code.jaw_pose[:, 0] - true.jaw_pose[:, 0])
    assert jaw_error.abs().max() < 4.0


def test_a_batch_fits_as_each_image_alone(renderer, known, clean_fit):
    target = known[1].landmarks
    batch_lm = project_landmarks(renderer.flame, clean_fit.code)
    for i in (0, 3):
        alone = fit_landmarks(renderer.flame, target[i : i + 1], steps=100)
        alone_lm = project_landmarks(renderer.flame, alone.code)
        assert ((alone_lm - batch_lm[i : i + 1]) * PX).norm(dim=-1).max() < 0.05
        assert torch.allclose(
            alone.code.global_pose, clean_fit.code.global_pose[i : i + 1], atol=1e-3
        )
        assert torch.allclose(alone.code.shape, clean_fit.code.shape[i : i + 1], atol=0.05)


def test_float64_and_no_gradients_in_the_model():
    flame = FlameModel(builtin_head(), 100, 50, dtype=torch.float64)
    before = {k: v.clone() for k, v in flame.state_dict().items()}
    true = known_codes(2, seed=7, dtype=torch.float64)
    target = project_landmarks(flame, true)
    assert target.dtype == torch.float64
    result = fit_landmarks(flame, target, steps=80)
    assert result.code.shape.dtype == torch.float64
    assert result.code.camera.dtype == torch.float64
    assert not result.code.shape.requires_grad
    assert (result.landmark_error < 1.0).all()
    for name, value in flame.state_dict().items():
        assert torch.equal(value, before[name]), name
    for value in flame.buffers():
        assert not value.requires_grad
        assert value.grad is None


def test_dense_mediapipe_targets(renderer):
    """A stand-in MediaPipe embedding: 30 points on faces the landmarks use."""
    head = builtin_head()
    faces = np.asarray(head.landmarks.static_faces[:30])
    embedding = MediapipeEmbedding(
        faces=faces, bary=np.full((30, 3), 1 / 3), mediapipe_index=np.arange(30)
    )
    flame = FlameModel(dataclasses.replace(head, mediapipe=embedding), 100, 50)
    true = known_codes(2, seed=9)
    with torch.no_grad():
        out = flame(true.shape, true.expression, true.global_pose, true.jaw_pose)
        dense = (out.mediapipe[..., :2] + true.camera[:, None, 1:]) * true.camera[:, None, :1]
        dense = dense * torch.tensor([1.0, -1.0])
    target = project_landmarks(flame, true)
    result = fit_landmarks(flame, target, dense=dense, steps=80)
    assert (result.landmark_error < 1.0).all()
    with pytest.raises(ValueError, match="MediaPipe"):
        fit_landmarks(renderer.flame, target, dense=dense, steps=1)
    with pytest.raises(ValueError, match="dense"):
        fit_landmarks(flame, target, dense=dense[:, :10], steps=1)


def test_bad_inputs_are_refused(renderer):
    flame = renderer.flame
    with pytest.raises(ValueError, match="landmarks"):
        fit_landmarks(flame, torch.zeros(1, 51, 2))
    with pytest.raises(ValueError, match="optimizer"):
        fit_landmarks(flame, torch.zeros(1, 68, 2), optimizer="sgd", steps=2)
    with pytest.raises(ValueError, match="init"):
        fit_landmarks(flame, torch.zeros(2, 68, 2), init=FaceCode.neutral(1))
    code = FaceCode.neutral(1)
    with pytest.raises(ValueError, match="optimise"):
        fit_photometric(renderer, torch.zeros(1, 3, 32, 32), code, optimise=("detail",))
    with pytest.raises(ValueError, match="images"):
        fit_photometric(renderer, torch.zeros(1, 32, 32), code)


@pytest.mark.parametrize("optimizer", ["adam", "torch-lbfgs"])
def test_torch_optimizers_run(renderer, known, optimizer):
    result = fit_landmarks(
        renderer.flame, known[1].landmarks[:1], steps=30, rigid_steps=0, optimizer=optimizer
    )
    assert result.steps <= 30
    assert result.history[-1] < result.history[0] / 2


def test_photometric_fit_recovers_albedo_and_light(renderer):
    b = 2
    g = torch.Generator().manual_seed(4)
    albedo = torch.zeros(b, 50)
    albedo[:, :10] = 0.5 * torch.randn(b, 10, generator=g)
    light = studio_light(b)
    light[:, 0] *= torch.tensor([0.85, 1.15])[:, None]
    light[:, 1:4] += 0.2 * torch.randn(b, 3, 3, generator=g)
    true = known_codes(b, seed=6).replace(albedo=albedo, light=light)
    with torch.no_grad():
        image = renderer(true, 224).buffers.rendered
    start = true.replace(albedo=torch.zeros(b, 50), light=FaceCode.neutral(b).light)
    result = fit_photometric(renderer, image, start, steps=100)

    def error(code):
        with torch.no_grad():
            buffers = renderer(code, 224).buffers
        return ((buffers.rendered - image).abs() * buffers.mask).sum((1, 2, 3)) / (
            3 * buffers.mask.sum((1, 2, 3))
        )

    assert (error(start) / error(result.code) > 15).all()
    dc = result.code.light[:, 0]
    assert ((dc - light[:, 0]).abs() / light[:, 0]).max() < 0.1
    # geometry untouched, photometric error reported at the fitting resolution
    assert torch.equal(result.code.shape, start.shape)
    assert result.photometric_error.shape == (b,)
    assert (result.photometric_error < 0.02).all()
    assert result.landmark_error is None


def test_photometric_fit_can_move_geometry_inside_a_mask(renderer):
    true = known_codes(1, seed=10)
    with torch.no_grad():
        image = renderer(true, 64).buffers.rendered
    start = true.replace(expression=torch.zeros(1, 50))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0
    result = fit_photometric(
        renderer, image, start, mask=mask, steps=8, size=48, optimise=("light", "expression")
    )
    assert not torch.equal(result.code.expression, start.expression)
    assert not torch.equal(result.code.light, start.light)
    assert torch.equal(result.code.albedo, start.albedo)
    assert result.history[-1] < result.history[0]


def test_fit_runs_both_stages(renderer):
    true = known_codes(2, seed=8)
    with torch.no_grad():
        out = renderer(true, 224)
    image = out.buffers.rendered.clamp(0, 1)
    result = fit(renderer, image, out.landmarks, landmark_steps=60, photometric_steps=20)
    assert result.steps == len(result.history)
    assert result.steps > 60
    assert (result.landmark_error < 1.5).all()
    assert result.photometric_error is not None
    assert result.code.albedo.abs().sum() > 0
    assert result.seconds > 0
    only = fit(renderer, image, out.landmarks, photometric=False, landmark_steps=20)
    assert only.photometric_error is None


def test_batched_lbfgs_keeps_the_entries_independent():
    """On quadratics of different conditioning, a batch reaches what each entry reaches alone."""
    g = torch.Generator().manual_seed(0)
    b, n = 3, 20
    q = torch.randn(b, n, n, generator=g, dtype=torch.float64)
    a = q @ q.transpose(1, 2) / n + torch.diag_embed(torch.logspace(-2, 1, n, dtype=torch.float64))
    centre = torch.randn(b, n, generator=g, dtype=torch.float64)

    def solve(rows, budget, tolerance=1e-9):
        x = torch.zeros(len(rows), n, dtype=torch.float64, requires_grad=True)

        def objective():
            d = x - centre[rows]
            return 0.5 * (d[:, None] @ a[rows] @ d[:, :, None])[:, 0, 0]

        batched_lbfgs(objective, [x], budget, tolerance=tolerance)
        return x.detach()

    partial = solve([0, 1, 2], 12)  # far from converged: the paths themselves must agree
    assert (partial - centre).abs().max() > 1e-3
    for i in range(b):
        assert torch.allclose(solve([i], 12)[0], partial[i], atol=1e-10)
    assert torch.allclose(solve([0, 1, 2], 200, 0.0), centre, atol=1e-6)

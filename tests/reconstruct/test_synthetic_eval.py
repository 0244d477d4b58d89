import pytest
import torch

from emorig.flame.builtin import builtin_head
from emorig.reconstruct.deca import DecaConfig, DecaModel
from emorig.reconstruct.synthetic_eval import evaluate_encoder, score_codes
from emorig.render.face import FaceRenderer
from emorig.synth.sampling import SynthConfig, synthetic_batch


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


def test_scores_are_zero_for_the_truth_and_grow_with_error(renderer):
    b = synthetic_batch(renderer, 4, SynthConfig(), torch.Generator().manual_seed(0))
    exact = score_codes(renderer, b.code, b.code)
    assert exact.landmark_px < 1e-4
    assert exact.vertex_pct < 1e-4
    assert exact.yaw_deg < 1e-4
    off = b.code.replace(jaw_pose=b.code.jaw_pose + torch.tensor([0.1, 0.0, 0.0]))
    s = score_codes(renderer, off, b.code)
    assert abs(s.jaw_deg - 0.1 * 180 / 3.14159265) < 1e-3
    assert s.landmark_px > 0.5
    shifted = b.code.replace(camera=b.code.camera + torch.tensor([0.0, 0.01, 0.0]))
    assert score_codes(renderer, shifted, b.code).vertex_pct > 1.0


def test_evaluate_encoder_runs_on_held_out_faces(renderer):
    torch.manual_seed(0)
    model = DecaModel(DecaConfig(backbone="resnet18", backbone_width=8)).eval()
    s = evaluate_encoder(model, renderer, n=4, batch=2)
    assert s.n == 4
    assert s.landmark_px > 0  # an untrained network is not exact

import json

import numpy as np
import pytest
import torch
from torch import nn

from emorig.emotion.emodeca import (
    EmoDecaConfig,
    EmoDecaMLP,
    EmoDecaRecognizer,
    codes_to_features,
    emodeca_loss,
    load_emodeca,
    save_emodeca,
    va_term_weights,
)
from emorig.errors import AssetError
from emorig.types import EmotionOutput, FaceCode

SMALL = EmoDecaConfig(n_shape=4, n_expression=6, hidden=32, layers=2)


def random_code(batch, n_shape=100, n_expression=50, seed=0, detail=False):
    g = torch.Generator().manual_seed(seed)
    code = FaceCode.neutral(batch, n_shape=n_shape, n_expression=n_expression)
    return code.replace(
        shape=torch.randn(batch, n_shape, generator=g),
        expression=torch.randn(batch, n_expression, generator=g),
        global_pose=torch.randn(batch, 3, generator=g) * 0.1,
        jaw_pose=torch.randn(batch, 3, generator=g) * 0.1,
        detail=torch.randn(batch, 128, generator=g) if detail else None,
    )


def test_default_architecture_is_emocas():
    model = EmoDecaMLP()
    assert model.config.in_features == 100 + 50 + 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (153, 2048),
        (2048, 2048),
        (2048, 2048),
        (2048, 2048),
        (2048, 10),
    ]
    kinds = [type(m).__name__ for m in model.hidden]
    assert kinds == ["Linear", "BatchNorm1d", "LeakyReLU"] * 4
    assert all(m.negative_slope == 0.2 for m in model.hidden if isinstance(m, nn.LeakyReLU))


def test_forward_shapes():
    model = EmoDecaMLP().eval()
    code = random_code(3, n_shape=300, n_expression=100)  # FLAME-sized codes are cut to 100/50
    with torch.no_grad():
        out = model(code)
    assert isinstance(out, EmotionOutput)
    assert out.logits.shape == (3, 8)
    assert out.valence_arousal.shape == (3, 2)
    assert out.features.shape == (3, 2048)
    assert torch.allclose(out.probabilities.sum(-1), torch.ones(3), atol=1e-5)
    assert model.feature_dim == 2048


def test_codes_to_features_order_and_options():
    code = random_code(2, seed=1, detail=True)
    x = codes_to_features(code)
    expected = torch.cat([code.shape[:, :100], code.expression[:, :50], code.jaw_pose], 1)
    assert torch.equal(x, expected)
    cfg = EmoDecaConfig(use_identity=False, use_global_pose=True, use_detail=True)
    x = codes_to_features(code, cfg)
    assert x.shape == (2, cfg.in_features) == (2, 50 + 3 + 3 + 128)
    assert torch.equal(x[:, 50:53], code.global_pose)
    assert torch.equal(x[:, 53:56], code.jaw_pose)
    with pytest.raises(ValueError, match="has 10 identity"):
        codes_to_features(random_code(1, n_shape=10))
    with pytest.raises(ValueError, match="detail"):
        codes_to_features(random_code(1), cfg)


def test_shake_weights():
    g = torch.Generator().manual_seed(0)
    draws = [va_term_weights("shake", True, g) for _ in range(3)]
    for w in draws:
        assert len(w) == 4
        assert sum(w) == pytest.approx(1.0)
        assert all(0 < v < 1 for v in w)
    assert draws[0] != draws[1]
    again = va_term_weights("shake", True, torch.Generator().manual_seed(0))
    assert again == draws[0]
    assert va_term_weights("shake", training=False) == (1.0, 1.0, 1.0, 1.0)  # as upstream
    assert va_term_weights("norm") == (0.25, 0.25, 0.25, 0.25)
    assert va_term_weights("none") == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="scheme"):
        va_term_weights("wiggle")


def test_loss_terms_hand_computed():
    logits = torch.log_softmax(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0, 0, 3.0]]), 1)
    pred = torch.tensor([[0.1, 0.5], [0.4, -0.2], [-0.3, 0.0]])
    target = torch.tensor([[0.0, 0.6], [0.5, -0.1], [-0.5, 0.2]])
    labels = torch.tensor([0, 2, 2])
    out = EmotionOutput(logits, pred, torch.zeros(3, 1))
    loss = emodeca_loss(out, labels, target, scheme="none")
    p, t = pred.double().numpy(), target.double().numpy()

    def ccc_unbiased(a, b):  # EMOCA's CCC_torch (torch.std is unbiased)
        r = np.corrcoef(a, b)[0, 1]
        sa, sb = a.std(ddof=1), b.std(ddof=1)
        return 2 * r * sa * sb / (sa**2 + sb**2 + (a.mean() - b.mean()) ** 2)

    nll = -(logits[0, 0] + logits[1, 2] + logits[2, 2]).item() / 3
    lpcc = 1 - 0.5 * sum(np.corrcoef(p[:, k], t[:, k])[0, 1] for k in (0, 1))
    lccc = 1 - 0.5 * sum(ccc_unbiased(p[:, k], t[:, k]) for k in (0, 1))
    v_mse, a_mse = ((p - t) ** 2).mean(0)
    assert loss.expression_nll.item() == pytest.approx(nll, rel=1e-5)
    assert loss.v_mse.item() == pytest.approx(v_mse, rel=1e-5)
    assert loss.a_mse.item() == pytest.approx(a_mse, rel=1e-5)
    assert loss.va_lpcc.item() == pytest.approx(lpcc, rel=1e-5)
    assert loss.va_lccc.item() == pytest.approx(lccc, rel=1e-5)
    total = nll + v_mse + a_mse + lpcc + lccc
    assert loss.total.item() == pytest.approx(total, rel=1e-5)
    shaken = emodeca_loss(out, labels, target, torch.Generator().manual_seed(3))
    w = shaken.weights
    expected = nll + w[0] * v_mse + w[1] * a_mse + w[2] * lpcc + w[3] * lccc
    assert shaken.total.item() == pytest.approx(expected, rel=1e-5)
    # a constant batch of labels gives finite values where upstream divides by zero
    flat = emodeca_loss(out, labels, torch.full((3, 2), 0.2), scheme="none")
    assert torch.isfinite(flat.total)
    with pytest.raises(ValueError, match="at least 2"):
        emodeca_loss(out[:1], labels[:1], target[:1])


def test_loss_decreases_on_a_separable_toy_problem():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, SMALL.n_expression, generator=g) * 2
    va_of_class = torch.rand(8, 2, generator=g) * 1.6 - 0.8
    model = EmoDecaMLP(SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(n=64):
        y = torch.randint(0, 8, (n,), generator=g)
        code = random_code(n, n_shape=4, n_expression=6, seed=int(torch.randint(1 << 30, (1,))))
        code = code.replace(expression=centres[y] + 0.3 * code.expression)
        return code, y, va_of_class[y]

    code, y, va = batch(256)
    model.eval()
    with torch.no_grad():
        before = emodeca_loss(model(code), y, va, training=False).total.item()
    model.train()
    for _ in range(40):
        c, yy, vv = batch()
        loss = emodeca_loss(model(c), yy, vv, g).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(code)
        after = emodeca_loss(out, y, va, training=False).total.item()
    assert after < 0.35 * before
    assert (out.predicted == y).float().mean() > 0.9


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = EmoDecaMLP(SMALL)
    model.train()
    model(random_code(16, n_shape=4, n_expression=6))  # move the BatchNorm statistics
    model.eval()
    folder = save_emodeca(model, tmp_path / "emodeca")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "emorig-emodeca"
    assert meta["config"]["hidden"] == 32
    loaded = load_emodeca(folder)
    assert loaded.config == model.config
    assert not loaded.training
    code = random_code(5, n_shape=4, n_expression=6, seed=7)
    with torch.no_grad():
        a, b = model(code), loaded(code)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.valence_arousal, b.valence_arousal)

    meta["config"]["hidden"] = 16  # the weights no longer fit
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(AssetError, match="does not match its config"):
        load_emodeca(folder)
    meta["config"]["colour"] = 1
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(AssetError, match="unknown config settings"):
        load_emodeca(folder)
    with pytest.raises(AssetError, match="not found"):
        load_emodeca(tmp_path / "nowhere")


class StubEncoder(nn.Module):
    """images -> FaceCode from the mean colour (stands in for a frozen DECA)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4 + 6 + 3)

    def encode(self, images):
        z = self.proj(images.mean((2, 3)))
        code = FaceCode.neutral(images.shape[0], n_shape=4, n_expression=6)
        return code.replace(shape=z[:, :4], expression=z[:, 4:10], jaw_pose=z[:, 10:])


def test_recognizer_runs_the_frozen_encoder():
    rec = EmoDecaRecognizer(StubEncoder(), EmoDecaMLP(SMALL)).train()
    assert not rec.encoder.training
    assert not any(p.requires_grad for p in rec.encoder.parameters())
    out = rec(torch.rand(4, 3, 112, 112))
    assert out.logits.shape == (4, 8)
    assert out.valence_arousal.shape == (4, 2)
    assert out.features.shape == (4, 32)
    assert rec.feature_dim == 32
    assert rec.input_size == 224
    assert rec.predicts_va

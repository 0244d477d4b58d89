"""DiffusionRig-EMO: the expression encoder starts with zero effect on a loaded DiffusionRig
model, the emotion loss reaches the denoiser, EMO training runs, and emotion-level editing
moves the recogniser's prediction towards what was asked."""

import json

import pytest
import torch

from emorig.data.dataset import BufferDataset
from emorig.diffusion import RigConfig, RigModel
from emorig.diffusion.model import with_expression
from emorig.diffusion.pipeline import RigPipeline
from emorig.edit.emotion import (
    EmotionTarget,
    RenderedPredictor,
    find_expression,
    preset_start,
    train_code_predictor,
)
from emorig.emotion.crops import face_crops
from emorig.emotion.presets import labelled_codes
from emorig.emotion.recognizers import (
    ResNetEmotionConfig,
    ResNetEmotionRecognizer,
    load_recognizer,
    save_recognizer,
)
from emorig.errors import EmorigError
from emorig.flame.builtin import builtin_head
from emorig.render.face import FaceRenderer
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from emorig.train.diffusion import RigTrainConfig, train_rig
from emorig.train.emo import EmoTerms
from emorig.types import EMOTION_CLASSES, FaceCode


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_zero_initialised_expression_encoder_changes_nothing():
    # A loaded DiffusionRig model (all weights non-zero, as after training) ...
    model = _randomise(RigModel(RigConfig.tiny())).eval()
    extended = with_expression(model, 16, input_dim=53, source="code").eval()
    assert extended.expression_encoder is not None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    cond = torch.randn(2, 9, 32, 32, generator=g)
    latent = torch.randn(2, model.config.latent_dim, generator=g)
    expression = 3 * torch.randn(2, 53, generator=g)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        a = model(x, t, cond, latent=latent)
        b = extended(x, t, cond, latent=latent, expression=expression)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    # ... yet it can learn: the zero-initialised projections receive gradients.
    extended.train()
    extended(x, t, cond, latent=latent, expression=expression).pow(2).mean().backward()
    grads = [p.grad for n, p in extended.named_parameters() if ".expr_emb_layers." in n]
    assert grads
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.fixture(scope="module")
def recognizer_folder(tmp_path_factory):
    torch.manual_seed(0)
    net = ResNetEmotionRecognizer(
        ResNetEmotionConfig(backbone="resnet18", layout="torchvision", width=8, input_size=64)
    )
    return save_recognizer(net, tmp_path_factory.mktemp("recognizer"))


@pytest.fixture(scope="module")
def album(tmp_path_factory):
    out = tmp_path_factory.mktemp("album")
    write_prepared(
        SynthDatasetConfig(mode="album", count=8, size=32, album_size=8, supersample=1), out
    )
    return out


def test_emotion_loss_reaches_the_denoiser(album, recognizer_folder):
    ds = BufferDataset(album)
    items = [ds[i] for i in range(4)]
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "crop_transform": torch.stack([it["crop_transform"] for it in items]),
    }
    cfg = RigTrainConfig(
        stage="stage1", data=str(album), out="x", emotion_weight=1.0,
        recognizer=str(recognizer_folder),
    )  # fmt: skip
    emo = EmoTerms.build(cfg, torch.device("cpu"))
    model = _randomise(RigModel(RigConfig.tiny()))
    pipeline = RigPipeline(model)
    t = torch.tensor([5, 50, 200, 999])
    x0 = pipeline.to_model(batch["image"])
    x_t = pipeline.schedule.q_sample(x0, t, torch.randn(x0.shape))
    eps = model(x_t, t, torch.stack([it["condition"] for it in items]), x_start=x0)
    loss = emo.losses(batch, x_t, t, eps, pipeline)["emotion"]
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("denoisingUNet.")]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert all(p.grad is None for p in emo.recognizer.parameters())


def test_face_crops_follow_the_crop_transform():
    images = torch.zeros(1, 3, 32, 32)
    images[:, :, 8:24, 8:24] = 1.0  # a square the crop should fill
    m = torch.tensor([[[14.0, 0, -8 * 14], [0, 14.0, -8 * 14], [0, 0, 1]]], dtype=torch.float64)
    crop = face_crops(images, m, 56)  # 224 -> 56: scale 14 / 4 = 3.5 -> the square fills it
    assert crop.shape == (1, 3, 56, 56)
    assert crop[:, :, 2:-2, 2:-2].min() > 0.9


def test_emo_training_logs_both_terms(album, recognizer_folder, tmp_path):
    cfg = RigTrainConfig(
        stage="stage1", data=str(album), out=str(tmp_path), model="tiny", steps=3, batch_size=4,
        expression_dim=8, expression_source="emotion", emotion_weight=0.5,
        recognizer=str(recognizer_folder), log_every=1, sample_every=3, sample_steps="ddim3",
        cpu=True,
    )  # fmt: skip
    result = train_rig(cfg)
    records = [json.loads(x) for x in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert {"diffusion", "emotion"} <= set(records[-1])
    model = load_model(result.model_folder)
    assert model.config.expression_source == "emotion"
    assert model.config.expression_input_dim == load_recognizer(recognizer_folder).feature_dim
    with pytest.raises(EmorigError, match="recognizer"):
        RigTrainConfig(stage="stage1", data=str(album), out="y", emotion_weight=1.0)


def load_model(folder):
    from emorig.diffusion.pretrained import load_pretrained

    return load_pretrained(folder)


@pytest.fixture(scope="module")
def renderer():
    return FaceRenderer(builtin_head())


def _neutral_source(renderer):
    code, _, _, _ = labelled_codes(renderer, 1, torch.Generator().manual_seed(3), noise=0.0)
    return code.replace(
        expression=torch.zeros_like(code.expression), jaw_pose=torch.zeros_like(code.jaw_pose)
    )


@pytest.mark.parametrize("emotion", ["happy", "surprise"])
def test_emotion_edit_moves_the_recogniser_on_renders(renderer, emotion):
    from emorig.emotion.recognizers import load_fer_recognizer

    try:
        fer = load_fer_recognizer()
    except EmorigError as err:
        pytest.skip(f"FER recogniser unavailable: {err}")
    source = _neutral_source(renderer)
    predictor = RenderedPredictor(renderer, fer)
    found = find_expression(source, predictor, EmotionTarget(emotion, 1.0), steps=40)
    k = EMOTION_CLASSES.index(emotion)
    before = float(found.before.logits.exp()[0, k])
    after = float(found.after.logits.exp()[0, k])
    assert after > before + 0.1
    assert found.loss[-1] < found.loss[0]
    # Identity, pose, light and camera are untouched.
    for field in ("shape", "global_pose", "light", "camera", "albedo"):
        assert torch.equal(getattr(found.code, field), getattr(source, field)), field


def test_code_space_predictor_learns_presets_and_steers_valence(renderer):
    predictor = train_code_predictor(renderer, steps=60, batch_size=64)
    code, labels, _, _ = labelled_codes(renderer, 128, torch.Generator().manual_seed(9))
    with torch.no_grad():
        accuracy = float((predictor(code).predicted == labels).float().mean())
    assert accuracy > 0.6  # chance: 1/8
    source = _neutral_source(renderer)
    target = EmotionTarget(valence=0.8, arousal=0.4)
    found = find_expression(source, predictor, target, steps=80)
    va_before = found.before.valence_arousal[0]
    va_after = found.after.valence_arousal[0]
    goal = torch.tensor([0.8, 0.4])
    assert (va_after - goal).norm() < 0.5 * (va_before - goal).norm()
    start = preset_start(source, EmotionTarget("sad", 0.5))
    assert isinstance(start, FaceCode)
    assert not torch.equal(start.expression, source.expression)


def test_targets_are_checked():
    with pytest.raises(EmorigError, match="unknown emotion"):
        EmotionTarget("joy")
    with pytest.raises(EmorigError, match="together"):
        EmotionTarget(valence=0.3)
    with pytest.raises(EmorigError, match="ask for"):
        EmotionTarget()

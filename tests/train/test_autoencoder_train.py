"""`emorig train autoencoder`: a diffusers folder that the latent pipeline loads, with its
held-out PSNR and scaling factor; resumable; packed to float16 for shipping."""

import json

import pytest
import torch

from emorig.diffusion.autoencoder import load_autoencoder
from emorig.errors import EmorigError
from emorig.synth.datasets import SynthDatasetConfig
from emorig.synth.prepared import write_prepared
from emorig.train.autoencoder import (
    AutoencoderTrainConfig,
    build_autoencoder,
    evaluate_autoencoder,
    train_autoencoder,
)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces32")
    write_prepared(SynthDatasetConfig(mode="random", count=12, size=32, supersample=1), out)
    return out


def _held(faces):
    from emorig.data.dataset import BufferDataset

    data = BufferDataset(str(faces), codes=False)
    return torch.stack([data[i]["image"] for i in range(8, 12)])


def _cfg(data, out, **over):
    fields = dict(
        data=str(data), out=str(out), factor=4, steps=30, batch_size=4, crop=16, held_out=4,
        lr=2e-3, save_every=10, log_every=1, cpu=True,
    )  # fmt: skip
    fields.update(over)
    return AutoencoderTrainConfig(**fields)


def test_training_writes_a_loadable_folder_and_learns(faces, tmp_path):
    result = train_autoencoder(_cfg(faces, tmp_path / "run"))
    losses = [
        json.loads(x)["l1"] for x in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 30
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])
    # held-out reconstructions beat the same network before training
    torch.manual_seed(0)
    untrained, _ = evaluate_autoencoder(build_autoencoder(4, 4, 32).eval(), _held(faces))
    assert result.psnr > untrained + 1.5, (result.psnr, untrained)  # measured: +3.1 dB
    info = json.loads((result.model_folder / "training.json").read_text())
    assert info["held_out_images"] == 4
    assert info["held_out_psnr_db"] == pytest.approx(result.psnr, abs=0.01)
    ae = load_autoencoder(str(result.model_folder))
    assert (ae.factor, ae.latent_channels) == (4, 4)
    # the scaling factor makes the held-out latents about unit spread
    assert ae.scaling_factor == pytest.approx(1 / info["latent_std"], rel=1e-3)
    assert float(ae.encode(_held(faces)).std()) == pytest.approx(1.0, rel=0.05)
    # a resumed run with more steps continues from its checkpoint
    more = train_autoencoder(_cfg(faces, tmp_path / "run", steps=32))
    assert more.step == 32
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 32


def test_packed_float16_folder_loads_and_reconstructs_alike(faces, tmp_path):
    result = train_autoencoder(_cfg(faces, tmp_path / "run", steps=4))
    from emorig.weights.pack import pack

    packed = pack(result.model_folder, tmp_path / "packed")
    size = (packed / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < 0.6 * (result.model_folder / "diffusion_pytorch_model.safetensors").stat().st_size
    a, b = load_autoencoder(str(result.model_folder)), load_autoencoder(str(packed))
    assert next(b.parameters()).dtype == torch.float32
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(b.decode(b.encode(x)), a.decode(a.encode(x)), atol=5e-3, rtol=0)
    psnr_a, _ = evaluate_autoencoder(a.vae, x)
    psnr_b, _ = evaluate_autoencoder(b.vae, x)
    assert psnr_b == pytest.approx(psnr_a, abs=0.1)


def test_bad_settings_are_one_line(faces, tmp_path):
    with pytest.raises(EmorigError, match="factor 3"):
        _cfg(faces, tmp_path, factor=3)
    with pytest.raises(EmorigError, match="divisible"):
        _cfg(faces, tmp_path, crop=18)
    with pytest.raises(EmorigError, match="larger than the 32 px"):
        train_autoencoder(_cfg(faces, tmp_path / "big", crop=64))
    with pytest.raises(EmorigError, match="need more than"):
        train_autoencoder(_cfg(faces, tmp_path / "few", held_out=12))

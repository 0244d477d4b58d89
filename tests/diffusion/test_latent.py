"""Latent DiffusionRig-EMO: autoencoders (shipped and user folders), the latent model's
condition, DDIM in latent space, one training loop for pixels and latents, and pixel models
left exactly as they were."""

import json

import pytest
import torch

from emorig.diffusion.autoencoder import (
    BUILTIN_AUTOENCODERS,
    autoencoder_folder,
    buffer_images,
    load_autoencoder,
)
from emorig.diffusion.config import RigConfig
from emorig.diffusion.model import RigModel
from emorig.diffusion.pipeline import RigPipeline
from emorig.diffusion.sampling import ddim_invert, ddim_sample
from emorig.errors import AssetError, EmorigError


def _save_tiny_vae(folder, factor=4, scaling=0.7):
    from diffusers import AutoencoderKL

    widths = {2: (8, 16), 4: (8, 16, 16), 8: (8, 16, 16, 16)}[factor]
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling,
    )
    vae.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    return _save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


def _latent_config(vae, method="resize", **over):
    fields = dict(
        image_size=32,
        autoencoder=str(vae),
        autoencoder_factor=4,
        autoencoder_channels=4,
        condition_method=method,
        attention_resolutions=(4,),
    )
    fields.update(over)
    return RigConfig.tiny(**fields)


# -- autoencoders -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_AUTOENCODERS))
def test_builtin_autoencoder_round_trip_on_held_out_renders(name):
    """The shipped autoencoders reconstruct renders they never saw (another seed than their
    training set) within 1.5 dB of the PSNR measured when they were made, and above 23 dB."""
    from emorig.synth.datasets import SynthDatasetConfig, synthesize

    ae = load_autoencoder(name)
    assert ae.factor == BUILTIN_AUTOENCODERS[name]
    assert ae.synthetic
    info = json.loads((autoencoder_folder(name) / "training.json").read_text())
    config = SynthDatasetConfig(mode="random", count=4, size=256, seed=9_999)
    images = synthesize(config, with_buffers=False).images
    with torch.no_grad():
        latents = ae.encode(images)
        assert latents.shape == (4, 4, 256 // ae.factor, 256 // ae.factor)
        # scaled latents have about unit spread (the noise schedule assumes it)
        assert 0.5 < float(latents.std()) < 2.0
        out = ae.decode(latents).clamp(0, 1)
    mse = (out - images).pow(2).flatten(1).mean(1)
    psnr = float((10 * torch.log10(1 / mse)).mean())
    # measured: f4 25.1 dB (24.9 on its own 64 held-out images), f8 24.5 dB (24.7)
    assert psnr > info["held_out_psnr_db"] - 1.5, (psnr, info["held_out_psnr_db"])
    assert psnr > 23.0


def test_user_folder_and_pipeline_layout(tiny_vae, tmp_path):
    ae = load_autoencoder(str(tiny_vae))
    assert (ae.factor, ae.latent_channels, ae.scaling_factor) == (4, 4, 0.7)
    assert not ae.synthetic
    # a whole pipeline folder (Stable Diffusion's layout) is found through its vae/
    pipe = tmp_path / "sd"
    _save_tiny_vae(pipe / "vae", factor=2, scaling=0.18215)
    (pipe / "model_index.json").write_text("{}")
    ae2 = load_autoencoder(str(pipe))
    assert (ae2.factor, ae2.scaling_factor) == (2, 0.18215)
    x = torch.rand(2, 3, 32, 32)
    z = ae2.encode(x)
    assert z.shape == (2, 4, 16, 16)
    raw = ae2.vae.encode(x * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(z, raw * 0.18215)
    torch.testing.assert_close(ae2.decode(z), (ae2.vae.decode(raw).sample + 1) / 2)


def _broken_folders(tmp_path, tiny_vae):
    import shutil

    missing = tmp_path / "nowhere"
    a_file = tmp_path / "vae.safetensors"
    a_file.write_bytes(b"x")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    bad_json = tmp_path / "bad_json"
    shutil.copytree(tiny_vae, bad_json)
    (bad_json / "config.json").write_text("{not json")
    unet = tmp_path / "unet"
    shutil.copytree(tiny_vae, unet)
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_vae, no_weights)
    (no_weights / "diffusion_pytorch_model.safetensors").unlink()
    bad_weights = tmp_path / "bad_weights"
    shutil.copytree(tiny_vae, bad_weights)
    (bad_weights / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    return {
        missing: "nowhere",
        a_file: "vae.safetensors",
        no_config: "config.json",
        bad_json: "config.json",
        unet: "config.json",
        no_weights: "diffusion_pytorch_model.safetensors",
        bad_weights: "bad_weights",
    }


def test_broken_autoencoder_folders_give_one_line_naming_the_file(tmp_path, tiny_vae):
    for folder, named in _broken_folders(tmp_path, tiny_vae).items():
        with pytest.raises(AssetError) as err:
            load_autoencoder(str(folder))
        message = str(err.value)
        assert "\n" not in message, message
        assert named in message, message


def test_train_cli_refuses_a_missing_autoencoder_in_one_line(tmp_path, capsys):
    from emorig.cli.main import main

    code = main(
        ["train", "diffusion", "--stage", "stage1", "--data", str(tmp_path), "--out",
         str(tmp_path / "run"), "--autoencoder", str(tmp_path / "no_vae"), "--cpu"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert "no_vae" in err
    assert "no such autoencoder folder" in err


# -- the latent model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "channels"), [("resize", 9), ("unshuffle", 9 * 16), ("encode", 3 * 4)]
)
def test_condition_reaches_latent_size(tiny_vae, method, channels):
    config = _latent_config(tiny_vae, method)
    assert config.model_size == 8
    assert config.model_condition_channels == channels
    assert config.in_channels == 4 + channels
    assert config.out_channels == 4
    pipe = RigPipeline(RigModel(config).eval())
    cond = torch.rand(2, 9, 32, 32) * 2 - 0.5
    model_cond = pipe.model_condition(cond)
    assert model_cond.shape == (2, channels, 8, 8)
    if method == "resize":  # area averaging: block means
        torch.testing.assert_close(model_cond[:, :, 0, 0], cond[:, :, :4, :4].mean((2, 3)))
    if method == "encode":  # normals enter the autoencoder as (n + 1) / 2
        parts = buffer_images(cond, config.condition_names)
        torch.testing.assert_close(model_cond[:, 4:8], pipe.autoencoder.encode(parts[1]))
    with pytest.raises(ValueError, match="rendered at 32 px"):
        pipe.model_condition(torch.rand(2, 9, 8, 8))


def test_latent_inversion_then_sampling_reproduces_the_latents(tiny_vae):
    torch.manual_seed(0)
    model = RigModel(_latent_config(tiny_vae)).eval()
    pipe = RigPipeline(model)
    images, cond = torch.rand(2, 3, 32, 32), torch.rand(2, 9, 32, 32)
    latent = pipe.encode_latent(images)
    with torch.no_grad():
        x0 = pipe.to_model(images)
        assert x0.shape == pipe.model_shape(2) == (2, 4, 8, 8)
        denoise = pipe.denoiser(cond, latent)
        noise = ddim_invert(denoise, x0, pipe.schedule, "ddim50", fixed_point_iterations=2)
        back = ddim_sample(denoise, noise, pipe.schedule, "ddim50", clip_denoised=False)
        # the pipeline's own inversion ends at the same noise
        torch.testing.assert_close(pipe.invert(images, cond, latent, timesteps="ddim50"), noise)
    assert float((back - x0).abs().max()) < 2e-2 * float(x0.abs().max())
    assert float((noise - x0).abs().mean()) > 0.1  # the inversion went somewhere


def test_latent_predicted_images_pass_gradients_through_the_decoder(tiny_vae):
    """The emotion-consistency loss reads x0 decoded by the frozen autoencoder: gradients
    reach the noise estimate, none reach the autoencoder."""
    pipe = RigPipeline(RigModel(_latent_config(tiny_vae)))
    x_t = torch.randn(2, 4, 8, 8)
    eps = torch.randn(2, 4, 8, 8, requires_grad=True)
    images = pipe.predicted_images(x_t, torch.tensor([100, 500]), eps)
    assert images.shape == (2, 3, 32, 32)
    images.mean().backward()
    assert eps.grad is not None
    assert float(eps.grad.abs().sum()) > 0
    assert all(p.grad is None for p in pipe.autoencoder.parameters())


def test_mismatched_autoencoder_is_refused(tiny_vae, tmp_path):
    other = _save_tiny_vae(tmp_path / "f8", factor=8)
    model = RigModel(_latent_config(tiny_vae))
    with pytest.raises(EmorigError, match="f=4"):
        RigPipeline(model, autoencoder=load_autoencoder(str(other)))


def test_latent_config_round_trips_and_pixel_defaults_stay():
    pixel = RigConfig.official()
    assert not pixel.latent
    assert pixel.model_size == 256
    assert pixel.in_channels == 12
    latent = RigConfig.official(
        256, autoencoder="builtin-f8", autoencoder_factor=8, autoencoder_channels=4
    )
    assert latent.model_size == 32
    assert latent.channel_mult == (1, 2, 4, 4)
    assert latent.condition_method == "unshuffle"  # the measured default
    assert latent.in_channels == 4 + 9 * 64
    assert latent.out_channels == 4
    assert RigConfig.from_dict(json.loads(json.dumps(latent.to_dict()))) == latent
    # pixel configs are written without the latent fields, as before latent mode
    assert not {"autoencoder", "condition_method"} & set(pixel.to_dict())
    assert RigConfig.from_dict(pixel.to_dict()) == pixel
    with pytest.raises(ValueError, match="pixel model"):
        RigConfig(autoencoder_factor=8)


# -- one training loop ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def album32(tmp_path_factory):
    from emorig.synth.datasets import SynthDatasetConfig
    from emorig.synth.prepared import write_prepared

    out = tmp_path_factory.mktemp("album32")
    config = SynthDatasetConfig(mode="album", count=8, size=32, album_size=8, supersample=1)
    write_prepared(config, out)
    return out


@pytest.mark.parametrize("method", ["resize", "encode"])
def test_tiny_latent_model_overfits_one_batch_in_the_shared_loop(
    album32, tiny_vae, tmp_path, method
):
    """train_rig (the pixel models' loop) trains a latent model: the loss on one repeated
    batch of 8 falls, the exported folder names its autoencoder, and it edits."""
    from emorig.diffusion.pretrained import load_pretrained
    from emorig.train.diffusion import RigTrainConfig, train_rig

    cfg = RigTrainConfig(
        stage="stage1", data=str(album32), out=str(tmp_path / "run"), model="tiny", steps=60,
        batch_size=8, lr=3e-3, save_every=30, sample_every=60, sample_steps="ddim5",
        log_every=1, cpu=True, autoencoder=str(tiny_vae), condition_method=method, ema=0.9,
    )  # fmt: skip
    result = train_rig(cfg)
    lines = (tmp_path / "run" / "losses.jsonl").read_text().splitlines()
    losses = [json.loads(x)["diffusion"] for x in lines]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses
    model = load_pretrained(result.model_folder)
    assert model.config.latent
    assert model.config.autoencoder == str(tiny_vae.resolve())
    assert model.config.condition_method == method
    assert model.config.model_size == 8
    assert (tmp_path / "run" / "samples" / "step-00000060.png").is_file()
    # a resumed run with more steps continues from the checkpoint in the same space
    more = train_rig(cfg.__class__(**{**cfg.to_dict(), "steps": 62}))
    assert more.step == 62


def test_ablation_runs_in_latent_space(album32, tiny_vae, tmp_path):
    """`emorig ablation --init LATENT_MODEL`: every variant trains and edits in the model's
    latent space, on faces of its size, and the table says which model it started from."""
    from emorig.demo.ablation import AblationConfig, run_ablation
    from emorig.train.diffusion import RigTrainConfig, train_rig

    stage1 = train_rig(
        RigTrainConfig(
            stage="stage1", data=str(album32), out=str(tmp_path / "s1"), model="tiny", steps=2,
            batch_size=4, save_every=2, sample_every=1000, cpu=True, autoencoder=str(tiny_vae),
        )
    ).model_folder  # fmt: skip
    said = []
    cfg = AblationConfig(
        out=str(tmp_path / "ablation"), steps=1, train_faces=8, pairs=2, init=str(stage1)
    )
    table = run_ablation(cfg, said.append).read_text()
    assert "latent 4x8x8" in table
    assert str(stage1) in table
    rows = json.loads((tmp_path / "ablation" / "ablation.json").read_text())["rows"]
    assert len(rows) == 4
    assert all(r["expression_l2"] is not None for r in rows)
    from emorig.diffusion.pretrained import load_pretrained

    variant = load_pretrained(tmp_path / "ablation" / "runs" / "expression-encoder" / "model")
    assert variant.config.latent
    assert variant.config.expression_dim == 32


def test_pixel_model_predicts_exactly_as_before_latent_mode():
    """A pixel model folder written before latent mode predicts, samples, inverts and refines
    exactly as the code of that time did (tests/data/legacy_folders/README.md)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from emorig.diffusion.pretrained import load_pretrained

    legacy = Path(__file__).resolve().parents[1] / "data" / "legacy_folders"
    ref = load_file(str(legacy / "diffusion_prediction.safetensors"))
    model = load_pretrained(legacy / "diffusion").eval()
    assert not model.config.latent
    pipe = RigPipeline(model)
    images = (ref["x_start"] + 1) / 2
    with torch.no_grad():
        eps = model(ref["x_t"], ref["t"], ref["condition"], x_start=ref["x_start"])
        latent = pipe.encode_latent(images)
        sample = pipe.sample(ref["x_t"], ref["condition"], latent, timesteps="ddim5")
        inverted = pipe.invert(images, ref["condition"], latent, timesteps="ddim5")
        refined = pipe.refine(
            images, ref["condition"], latent, strength=0.6, timesteps="ddim5", seed=3
        )
    for name, value in (("eps", eps), ("sample", sample), ("inverted", inverted),
                        ("refined", refined)):  # fmt: skip
        torch.testing.assert_close(value, ref[name], rtol=0, atol=0, msg=name)


def test_stage2_and_edit_cli_work_in_latent_space(album32, tiny_vae, tmp_path, capsys):
    """A latent stage-1 model personalises (stage 2 keeps its space, a different
    --autoencoder is refused) and `emorig edit` edits with it (inversion, emotion)."""
    from emorig.cli.main import main
    from emorig.diffusion.pretrained import load_pretrained
    from emorig.train.diffusion import RigTrainConfig, train_rig

    def cfg(**over):
        fields = dict(
            stage="stage1", data=str(album32), out=str(tmp_path / "s1"), model="tiny", steps=2,
            batch_size=4, save_every=2, sample_every=1000, cpu=True, autoencoder=str(tiny_vae),
        )  # fmt: skip
        fields.update(over)
        return RigTrainConfig(**fields)

    stage1 = train_rig(cfg()).model_folder
    stage2 = train_rig(
        cfg(stage="stage2", init=str(stage1), out=str(tmp_path / "s2"), autoencoder=None)
    ).model_folder
    assert load_pretrained(stage2).config == load_pretrained(stage1).config
    other = _save_tiny_vae(tmp_path / "other", factor=2)
    with pytest.raises(EmorigError, match="cannot continue on"):
        train_rig(cfg(stage="stage2", init=str(stage1), out=str(tmp_path / "x"),
                      autoencoder=str(other)))  # fmt: skip
    code = main(
        ["edit", "--model", str(stage2), "--source", str(album32), "--indices", "0",
         "--emotion", "happy", "--invert", "--out", str(tmp_path / "edits")]
    )  # fmt: skip
    capsys.readouterr()
    assert code in (0, 1)  # 1: the emotion check found the untrained model's edit too weak
    assert (tmp_path / "edits" / "edits.json").is_file()
    from PIL import Image

    edits = [p for p in (tmp_path / "edits").iterdir() if p.name.endswith("_happy.png")]
    assert len(edits) == 1
    assert Image.open(edits[0]).size == (32, 32)  # decoded from 8x8 latents

"""Fixtures for the diffusion tests: DiffusionRig's state-dict layout written down independently
of our modules, tiny checkpoints in that layout, and weight randomisation for untrained models.

The expected key names and shapes below follow guided-diffusion's ``UNetModel`` construction
rules as DiffusionRig configures them (``ResBlock``: ``in_layers.{0,2}``, ``emb_layers.1``,
``cond_emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection`` when channels change;
``AttentionBlock``: ``norm``, ``qkv`` and ``proj_out`` as 1-D convolutions; blocks numbered
as they are appended) and torchvision's ResNet-18 naming for the encoder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import pytest
import torch

from emorig.diffusion import RigConfig, RigModel
from emorig.diffusion.unet import AttentionBlock, ResBlock

Shapes = dict[str, tuple[int, ...]]


def upstream_unet_shapes(
    *,
    channels: int,
    in_channels: int,
    channel_mult: Sequence[float],
    num_res_blocks: int,
    attention_ds: Sequence[int],
    latent_dim: int,
    out_channels: int = 3,
    resblock_updown: bool = True,
) -> Shapes:
    """Key -> shape of DiffusionRig's ``denoisingUNet`` state dict (no prefix)."""
    shapes: Shapes = {}
    emb = 4 * channels

    def linear(p: str, i: int, o: int) -> None:
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (o, i), (o,)

    def conv(p: str, i: int, o: int, k: int, dims: int = 2) -> None:
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (o, i, *([k] * dims)), (o,)

    def norm(p: str, c: int) -> None:
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (c,), (c,)

    def res(p: str, i: int, o: int) -> None:
        norm(f"{p}.in_layers.0", i)
        conv(f"{p}.in_layers.2", i, o, 3)
        linear(f"{p}.emb_layers.1", emb, 2 * o)
        linear(f"{p}.cond_emb_layers.1", latent_dim, 2 * o)
        norm(f"{p}.out_layers.0", o)
        conv(f"{p}.out_layers.3", o, o, 3)
        if i != o:
            conv(f"{p}.skip_connection", i, o, 1)

    def attn(p: str, c: int) -> None:
        norm(f"{p}.norm", c)
        conv(f"{p}.qkv", c, 3 * c, 1, dims=1)
        conv(f"{p}.proj_out", c, c, 1, dims=1)

    linear("time_embed.0", channels, emb)
    linear("time_embed.2", emb, emb)
    ch = int(channel_mult[0] * channels)
    conv("input_blocks.0.0", in_channels, ch, 3)
    skips, ds, block = [ch], 1, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out = int(mult * channels)
            res(f"input_blocks.{block}.0", ch, out)
            ch = out
            if ds in attention_ds:
                attn(f"input_blocks.{block}.1", ch)
            skips.append(ch)
            block += 1
        if level != len(channel_mult) - 1:
            if resblock_updown:
                res(f"input_blocks.{block}.0", ch, ch)
            else:
                conv(f"input_blocks.{block}.0.op", ch, ch, 3)
            skips.append(ch)
            block += 1
            ds *= 2
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    block = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            out = int(mult * channels)
            res(f"output_blocks.{block}.0", ch + skips.pop(), out)
            ch = out
            layer = 1
            if ds in attention_ds:
                attn(f"output_blocks.{block}.1", ch)
                layer = 2
            if level and i == num_res_blocks:
                if resblock_updown:
                    res(f"output_blocks.{block}.{layer}", ch, ch)
                else:
                    conv(f"output_blocks.{block}.{layer}.conv", ch, ch, 3)
                ds //= 2
            block += 1
    norm("out.0", ch)
    conv("out.2", int(channel_mult[0] * channels), out_channels, 3)
    return shapes


def torchvision_resnet18_shapes(width: int, latent_dim: int) -> Shapes:
    """Key -> shape of torchvision's ``resnet18()`` with ``fc = Linear(8 * width, latent_dim)``."""
    shapes: Shapes = {}

    def bn(p: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.{name}"] = (c,)
        shapes[f"{p}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (width, 3, 7, 7)
    bn("bn1", width)
    cin = width
    for stage in range(4):
        planes = width * 2**stage
        for b in range(2):
            p = f"layer{stage + 1}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if b == 0 and cin != planes:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
            cin = planes
    shapes["fc.weight"] = (latent_dim, cin)
    shapes["fc.bias"] = (latent_dim,)
    return shapes


def upstream_shapes_for(config: RigConfig) -> Shapes:
    """DiffusionRig's full ``state_dict`` layout (``denoisingUNet.*`` + ``encoder.*``)."""
    unet = upstream_unet_shapes(
        channels=config.channels,
        in_channels=3 + config.condition_channels,
        channel_mult=config.channel_mult,
        num_res_blocks=config.num_res_blocks,
        attention_ds=[config.image_size // r for r in config.attention_resolutions],
        latent_dim=config.latent_dim,
        resblock_updown=config.resblock_updown,
    )
    encoder = torchvision_resnet18_shapes(config.encoder_width, config.latent_dim)
    out = {f"denoisingUNet.{k}": v for k, v in unet.items()}
    out.update({f"encoder.{k}": v for k, v in encoder.items()})
    return out


def random_state(shapes: Shapes, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random tensors in a layout (positive running variances, integer batch counters)."""
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(123, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def randomize_zero_layers(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Give the zero-initialised output layers small random weights, so an untrained model
    predicts non-zero, input-dependent noise (its default init predicts exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for m in model.modules():
        if isinstance(m, ResBlock):
            layers.append(m.out_layers[3])
        elif isinstance(m, AttentionBlock):
            layers.append(m.proj_out)
    unet = getattr(model, "denoisingUNet", model)
    layers.append(unet.out[2])
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


# A tiny architecture everything about which can be inferred from a state dict (GroupNorm 32
# needs channel counts divisible by 32; heads, dropout and norm groups keep official values).
OFFICIAL_TINY = RigConfig(
    image_size=32,
    channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(16,),
    latent_dim=8,
    encoder_width=4,
)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU they thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def upstream_shapes() -> Callable[[RigConfig], Shapes]:
    return upstream_shapes_for


@pytest.fixture(scope="session")
def make_state() -> Callable[..., OrderedDict[str, torch.Tensor]]:
    return random_state


@pytest.fixture(scope="session")
def randomize() -> Callable[..., None]:
    return randomize_zero_layers


@pytest.fixture(scope="session")
def official_tiny_config() -> RigConfig:
    return OFFICIAL_TINY


@pytest.fixture
def official_checkpoint(tmp_path) -> tuple:
    """(path, state): a tiny checkpoint in DiffusionRig's layout, ``torch.save``-d as upstream
    saves ``model.state_dict()``."""
    state = random_state(upstream_shapes_for(OFFICIAL_TINY))
    path = tmp_path / "model050000.pt"
    torch.save(state, path)
    return path, state


@pytest.fixture
def tiny_model() -> RigModel:
    """A tiny untrained model (eval mode) that predicts non-zero noise."""
    torch.manual_seed(0)
    model = RigModel(RigConfig.tiny()).eval()
    randomize_zero_layers(model, 0.05)
    return model

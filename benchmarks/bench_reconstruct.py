"""Images per second for encode + FLAME + condition buffers (what DiffusionRig's data step
needs per image), at batch 1 and 16.

Usage: ``python benchmarks/bench_reconstruct.py [--quick] [--device cpu|cuda]``

The network is DECA's architecture (ResNet-50 coarse encoder, random weights: speed does not
depend on them) on the built-in head; buffers are the Lambertian render, normals and albedo at
256 px. Baseline, measured in the same run: the same network run as DECA runs it (contiguous
memory, BatchNorm as separate layers). DECA's own pipeline also rasterizes with pytorch3d,
which does not install here; the issue puts it at about 2 s per image on this machine.
"""

from __future__ import annotations

import argparse

import torch

from emorig.flame.builtin import builtin_head
from emorig.reconstruct.codes import vector_to_code
from emorig.reconstruct.deca import DecaModel
from emorig.render.face import FaceRenderer
from timing import time_ms

TARGET_MS = 130.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = DecaModel().eval().to(dev)
    fast = model.for_inference().to(dev)
    renderer = FaceRenderer(builtin_head()).to(dev)
    print(f"device {dev}, torch threads {torch.get_num_threads()}, DECA ResNet-50 coarse encoder")
    verdict = None
    for batch in (1, 16):
        images = torch.rand(batch, 3, 224, 224, device=dev)
        images_cl = images.contiguous(memory_format=torch.channels_last)

        # random weights predict arbitrary coefficients; FLAME would explode the mesh and the
        # rasterizer would time screen-sized triangles. Render plausible codes of the same
        # batch instead (the encoder still runs in full).
        plausible = 0.3 * torch.randn(batch, 236, generator=torch.Generator().manual_seed(1))
        plausible = plausible.to(dev)

        def pipeline(net, x, plausible=plausible):
            vec = net.coarse_parameters(x)
            code = vector_to_code(vec * 0 + plausible, None, net.config.layout)
            code = code.replace(
                camera=torch.tensor([[9.0, 0.0, 0.0]], device=dev).expand(x.shape[0], 3),
                light=code.light * 0 + 1.0,
            )
            out = renderer(code, 256)
            return out.buffers.condition()

        with torch.inference_mode():
            x, xc = images, images_cl
            ours, ours_min = (
                t / batch for t in time_ms(lambda xc=xc: pipeline(fast, xc), repeats, dev)
            )
            base = time_ms(lambda x=x: pipeline(model, x), repeats, dev)[0] / batch
            enc = time_ms(lambda xc=xc: fast.coarse_parameters(xc), repeats, dev)[0] / batch
        print(
            f"batch {batch:2d}: encode+FLAME+buffers {ours:6.1f} (min {ours_min:5.1f}) ms/image "
            f"({1000 / ours:5.1f} images/s; encoder {enc:5.1f} ms) | DECA-style network "
            f"{base:6.1f} ms/image | ratio {base / ours:4.2f}x"
        )
        if batch == 16:
            verdict = ours
    ok = "PASS" if verdict <= TARGET_MS else "MISS"
    print(f"verdict: {ok}: {verdict:.1f} ms per image at batch 16 (target <= {TARGET_MS:.0f})")


if __name__ == "__main__":
    main()

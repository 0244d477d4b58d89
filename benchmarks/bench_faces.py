"""Throughput of face detection + 68 landmarks + alignment, and of the identity embedding.

Usage: ``python benchmarks/bench_faces.py [--quick]``

Photos: scikit-image's astronaut (512 x 512) and the same photo upscaled to 2048 x 2048 (a
phone-sized picture, detected on a downscaled copy). Baseline, measured in the same run: the
warp of the FFHQ dataset tool that DiffusionRig's ``align.py`` uses (PIL quad transform to a
4096 x 4096 image, then a Lanczos resize), applied to the same landmarks; the ratio printed is
baseline time / emorig time for the warp, and the full pipeline time is given beside it.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from emorig.faces.align import ffhq_quad, ffhq_transform, warp
from emorig.faces.pipeline import FaceAligner
from timing import time_ms


def upstream_warp(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """FFHQ tool's final steps: QUAD transform to 4096 x 4096, then resize to ``size``."""
    c, x, y = ffhq_quad(landmarks)
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    img = Image.fromarray(image).transform(
        (4096, 4096), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR
    )
    return np.asarray(img.resize((size, size), Image.LANCZOS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    from skimage.data import astronaut

    photos = {"512x512": astronaut()}
    photos["2048x2048"] = np.asarray(Image.fromarray(photos["512x512"]).resize((2048, 2048)))
    aligner = FaceAligner(size=256)
    backend = aligner.backend
    for name, img in photos.items():
        det = backend.detector.detect(img)[0]
        lm = backend.landmarks68.landmarks(img, det)
        t_detect = time_ms(lambda img=img: backend.detector.detect(img), repeats)[0] / 1000
        t_lmk = (
            time_ms(lambda img=img, det=det: backend.landmarks68.landmarks(img, det), repeats)[0]
            / 1000
        )
        t_all = time_ms(lambda img=img: aligner.align(img), repeats)[0] / 1000
        m = ffhq_transform(lm, 256)
        t_warp = time_ms(lambda img=img, m=m: warp(img, m, 256, "ffhq"), repeats)[0] / 1000
        t_base = time_ms(lambda img=img, lm=lm: upstream_warp(img, lm, 256), repeats)[0] / 1000
        print(
            f"{name}: detect+68 landmarks+align@256 {1000 * t_all:6.1f} ms "
            f"({1 / t_all:5.1f} images/s; detect {1000 * t_detect:.1f} ms, landmarks "
            f"{1000 * t_lmk:.1f} ms, warp {1000 * t_warp:.1f} ms) | FFHQ-tool warp "
            f"{1000 * t_base:6.1f} ms | warp ratio {t_base / t_warp:4.1f}x"
        )
    img = photos["512x512"]
    det = backend.detector.detect(img)[0]
    lm = backend.landmarks68.landmarks(img, det)
    t_emb = time_ms(lambda: backend.embedder.embed(img, lm), repeats)[0] / 1000
    print(f"identity embedding (dlib ResNet, 128-d): {1000 * t_emb:.1f} ms ({1 / t_emb:.1f}/s)")


if __name__ == "__main__":
    main()

"""Helpers the prepare tests share: a single-process stand-in for accelerate's state, a
reconstructor that only sets pose and camera from the landmarks, and an album of renders."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from emorig.flame.builtin import EXPRESSION_COMPONENTS
from emorig.io.images import to_uint8
from emorig.reconstruct.fitting import initialise_pose
from emorig.reconstruct.pipeline import CROP, Reconstruction, Reconstructor
from emorig.render.face import FaceRenderer
from emorig.render.showcase import parse_face_spec, specs_to_code
from emorig.synth.sampling import backgrounds
from emorig.types import FaceCode


class OneProcess:
    """accelerate's PartialState as a single process sees it."""

    process_index, num_processes = 0, 1
    is_main_process = is_local_main_process = True

    def wait_for_everyone(self):
        pass


class QuickReconstructor(Reconstructor):
    """Pose and camera from the landmarks only; counts the faces it is asked for."""

    def __init__(self, head):
        super().__init__("fit", head, photometric=False)
        self.calls = 0

    def reconstruct_crops(self, faces):
        n = len(faces)
        self.calls += n
        lm = torch.stack([torch.as_tensor(f.landmarks, dtype=torch.float32) for f in faces])
        pose, camera, _ = initialise_pose(self.renderer.flame, lm / CROP * 2 - 1)
        code = FaceCode.neutral(n).replace(global_pose=pose, camera=camera)
        return [Reconstruction(f, code[i : i + 1], None, 0.0) for i, f in enumerate(faces)]


def render_album(head, root: Path) -> Path:
    """Four 256 px renders of the built-in head (img0..img3.png) in ``root``."""
    r = FaceRenderer(head)
    names = [n for n, _ in EXPRESSION_COMPONENTS]
    for k, spec in enumerate(["smile=0.5", "jaw=10+yaw=-12", "frown=0.6+yaw=10", "blink=0.4"]):
        code = specs_to_code([parse_face_spec(spec, names)], r, camera=(8.0, 0.0, 0.01))
        with torch.no_grad():
            out = r(code, 256)
        bg = backgrounds(1, 256, torch.Generator().manual_seed(k), "cpu")
        m = out.buffers.mask
        pixels = to_uint8((out.buffers.rendered * m + bg * (1 - m))[0])
        Image.fromarray(pixels).save(root / f"img{k}.png")
    return root

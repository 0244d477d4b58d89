"""Reproduce docs/images/your-photo.png: a real photo (scikit-image's astronaut, NASA, public
domain) edited with `emorig edit --method warp`, no model and nothing downloaded.

    python scripts/photo_figure.py [OUT.png]

Runs the `emorig edit` commands listed in EDITS on the photo, then shows the face of each
full-resolution result side by side (the same crop for all, from the source's fit)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

EDITS = (
    ("sad", ["--emotion", "sad"], "sad.png"),
    ("surprise", ["--emotion", "surprise"], "surprise.png"),
    ("--face jaw=14", ["--face", "jaw=14"], "jaw=14.png"),
    ("--face brow_raise=2", ["--face", "brow_raise=2"], "brow_raise=2.png"),
    ("--face yaw=12", ["--face", "yaw=12"], "yaw=12.png"),
    ("--light left=0.5", ["--light", "left=0.5"], "light-left=0.5.png"),
)


def main() -> None:
    from skimage import data

    from emorig.flame.heads import load_head
    from emorig.io.images import contact_sheet
    from emorig.reconstruct.pipeline import Reconstructor

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/your-photo.png")
    work = Path(tempfile.mkdtemp(prefix="emorig-figure-"))
    photo = work / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    for _, flags, _ in EDITS:
        cmd = ["emorig", "edit", "--source", str(photo), *flags, "--out", str(work / "edits")]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    face = Reconstructor("fit", load_head("builtin")).reconstruct(data.astronaut())[0].face
    # a loose crop around the face: the DECA crop, grown 1.5x about its centre
    x0, y0, x1, y1 = face.detection.box
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2 + 0.1 * (y1 - y0), 1.6 * max(x1 - x0, y1 - y0)
    box = tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))

    def close_up(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB").crop(box).resize((200, 200)))

    tiles = [close_up(photo)] + [close_up(work / "edits" / f"astronaut_{f}") for *_, f in EDITS]
    labels = ["photo", *(label for label, *_ in EDITS)]
    sheet = contact_sheet([tiles], column_labels=labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out, optimize=True)
    print(f"-> {out}")


if __name__ == "__main__":
    main()

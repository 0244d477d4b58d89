import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photos")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real portrait shipped inside scikit-image (Eileen Collins, NASA, public domain)."""
    return np.ascontiguousarray(skimage_data.astronaut())


@pytest.fixture(scope="session")
def lfw_faces() -> np.ndarray:
    """100 small grey face crops of other people (LFW subset in scikit-image), as
    200 x 200 RGB uint8."""
    from PIL import Image

    faces = skimage_data.lfw_subset()[:100]
    out = []
    for f in faces:
        im = Image.fromarray((np.stack([f] * 3, -1) * 255).astype(np.uint8))
        out.append(np.asarray(im.resize((200, 200), Image.BICUBIC)))
    return np.stack(out)


@pytest.fixture(scope="session")
def aligner():
    from emorig.faces.pipeline import FaceAligner

    return FaceAligner(size=256)

"""Detection, landmarks and alignment on real photos and on renders with known landmarks."""

import numpy as np
import torch
from PIL import Image

from emorig.faces.align import transform_points
from emorig.faces.pipeline import DONE, NO_FACE, SEVERAL, UNREADABLE, FaceAligner
from emorig.io.images import to_uint8


def test_one_face_on_the_astronaut_with_landmarks_in_its_box(astronaut, aligner):
    faces, n = aligner.align(astronaut)
    assert n == 1
    f = faces[0]
    x0, y0, x1, y1 = f.detection.box
    inner = f.source_landmarks[17:]  # brows, nose, eyes, mouth
    assert (inner[:, 0] > x0).all()
    assert (inner[:, 0] < x1).all()
    assert (inner[:, 1] > y0 - 0.15 * (y1 - y0)).all()
    assert (inner[:, 1] < y1).all()
    # the face is upright: eyes above the nose above the mouth
    assert (
        f.source_landmarks[36:48, 1].mean()
        < f.source_landmarks[30, 1]
        < f.source_landmarks[48:68, 1].mean()
    )


def test_ffhq_alignment_size_and_eye_positions(astronaut, aligner):
    f = aligner.align(astronaut)[0][0]
    assert f.image.shape == (3, 256, 256)
    eyes = (f.landmarks[36:42].mean(0) + f.landmarks[42:48].mean(0)) / 2
    # FFHQ: eye midpoint near (0.5, 0.48) of the image, eyes a quarter of the width apart
    assert abs(eyes[0] / 256 - 0.5) < 0.02
    assert abs(eyes[1] / 256 - 0.48) < 0.02
    assert abs((f.landmarks[42:48].mean(0)[0] - f.landmarks[36:42].mean(0)[0]) / 256 - 0.25) < 0.02
    # and the aligned picture really shows them there: detect again on the output
    again = aligner.align(to_uint8(f.image))[0][0]
    err = np.abs(again.source_landmarks[36:48] - f.landmarks[36:48]).max()
    assert err < 0.02 * 256


def test_deca_crop_and_inverse_map(astronaut):
    deca = FaceAligner(size=224, mode="deca")
    f = deca.align(astronaut)[0][0]
    assert f.image.shape == (3, 224, 224)
    back = transform_points(np.linalg.inv(f.matrix), f.landmarks)
    assert np.allclose(back, f.source_landmarks, atol=1e-9)
    crop = f.crop_transform()
    assert crop.image_size == (512, 512)
    px = crop.image_pixels_to_crop_pixels(torch.as_tensor(f.source_landmarks[None]))
    assert torch.allclose(px[0], torch.as_tensor(f.landmarks), atol=1e-3)


def test_exif_rotated_photo_aligns_like_the_upright_one(astronaut, aligner, tmp_path):
    turned = Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(astronaut).save(tmp_path / "upright.jpg", quality=95)
    a = aligner.align_file(tmp_path / "turned.jpg")
    b = aligner.align_file(tmp_path / "upright.jpg")
    assert a.status == DONE
    assert a.exif_rotated
    # both are JPEGs of the same pixels, compressed in different orientations; dlib's
    # landmarks are whole pixels
    diff = np.abs(a.faces[0].source_landmarks - b.faces[0].source_landmarks)
    assert diff.max() <= 3.0
    assert diff.mean() < 1.0


def test_grey_and_huge_photos(astronaut, aligner, tmp_path):
    Image.fromarray(astronaut).convert("L").save(tmp_path / "grey.png")
    assert aligner.align_file(tmp_path / "grey.png").status == DONE
    big = Image.fromarray(astronaut).resize((4096, 4096), Image.BICUBIC)
    faces, n = aligner.align(np.asarray(big))
    small = aligner.align(astronaut)[0][0]
    assert n == 1
    # found on a downscaled copy, landmarked at full resolution: same face, 8x the pixels
    assert np.abs(faces[0].source_landmarks[17:] / 8 - small.source_landmarks[17:]).mean() < 1.5


def test_several_faces_largest_by_default_each_on_request(astronaut, tmp_path):
    half = np.asarray(Image.fromarray(astronaut).resize((384, 384)))
    canvas = np.full((512, 900, 3), 200, np.uint8)
    canvas[:, :512] = astronaut
    canvas[64:448, 512:896] = half
    Image.fromarray(canvas).save(tmp_path / "two.png")
    one = FaceAligner(size=128).align_file(tmp_path / "two.png")
    assert one.status == SEVERAL
    assert one.n_detected == 2
    assert len(one.faces) == 1
    assert one.faces[0].detection.box[0] < 512  # the larger, left one
    both = FaceAligner(size=128, all_faces=True).align_file(tmp_path / "two.png")
    assert len(both.faces) == 2
    assert both.faces[0].detection.area > both.faces[1].detection.area


def test_no_face_and_unreadable(aligner, tmp_path):
    Image.fromarray(np.full((300, 300, 3), 90, np.uint8)).save(tmp_path / "wall.png")
    r = aligner.align_file(tmp_path / "wall.png")
    assert (r.status, r.reason) == (NO_FACE, "no face found")
    (tmp_path / "x.jpg").write_text("not an image")
    r = aligner.align_file(tmp_path / "x.jpg")
    assert r.status == UNREADABLE
    assert "not an image" in r.reason


def test_landmark_error_on_builtin_head_renders(aligner):
    """The built-in head's true 68 landmarks are known: dlib's error on its renders, in units
    of the inter-ocular distance (normalised mean error), over expressions, jaw and pose."""
    from emorig.flame.builtin import EXPRESSION_COMPONENTS, builtin_head
    from emorig.render.face import FaceRenderer
    from emorig.render.showcase import parse_face_spec, specs_to_code

    names = [n for n, _ in EXPRESSION_COMPONENTS]
    specs = [
        "neutral",
        "smile",
        "frown",
        "brow_raise+eye_widen",
        "sad",
        "jaw=12",
        "blink",
        "lip_pucker",
        "pitch=10",
        "yaw=20",
        "yaw=-25",
        "smile+yaw=15",
    ]
    r = FaceRenderer(builtin_head())
    code = specs_to_code([parse_face_spec(s, names) for s in specs], r, camera=(9.5, 0, 0.01))
    with torch.no_grad():
        out = r(code, 256)
    images = out.buffers.rendered + (1 - out.buffers.mask) * 0.45  # grey backdrop
    truth = ((out.landmarks + 1) * 128).numpy()
    inner, whole = [], []
    for i, spec in enumerate(specs):
        faces, n = aligner.align(to_uint8(images[i]))
        assert n == 1, spec
        err = np.linalg.norm(faces[0].source_landmarks - truth[i], axis=1)
        iod = np.linalg.norm(truth[i, 36:42].mean(0) - truth[i, 42:48].mean(0))
        inner.append(err[17:].mean() / iod)
        whole.append(err.mean() / iod)
    print(
        f"\nNME over {len(specs)} renders: inner 51 points mean {np.mean(inner):.3f} "
        f"max {np.max(inner):.3f}; all 68 mean {np.mean(whole):.3f} max {np.max(whole):.3f}"
    )
    assert np.max(inner) < 0.08
    assert np.max(whole) < 0.15
    assert np.mean(whole) < 0.09

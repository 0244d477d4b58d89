"""read_image: every mode, EXIF orientation, and one-line reasons for bad files."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from emorig.io.images import ImageReadError, read_image


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    base = np.zeros((40, 60, 3), np.uint8)
    base[:, :30] = (200, 40, 40)
    base[:20, 30:] = (40, 200, 40)
    base[20:, 30:] = (40, 40, 200)
    return base + rng.integers(0, 5, base.shape, dtype=np.uint8)


def test_rgb_round_trip(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.pixels.dtype == np.uint8
    assert np.array_equal(img.pixels, photo)
    assert img.size == (40, 60)
    assert not img.exif_rotated


def test_exif_orientation_is_applied(tmp_path, photo):
    # store the pixels turned 90 degrees with the tag that tells viewers to turn them back
    turned = Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": undoes the ROTATE_90 (counter-clockwise)
    turned.save(tmp_path / "turned.png", exif=exif.tobytes())
    img = read_image(tmp_path / "turned.png")
    assert img.exif_rotated
    assert np.array_equal(img.pixels, photo)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "YCbCr", "LAB"])
def test_colour_modes_become_rgb(tmp_path, photo, mode):
    pil = Image.fromarray(photo).convert(mode)
    path = tmp_path / ("a.tif" if mode in ("CMYK", "YCbCr", "LAB") else "a.png")
    if mode in ("YCbCr", "LAB"):
        path = tmp_path / "a.jpg" if mode == "YCbCr" else path
    try:
        pil.save(path)
    except OSError:
        pytest.skip(f"PIL cannot write {mode} to {path.suffix}")
    img = read_image(path)
    assert img.pixels.shape == (40, 60, 3)
    assert img.pixels.dtype == np.uint8
    if mode not in ("1", "L"):
        # colours survive: the left half stays reddish
        left = img.pixels[:, :30].astype(int).mean((0, 1))
        assert left[0] > left[2] + 60


def test_transparency_is_composited_on_white(tmp_path, photo):
    rgba = np.concatenate([photo, np.full((40, 60, 1), 255, np.uint8)], -1)
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert (img.pixels[:, :10] == 255).all()
    assert np.array_equal(img.pixels[:, 10:], photo[:, 10:])
    Image.fromarray(rgba[..., [0, 3]].copy(), "LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png").pixels[:, :10] == 255).all()


def test_16_bit_and_float_images_are_scaled(tmp_path):
    ramp = (np.linspace(0, 65535, 50 * 40).reshape(40, 50)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "a16.png")
    img = read_image(tmp_path / "a16.png")
    assert img.mode.startswith("I")
    assert img.pixels[0, 0, 0] == 0
    assert img.pixels[-1, -1, 0] == 255
    assert abs(int(img.pixels[20, 0, 0]) - 128) <= 2
    f = (np.linspace(0, 1, 50 * 40).reshape(40, 50)).astype(np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    img = read_image(tmp_path / "f.tif")
    assert img.pixels[-1, -1, 0] == 255
    assert img.pixels[0, 0, 0] == 0


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("text.jpg", b"this is not a picture\n", "not an image"),
        ("empty.png", b"", "not an image"),
        (
            "random.png",
            bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)),
            "not an image",
        ),
        ("huge.png", _png_header_only(30000, 30000), "too large"),
    ],
)
def test_bad_files_give_one_line_reasons(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as err:
        read_image(tmp_path / name)
    assert "\n" not in str(err.value)
    assert err.value.path.endswith(name)


def test_truncated_missing_and_folder(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


def test_cmyk_jpeg_keeps_its_colours(tmp_path, photo):
    # PIL writes an Adobe CMYK JPEG (inverted ink values), as Photoshop does
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    img = read_image(tmp_path / "cmyk.jpg")
    assert img.mode == "CMYK"
    assert img.pixels.dtype == np.uint8
    assert img.pixels.shape == (40, 60, 3)
    assert np.abs(img.pixels.astype(int) - photo).mean() < 6


def test_grey_alpha_palette_and_rgba_become_rgb(tmp_path, photo):
    grey = Image.fromarray(photo).convert("L")
    la = Image.merge("LA", [grey, Image.new("L", grey.size, 255)])
    la.save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert img.pixels.shape == (40, 60, 3)
    assert np.array_equal(img.pixels[..., 0], np.asarray(grey))
    Image.fromarray(photo).quantize(16).save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.mode == "P"
    assert np.abs(img.pixels.astype(int) - photo).mean() < 8
    rgba = np.concatenate([photo, np.full((40, 60, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png").pixels, photo)


def _png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL does not write them): big-endian samples, filter 0 rows."""
    h, w, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_16_bit_images_are_scaled_not_clipped_or_stretched(tmp_path, photo):
    # a dark 16-bit grey photo stays dark: 1000 of 65535 is 4 of 255
    dark = np.linspace(0, 1000, 40 * 60).reshape(40, 60).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    img = read_image(tmp_path / "dark16.png")
    assert img.mode.startswith("I")
    assert img.pixels.max() == 4
    # a bright one is not clipped at 255
    bright = (dark.astype(np.uint32) * 60 + 5000).astype(np.uint16)
    Image.fromarray(bright).save(tmp_path / "bright16.png")
    img = read_image(tmp_path / "bright16.png")
    expected = (bright.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)
    assert np.abs(img.pixels[..., 0].astype(int) - expected).max() <= 1
    assert len(np.unique(img.pixels)) > 200
    # 16-bit colour: the colours of the 8-bit photo, times 257
    (tmp_path / "rgb16.png").write_bytes(_png_16bit_rgb(photo.astype(np.uint16) * 257))
    img = read_image(tmp_path / "rgb16.png")
    assert img.pixels.dtype == np.uint8
    assert np.abs(img.pixels.astype(int) - photo).max() <= 1


def test_32_bit_integers_in_16_bit_range_are_16_bit(tmp_path):
    values = np.linspace(0, 32768, 40 * 60).reshape(40, 60).astype(np.int32)
    Image.fromarray(values, "I").save(tmp_path / "i32.tif")
    img = read_image(tmp_path / "i32.tif")
    assert img.mode == "I"
    assert abs(int(img.pixels.max()) - 128) <= 1

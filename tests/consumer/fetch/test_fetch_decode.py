"""Decoding to RGB8: formats, modes, EXIF orientation, DCT scaling and the bomb/corruption guards.

Images are generated here with Pillow, or taken from scikit-image's bundled photos.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageFile, ImageOps
from skimage import data as skdata

from consumer.fetch import CorruptImage, NotAnImage, TooManyPixels, decode_image
from consumer.fetch.decode import dct_scale_factor
from schemas.deadletter import ErrorType, Stage


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes, **options: Any) -> np.ndarray:
    """decode_image, plus the output contract every result must meet."""
    array = decode_image(data, **options)
    assert array.dtype == np.uint8
    assert array.ndim == 3 and array.shape[2] == 3
    assert array.flags.c_contiguous
    return array


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def quadrants(width: int = 96, height: int = 64) -> Image.Image:
    """Four flat colours, so any flip or rotation is unmistakable (and JPEG-robust)."""
    array = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    array[:h, :w] = (255, 0, 0)
    array[:h, w:] = (0, 255, 0)
    array[h:, :w] = (0, 0, 255)
    array[h:, w:] = (255, 255, 0)
    return Image.fromarray(array)


def with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    options: dict[str, Any] = {"exif": exif}
    if fmt == "JPEG":
        options["quality"] = 95
    return encode(image, fmt, **options)


def pillow_reference(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee", "rocket"])
def test_png_photos_round_trip_exactly(name: str) -> None:
    photo = getattr(skdata, name)()
    assert np.array_equal(decoded(encode(Image.fromarray(photo), "PNG")), photo)


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_jpeg_photos_decode_close_to_the_source(name: str) -> None:
    photo = getattr(skdata, name)()
    out = decoded(encode(Image.fromarray(photo), "JPEG", quality=95), min_shorter_px=0)
    assert mean_abs_diff(out, photo) < 3.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_is_applied(orientation: int) -> None:
    data = with_orientation(quadrants(), "JPEG", orientation)
    out = decoded(data, min_shorter_px=0)
    reference = pillow_reference(data)
    assert out.shape == reference.shape
    assert mean_abs_diff(out, reference) < 4.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_png_exif_orientation_is_applied(orientation: int) -> None:
    data = with_orientation(quadrants(), "PNG", orientation)
    assert np.array_equal(decoded(data), pillow_reference(data))


def test_orientation_6_turns_the_picture_clockwise() -> None:
    """Stored sideways, tag 6: the stored left column becomes the displayed top row."""
    out = decoded(with_orientation(quadrants(96, 64), "JPEG", 6), min_shorter_px=0)
    assert out.shape == (96, 64, 3)
    top_left, top_right = out[10, 10], out[10, -10]
    assert top_left[2] > 200 and top_left[0] < 60  # blue (stored bottom-left)
    assert top_right[0] > 200 and top_right[1] < 60  # red (stored top-left)


def test_grayscale_jpeg_becomes_three_equal_channels() -> None:
    grey = skdata.camera()
    out = decoded(encode(Image.fromarray(grey), "JPEG", quality=95), min_shorter_px=0)
    assert out.shape == (*grey.shape, 3)
    assert np.array_equal(out[:, :, 0], out[:, :, 1])
    assert np.array_equal(out[:, :, 1], out[:, :, 2])
    assert mean_abs_diff(out[:, :, 0], grey) < 3.0


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    photo = skdata.chelsea()
    data = encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    assert simplejpeg.decode_jpeg_header(data)[2] == "CMYK"
    assert mean_abs_diff(decoded(data, min_shorter_px=0), photo) < 4.0


def test_rgba_png_is_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[0, 2] = (255, 0, 0, 128)  # half red
    rgba[0, 3] = (0, 0, 0, 64)  # quarter black
    out = decoded(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert tuple(out[0, 2]) == (255, 127, 127)
    assert tuple(out[0, 3]) == (191, 191, 191)


def test_grey_alpha_png_is_composited_on_white() -> None:
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA")
    assert la.mode == "LA"
    out = decoded(encode(la, "PNG"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (0, 0, 0)


def test_16bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    image = Image.fromarray(values)
    data = encode(image, "PNG")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode.startswith("I")
    out = decoded(data)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16bit_rgb_png_keeps_its_colours() -> None:
    # Pillow writes 16-bit RGB only from raw data: build the PNG by hand.
    rgb16 = np.array([[[65535, 0, 32768], [0, 65535, 0]]], dtype=">u2")
    data = png_bytes(2, 1, 16, 2, b"".join(b"\x00" + row.tobytes() for row in rgb16))
    out = decoded(data)
    assert out[0, 0].tolist() == [255, 0, 128]
    assert out[0, 1].tolist() == [0, 255, 0]


def test_palette_gif_with_transparency() -> None:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 255, 255, 0, 0, 0, 200, 10, 10] + [0] * (256 * 3 - 9))
    image.putpixel((0, 0), 1)  # black
    image.putpixel((1, 0), 2)  # red
    image.putpixel((2, 0), 3)  # transparent (index 3)
    image.info["transparency"] = 3
    out = decoded(encode(image, "GIF", transparency=3))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == (200, 10, 10)
    assert tuple(out[0, 2]) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decoded(data)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
    ],
)
def test_other_formats_decode_exactly(fmt: str, options: dict[str, Any]) -> None:
    photo = skdata.astronaut()[:100, :120]
    assert np.array_equal(decoded(encode(Image.fromarray(photo), fmt, **options)), photo)


def test_palette_png_and_bilevel_png() -> None:
    photo = Image.fromarray(skdata.coffee())
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    assert np.array_equal(decoded(encode(palette, "PNG")), np.asarray(palette.convert("RGB")))
    bilevel = photo.convert("1")
    assert np.array_equal(decoded(encode(bilevel, "PNG")), np.asarray(bilevel.convert("RGB")))


def test_int32_and_float_tiffs_are_scaled_from_their_range() -> None:
    ints = Image.fromarray(np.array([[0, 1000, 65535]], np.int32), "I")
    assert decoded(encode(ints, "TIFF"))[0, :, 0].tolist() == [0, 4, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert decoded(encode(floats, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-10.0, 0.0, 10.0]], np.float32), "F")
    assert decoded(encode(wide, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 4000x3000 JPEG made from a photo."""
    return encode(Image.fromarray(skdata.coffee()).resize((4000, 3000)), "JPEG", quality=85)


def test_dct_scaling_keeps_the_shorter_side_at_least_256(big_jpeg: bytes) -> None:
    out = decoded(big_jpeg)
    assert out.shape == (375, 500, 3)  # 1/8 of 4000x3000: the shorter side 375 >= 256
    assert decoded(big_jpeg, min_shorter_px=400).shape == (750, 1000, 3)  # 1/4


def test_dct_scaling_without_a_minimum_decodes_full_size(big_jpeg: bytes) -> None:
    assert decoded(big_jpeg, min_shorter_px=0).shape == (3000, 4000, 3)


def test_dct_scaled_image_matches_a_downscaled_full_decode(big_jpeg: bytes) -> None:
    small = decoded(big_jpeg)
    full = Image.fromarray(decoded(big_jpeg, min_shorter_px=0)).resize((500, 375), Image.BOX)
    assert mean_abs_diff(small, np.asarray(full)) < 3.0


def test_dct_scaling_and_orientation_together() -> None:
    image = Image.fromarray(skdata.coffee()).resize((4000, 3000))
    out = decoded(with_orientation(image, "JPEG", 6))
    assert out.shape == (500, 375, 3)


@pytest.mark.parametrize(
    ("width", "height", "minimum", "factor"),
    [
        (4000, 3000, 256, 8),
        (3000, 4000, 256, 8),
        (2048, 4000, 256, 8),
        (2040, 4000, 256, 4),
        (600, 800, 256, 2),
        (451, 300, 256, 1),
        (200, 200, 256, 1),
        (4000, 3000, 0, 1),
    ],
)
def test_dct_scale_factor(width: int, height: int, minimum: int, factor: int) -> None:
    assert dct_scale_factor(width, height, minimum) == factor


def test_pillow_fallback_scales_and_orients_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ValueError("simulated: unsupported by simplejpeg")

    monkeypatch.setattr(simplejpeg, "decode_jpeg", refuse)
    image = Image.fromarray(skdata.coffee()).resize((2400, 1600))
    out = decoded(with_orientation(image, "JPEG", 8))
    assert out.shape == (600, 400, 3)  # draft at 1/4, then turned


def png_bytes(width: int, height: int, depth: int, colour: int, raw: bytes) -> bytes:
    """A PNG from raw filtered scanlines (Pillow would allocate the whole image to write one)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit all-black PNG of ``width`` x ``height``, streamed through zlib a block at a time."""
    row = bytes(1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    block_rows = 1000
    block = row * block_rows
    parts = [compressor.compress(block) for _ in range(height // block_rows)]
    parts.append(compressor.compress(row * (height % block_rows)))
    parts.append(compressor.flush())
    idat = b"".join(parts)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def forbid_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, fail the test if Pillow or simplejpeg starts decoding pixels."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pixels were decoded before the pixel count was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", forbidden)


def test_decompression_bomb_png_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = bomb_png(20000, 20000)
    forbid_pixel_decoding(monkeypatch)
    assert len(data) < 100_000  # tens of KB that would inflate to 400 megapixels
    with pytest.raises(TooManyPixels) as caught:
        decode_image(data)
    assert caught.value.error_type is ErrorType.TOO_MANY_PIXELS
    assert caught.value.stage is Stage.DECODE


def test_image_just_over_the_limit_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 48 megapixels: over our 40 M limit but under twice it, where Pillow itself only warns.
    data = bomb_png(8000, 6000)
    forbid_pixel_decoding(monkeypatch)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(TooManyPixels):
        decode_image(data)


def test_jpeg_pixel_limit_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.fromarray(skdata.chelsea()), "JPEG")
    forbid_pixel_decoding(monkeypatch)
    with pytest.raises(TooManyPixels):
        decode_image(data, max_pixels=300 * 451 - 1)


def test_image_at_the_limit_is_decoded() -> None:
    data = encode(Image.fromarray(skdata.chelsea()), "PNG")
    assert decoded(data, max_pixels=300 * 451).shape == (300, 451, 3)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_jpeg_is_corrupt_not_grey(fraction: float) -> None:
    data = encode(Image.fromarray(skdata.chelsea()), "JPEG")
    with pytest.raises(CorruptImage) as caught:
        decode_image(data[: int(len(data) * fraction)])
    assert caught.value.error_type is ErrorType.CORRUPT_IMAGE
    assert caught.value.stage is Stage.DECODE


def test_truncated_cmyk_jpeg_is_corrupt() -> None:
    data = encode(Image.fromarray(skdata.chelsea()).convert("CMYK"), "JPEG")
    with pytest.raises(CorruptImage):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_images_of_other_formats_are_corrupt(fmt: str) -> None:
    data = encode(Image.fromarray(skdata.astronaut()), fmt)
    with pytest.raises(CorruptImage):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is not an image\n" * 10,
        b"<!DOCTYPE html><html><body>404</body></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b"%PDF-1.7\n",
        bytes(range(256)),
    ],
)
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage) as caught:
        decode_image(data)
    assert caught.value.error_type is ErrorType.NOT_AN_IMAGE
    assert caught.value.stage is Stage.DECODE


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff" + b"\x00" * 100,
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
        b"GIF89a" + b"\x00" * 3,
        b"RIFF\x00\x00\x00\x00WEBPVP8 junk",
    ],
)
def test_magic_bytes_with_garbage_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptImage):
        decode_image(data)

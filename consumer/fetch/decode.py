"""Image bytes to an ``HxWx3`` ``uint8`` RGB array, with the pixel count checked first.

JPEG goes through simplejpeg (libjpeg-turbo, releases the GIL) with DCT scaling: when the source
is much larger than the model input, it is decoded at 1/2, 1/4 or 1/8 of its size, never so small
that the shorter side drops below ``min_shorter_px``. simplejpeg ignores EXIF orientation, so the
orientation tag is read from the header alone (Pillow, no pixel decode) and applied with NumPy.
JPEGs simplejpeg cannot decode fall back to Pillow. PNG, WebP, GIF (first frame), BMP and TIFF go
through Pillow (``draft`` where the format supports it).

Modes become RGB8: grey and palette are expanded; transparent pixels are composited on **white**
(the usual look of a transparent image on a page); 16-bit samples are scaled to 8 bits
(``round(v * 255 / 65535)``), not clipped; 32-bit integer and float images are scaled from the
range their values occupy. The pixel count is checked from the header before any pixel is
decoded, and Pillow's own decompression-bomb limit is set to the same bound.
"""

from __future__ import annotations

import io
import threading
from typing import Final

import numpy as np
import simplejpeg
from PIL import Image, ImageFile

from consumer.fetch.exceptions import CorruptImage, NotAnImage, TooManyPixels

DEFAULT_MAX_PIXELS: Final = 40_000_000
DEFAULT_MIN_SHORTER_PX: Final = 256
_EXIF_ORIENTATION: Final = 0x0112

_pillow_limit_lock = threading.Lock()
_pillow_limit: int | None = None


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name of ``data`` from its magic bytes, or ``None`` if unsupported."""
    head = data[:16]
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def decode_image(
    data: bytes,
    *,
    min_shorter_px: int = DEFAULT_MIN_SHORTER_PX,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``data`` to a C-contiguous ``HxWx3`` ``uint8`` RGB array, EXIF orientation applied.

    ``min_shorter_px`` > 0 lets a JPEG be decoded at a reduced size whose shorter side is still
    at least that (when the source's is); 0 decodes at full size. Raises :class:`NotAnImage`,
    :class:`TooManyPixels` (checked from the header, before decoding) or :class:`CorruptImage`.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImage(f"not a supported image format ({_describe_bytes(data)})")
    _raise_pillow_limit(max_pixels)
    array = None
    if fmt == "JPEG":
        array = _decode_jpeg_fast(data, min_shorter_px, max_pixels)
    if array is None:
        array = _decode_pillow(data, fmt, min_shorter_px, max_pixels)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImage(f"{fmt} decoded to an unusable shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.uint8)


def _raise_pillow_limit(max_pixels: int) -> None:
    """Make Pillow's bomb guard match ours: it raises from twice the limit, we refuse above it."""
    global _pillow_limit
    if _pillow_limit is not None and _pillow_limit >= max_pixels:
        return
    with _pillow_limit_lock:
        if _pillow_limit is None or _pillow_limit < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
            _pillow_limit = max_pixels


def _check_pixels(width: int, height: int, max_pixels: int, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImage(f"{fmt} header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise TooManyPixels(
            f"{fmt} of {width}x{height} = {width * height} pixels, more than the "
            f"{max_pixels} allowed"
        )


def _decode_jpeg_fast(data: bytes, min_shorter_px: int, max_pixels: int) -> np.ndarray | None:
    """simplejpeg decode, or ``None`` to let Pillow try (and name the failure)."""
    try:
        height, width, _colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    _check_pixels(width, height, max_pixels, "JPEG")
    orientation = _jpeg_orientation(data)
    factor = dct_scale_factor(width, height, min_shorter_px)
    try:
        array = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=-(-height // factor),
            min_width=-(-width // factor),
            strict=True,
        )
    except ValueError:
        return None
    return _orient(array, orientation)


def dct_scale_factor(width: int, height: int, min_shorter_px: int) -> int:
    """The largest of 8, 4, 2 (else 1) that keeps the shorter side >= ``min_shorter_px``.

    libjpeg-turbo can also scale by N/8 for other N, but those paths are slower than a full
    decode (measured: 7/8 took 2.4x the time of 1/1), so only powers of two are used.
    """
    if min_shorter_px <= 0:
        return 1
    shorter = min(width, height)
    for factor in (8, 4, 2):
        if -(-shorter // factor) >= min_shorter_px:
            return factor
    return 1


def _jpeg_orientation(data: bytes) -> int:
    """EXIF orientation of a JPEG from its markers alone; 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            return _orientation_of(image)
    except Exception:
        return 1


def _orientation_of(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode_pillow(data: bytes, fmt: str, min_shorter_px: int, max_pixels: int) -> np.ndarray:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"{fmt} refused by the decompression bomb guard: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImage(f"{fmt} header cannot be read: {_short(exc)}") from None
    with image:
        width, height = image.size
        _check_pixels(width, height, max_pixels, fmt)
        try:
            if fmt == "JPEG" and min_shorter_px > 0:
                image.draft("RGB", (min_shorter_px, min_shorter_px))
            image.load()
            array = _to_rgb8(image)
            orientation = _orientation_of(image)
        except Image.DecompressionBombError as exc:
            raise TooManyPixels(f"{fmt} refused by the decompression bomb guard: {exc}") from None
        except MemoryError:
            raise
        except Exception as exc:
            raise CorruptImage(f"{fmt} cannot be decoded: {_short(exc)}") from None
    return _orient(array, orientation)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to ``HxWx3`` ``uint8`` RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I;16"):
        return _grey_to_rgb(_scale_16bit(np.asarray(image)))
    if mode == "I":
        return _grey_to_rgb(_scale_int(np.asarray(image)))
    if mode == "F":
        return _grey_to_rgb(_scale_float(np.asarray(image)))
    if "A" in mode or "a" in mode or image.has_transparency_data:
        return _on_white(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _scale_int(values: np.ndarray) -> np.ndarray:
    """32-bit integer grey: 8-bit values kept, 16-bit values scaled, anything else stretched."""
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 255:
        return values.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return _scale_16bit(values)
    return _stretch(values.astype(np.float64), low, high)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Float grey: [0, 1] scaled by 255, [0, 255] kept, anything else stretched; NaN -> 0."""
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(finite * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.rint(finite).astype(np.uint8)
    return _stretch(finite, low, high)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight (non-premultiplied) RGBA onto a white background."""
    alpha = rgba[:, :, 3:4]
    if bool((alpha == 255).all()):
        return rgba[:, :, :3]
    rgb = rgba[:, :, :3].astype(np.uint16)
    a = alpha.astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) so the array is upright, as ``ImageOps.exif_transpose``."""
    match orientation:
        case 2:
            return array[:, ::-1]
        case 3:
            return array[::-1, ::-1]
        case 4:
            return array[::-1]
        case 5:
            return array.transpose(1, 0, 2)
        case 6:
            return np.rot90(array, -1)
        case 7:
            return array[::-1, ::-1].transpose(1, 0, 2)
        case 8:
            return np.rot90(array, 1)
        case _:
            return array


def _short(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe_bytes(data: bytes) -> str:
    if not data:
        return "empty body"
    return f"{len(data)} bytes starting {data[:8]!r}"

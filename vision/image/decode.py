"""Untrusted image bytes in, a decoded RGB image out, or an `InvalidImage` saying what was wrong.

Checks run cheapest first: size, the format's magic bytes against an allow-list, the declared pixel count
(read from the header, so a decompression bomb is refused before any pixel is decoded), then the full decode.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from vision.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")

# Signatures of formats we recognise, to tell a user what they sent. Checked in order.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WEBP"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"8BPS", 0, "PSD"),
    (b"%PDF", 0, "PDF"),
    (b"%!PS", 0, "EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xffO\xffQ", 0, "JPEG 2000"),
    (b"GIF8", 0, "GIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
)


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied to every uploaded image."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes, or None when unrecognised."""
    for signature, offset, name in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if name == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return name
    return None


def decode_image(
    data: bytes, limits: ImageLimits | None = None, *, min_side: int | None = None
) -> Image.Image:
    """Decode ``data`` into an RGB image, EXIF orientation applied (so pixels are as the user sees the photo).

    With ``min_side``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at
    least ``min_side`` pixels (libjpeg's scaled decoding: fewer pixels to decode and to resize, and pixels
    that differ slightly from a full decode followed by a resize). Other formats decode in full.

    Raises `InvalidImage` (or a subclass) with a message for the user; never decodes more than
    ``limits.max_pixels`` pixels.
    """
    limits = limits or ImageLimits()
    if not data:
        raise InvalidImage("the file is empty (0 bytes): send a JPEG, PNG, WebP or BMP image")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    kind = sniff_format(data)
    if kind is None:
        raise InvalidImage("the file is not an image: accepted formats are JPEG, PNG, WebP and BMP")
    if kind not in ALLOWED_FORMATS:
        raise UnsupportedImageFormat(
            f"{kind} images are not accepted (whatever the file name says): send JPEG, PNG, WebP or BMP"
        )
    try:
        with warnings.catch_warnings():
            # PIL warns (or raises) about bombs itself; our own limit below is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            if width <= 0 or height <= 0:
                raise InvalidImage(f"the image declares an empty size {width}x{height}")
            if width * height > limits.max_pixels:
                raise ImageTooLarge(
                    f"the image declares {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limits.max_pixels} pixels; downscale it before sending"
                )
            if min_side is not None and kind == "JPEG":
                image.draft(None, (min_side, min_side))
            image.load()
            # In place: a photo without an orientation tag is not copied (a 40 MP photo is 120 MB).
            ImageOps.exif_transpose(image, in_place=True)
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image is too large to decode safely: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        # Pillow's own message names an in-memory buffer, which tells the user nothing.
        raise InvalidImage(
            f"the file starts like a {kind} image but its header is damaged or truncated"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the {kind} image is corrupt or truncated and cannot be decoded ({exc})") from exc
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (as a viewer shows it) and convert to 8-bit RGB.

    Transparency is an alpha channel (RGBA, LA), a palette's transparent entries (P) or a PNG colour key
    (``tRNS`` on L or RGB: pixels of exactly that value are transparent).
    """
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        image = _gray16_to_8(image)
    keyed = image.mode in ("1", "P", "L", "RGB") and "transparency" in image.info
    if image.mode in ("RGBA", "LA") or keyed:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _gray16_to_8(image: Image.Image) -> Image.Image:
    """16-bit grayscale to 8-bit L, keeping the high byte (convert() would clip every value over 255 to
    white); a colour key (``tRNS``) becomes an alpha channel (LA), matched on the 16-bit values."""
    wide = image.convert("I")
    gray = wide.point(lambda v: v * (1 / 256)).convert("L")
    gray.info.pop("transparency", None)
    key = image.info.get("transparency")
    if not isinstance(key, int):
        return gray
    alpha = Image.fromarray(np.where(np.asarray(wide) == key, 0, 255).astype(np.uint8), mode="L")
    gray.putalpha(alpha)
    return gray

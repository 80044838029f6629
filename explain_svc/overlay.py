"""Heatmap images: the raw 8-bit map, and the colour overlay placed where the model looked in the photo."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import torch
from PIL import Image

from vision.choices import COLORMAPS, OVERLAY_FORMATS
from vision.errors import InvalidArgument
from vision.image.png import encode_png

DEFAULT_ALPHA = 0.5


def heatmap_png(heatmap: torch.Tensor) -> bytes:
    """8-bit grayscale PNG of a [0, 1] heatmap (H, W): pixel value = round(255 * h) (half to even).

    numpy, not torch ops: this runs in request threads, where torch's intra-op pool would make many threads
    wait on each other while the model runs (see `vision.image.preprocess`); the values are the same."""
    levels = np.round(np.clip(heatmap.numpy(), 0, 1) * np.float32(255))
    return encode_png(levels.astype(np.uint8))


def encode_overlay(overlay: Image.Image, overlay_format: str, jpeg_quality: int) -> bytes:
    """``overlay`` as JPEG (Pillow's libjpeg-turbo, at ``jpeg_quality``) or PNG (`encode_png`)."""
    if OVERLAY_FORMATS.check(overlay_format) == "png":
        return encode_png(overlay)
    out = io.BytesIO()
    overlay.save(out, "JPEG", quality=jpeg_quality)
    return out.getvalue()


def check_style(colormap: str, alpha: float) -> None:
    """InvalidArgument naming the accepted values for an unknown colormap or an alpha outside [0, 1]."""
    COLORMAPS.check(colormap)
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgument(f"alpha must be between 0 and 1, got {alpha}")


@cache
def _lut(colormap: str) -> np.ndarray:
    """(256, 3) uint8 colour table of a matplotlib colormap."""
    from matplotlib import colormaps

    rgba = colormaps[colormap](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def shrink_to_fit(image: Image.Image, max_side: int) -> tuple[Image.Image, int]:
    """``image`` shrunk by the smallest whole factor k that brings its longer side to at most ``max_side``,
    and k (1: ``image`` itself, unchanged). Each pixel of the result is the mean of a k x k box of the photo
    (Pillow's ``Image.reduce``; the boxes of the last row and column are cut at the edge, so a side of n
    becomes ceil(n / k)). A box filter over whole pixels costs about 0.8 ms on a 1 MP photo, where a bilinear
    resample to an arbitrary size reads every pixel through a wider kernel and costs 5-8 ms."""
    factor = -(-max(image.size) // max_side)
    if factor <= 1:
        return image, 1
    return image.reduce(factor), factor


def render_overlay(
    image: Image.Image,
    heatmap: torch.Tensor,
    crop_box: tuple[float, float, float, float],
    *,
    colormap: str = COLORMAPS.default,
    alpha: float = DEFAULT_ALPHA,
    in_place: bool = False,
) -> Image.Image:
    """The user's image with the coloured heatmap blended over ``crop_box`` (left, top, right, bottom in the
    image's pixels): the region the model saw. Pixels outside it are left as they were.

    The caller shrinks large photos first (`shrink_to_fit`, the box with them). ``in_place``: draw on
    ``image`` itself (the caller's own copy: saves copying the photo) instead of a copy.
    ``colormap`` and ``alpha`` are checked by the caller (`check_style`), before any work is queued.
    """
    lut = _lut(colormap)
    left, top, right, bottom = (round(v) for v in crop_box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    size = (max(right - left, 1), max(bottom - top, 1))
    # All per-pixel work in Pillow's C code: upsample the map (scaled to [0.5, 255.5], so that converting to
    # 8 bits, which truncates, rounds), colour it through a palette, blend it with Image.blend.
    scaled = np.clip(heatmap.numpy(), 0, 1).astype(np.float32) * np.float32(255) + np.float32(0.5)
    heat = Image.fromarray(scaled, mode="F").resize(size, Image.Resampling.BILINEAR).convert("L")
    heat.putpalette(lut.tobytes())  # L -> P
    region = image.crop((left, top, left + size[0], top + size[1]))
    out = image if in_place else image.copy()
    out.paste(Image.blend(region, heat.convert("RGB"), alpha), (left, top))
    return out

"""Heatmap images: the raw 8-bit map, and the colour overlay placed where the model looked in the photo."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from PIL import Image

from vision.choices import COLORMAPS
from vision.errors import InvalidArgument
from vision.image.png import encode_png

DEFAULT_ALPHA = 0.5


def heatmap_png(heatmap: torch.Tensor) -> bytes:
    """8-bit grayscale PNG of a [0, 1] heatmap (H, W): pixel value = round(255 * h) (half to even).

    numpy, not torch ops: this runs in request threads, where torch's intra-op pool would make many threads
    wait on each other while the model runs (see `vision.image.preprocess`); the values are the same."""
    levels = np.round(np.clip(heatmap.numpy(), 0, 1) * np.float32(255))
    return encode_png(levels.astype(np.uint8))


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


def scale_to_fit(image: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """``image`` scaled down (bilinear) so that its longer side is at most ``max_side``, and the scale
    applied (1.0: ``image`` itself, unchanged). Scaling an image that already fits changes nothing."""
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR
        )
    return image, scale


def render_overlay(
    image: Image.Image,
    heatmap: torch.Tensor,
    crop_box: tuple[float, float, float, float],
    *,
    colormap: str = COLORMAPS.default,
    alpha: float = DEFAULT_ALPHA,
    max_side: int = 2048,
) -> Image.Image:
    """The user's image with the coloured heatmap blended over ``crop_box`` (left, top, right, bottom in the
    image's pixels): the region the model saw. Pixels outside it are left as they were.

    Images longer than ``max_side`` are scaled down first (the box with them), keeping the geometry.
    ``colormap`` and ``alpha`` are checked by the caller (`check_style`), before any work is queued.
    """
    lut = _lut(colormap)
    image, scale = scale_to_fit(image, max_side)
    left, top, right, bottom = (round(v * scale) for v in crop_box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    size = (max(right - left, 1), max(bottom - top, 1))
    resized = Image.fromarray(heatmap.numpy().astype(np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR
    )
    levels = np.clip(np.round(np.asarray(resized) * 255), 0, 255).astype(np.uint8)
    # Colour through a palette and blend with Image.blend: both run in Pillow's C code.
    heat = Image.fromarray(levels, mode="P")
    heat.putpalette(lut.tobytes())
    region = image.crop((left, top, left + size[0], top + size[1]))
    out = image.copy()
    out.paste(Image.blend(region, heat.convert("RGB"), alpha), (left, top))
    return out

"""The overlay drawing on its own: how large photos are shrunk, and what the blended pixels hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explain_svc.overlay import render_overlay, shrink_to_fit


@pytest.mark.parametrize(
    ("size", "max_side", "factor", "shrunk"),
    [
        ((640, 480), 640, 1, (640, 480)),
        ((810, 1080), 640, 2, (405, 540)),  # bus.jpg
        ((1280, 720), 640, 2, (640, 360)),  # zidane.jpg
        ((4032, 3024), 640, 7, (576, 432)),  # a phone photo
        ((1301, 20), 640, 3, (434, 7)),  # sides that do not divide: ceil(n / k)
    ],
)
def test_a_photo_is_shrunk_by_the_smallest_whole_factor_that_fits(
    size: tuple[int, int], max_side: int, factor: int, shrunk: tuple[int, int]
) -> None:
    image = Image.new("RGB", size, (10, 20, 30))
    out, k = shrink_to_fit(image, max_side)
    assert (k, out.size) == (factor, shrunk)
    assert max(out.size) <= max_side
    if factor == 1:
        assert out is image  # nothing copied


def test_each_shrunk_pixel_is_the_mean_of_its_box() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out, k = shrink_to_fit(Image.fromarray(pixels), 200)
    assert k == 2
    boxes = pixels.reshape(150, 2, 200, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(np.asarray(out, dtype=float) - boxes).max() <= 0.5 + 1e-9


def test_the_gray_overlay_at_full_opacity_is_the_upsampled_map_rounded_inside_the_crop_only() -> None:
    photo = Image.new("RGB", (300, 200), (7, 70, 140))
    heatmap = torch.rand(16, 16, generator=torch.Generator().manual_seed(1))
    box = (50.0, 20.0, 210.0, 180.0)
    out = np.asarray(render_overlay(photo, heatmap, box, colormap="gray", alpha=1.0), dtype=int)
    upsampled = Image.fromarray(heatmap.numpy(), mode="F").resize((160, 160), Image.Resampling.BILINEAR)
    expected = np.round(np.asarray(upsampled) * 255)
    inside = out[20:180, 50:210]
    assert (inside[..., 0] == inside[..., 2]).all()  # gray: r = g = b
    assert np.abs(inside[..., 0] - expected).max() <= 1
    outside = np.ones(out.shape[:2], dtype=bool)
    outside[20:180, 50:210] = False
    assert (out[outside] == (7, 70, 140)).all()

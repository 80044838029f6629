"""Serving preprocessing, checked against the computation written out by hand (numpy + PIL), not against the
torchvision pipeline it is built from: scale the short side to 256 (PIL bilinear, which antialiases when
shrinking, is what torchvision's Resize runs on a PIL image; the long side is truncated), cut the centred
224x224 square, divide by 255, subtract the mean and divide by the std, channels first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from vision.image.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

pytestmark = pytest.mark.fast


def by_hand(image: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """The model input of ``image`` (3, crop, crop) float32, computed step by step."""
    width, height = image.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    resized = (
        image if (new_w, new_h) == image.size else image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    )
    pixels = np.asarray(resized, dtype=np.float32)  # (new_h, new_w, 3)
    assert pixels.shape == (new_h, new_w, 3)
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    patch = pixels[top : top + crop, left : left + crop] / np.float32(255)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return ((patch - mean) / std).transpose(2, 0, 1)


PHOTOS = {
    "astronaut": lambda: Image.fromarray(data.astronaut()),  # 512x512, square
    "chelsea": lambda: Image.fromarray(data.chelsea()),  # 451x300, landscape
    "coffee": lambda: Image.fromarray(data.coffee()),  # 600x400, landscape
    "rocket": lambda: Image.fromarray(data.rocket()),  # 640x427, landscape, odd height
    "hubble": lambda: Image.fromarray(data.hubble_deep_field()),  # 1000x872
    "astronaut-portrait-odd": lambda: Image.fromarray(data.astronaut()).resize((97, 203)),  # upscaled
    "coffee-portrait": lambda: Image.fromarray(data.coffee()).transpose(Image.Transpose.ROTATE_90),
    "chelsea-panorama": lambda: Image.fromarray(data.chelsea()).resize((1000, 257)),
    "rocket-tall-strip": lambda: Image.fromarray(data.rocket()).resize((255, 1001)),
    "exactly-256": lambda: Image.fromarray(data.astronaut()).resize((256, 256)),  # no resize at all
    "tiny": lambda: Image.fromarray(data.chelsea()).resize((31, 17)),  # far smaller than the crop
}


@pytest.mark.parametrize("photo", PHOTOS)
def test_preprocessing_matches_the_hand_computation(photo: str) -> None:
    image = PHOTOS[photo]()
    tensor = Preprocessing()(image)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 224, 224)
    # Bit-identical: the same float32 operations in the same order (a difference would be within 1e-6).
    np.testing.assert_array_equal(tensor.numpy(), by_hand(image))


def test_a_uniform_image_becomes_the_normalised_colour_everywhere() -> None:
    # No resampling question at all: every output pixel is (c / 255 - mean) / std.
    colour = (200, 100, 30)
    tensor = Preprocessing()(Image.new("RGB", (333, 500), colour))
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    for channel, value in enumerate(expected):
        assert torch.allclose(tensor[channel], torch.full((224, 224), value), atol=1e-6)


def test_other_sizes_and_statistics_are_honoured() -> None:
    image = Image.fromarray(data.coffee())  # 600x400 -> 192x128 -> 96x96 centre
    pre = Preprocessing(resize_size=128, input_size=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    resized = np.asarray(image.resize((192, 128), Image.Resampling.BILINEAR), dtype=np.float32)
    expected = ((resized[16:112, 48:144] / np.float32(255) - np.float32(0.5)) / np.float32(0.25)).transpose(
        2, 0, 1
    )
    np.testing.assert_allclose(pre(image).numpy(), expected, rtol=0, atol=1e-6)


# (width, height) -> the crop box in the original's pixels, worked out by hand:
# resized size (short side 256, long side truncated), crop offset round((resized - 224) / 2), scaled back.
CROP_BOXES = {
    (640, 480): (58 * 640 / 341, 16 * 480 / 256, 282 * 640 / 341, 240 * 480 / 256),  # 341x256, round(58.5)=58
    (480, 640): (16 * 480 / 256, 58 * 640 / 341, 240 * 480 / 256, 282 * 640 / 341),  # 256x341
    (1000, 257): (386 * 1000 / 996, 16 * 257 / 256, 610 * 1000 / 996, 240 * 257 / 256),  # 996x256
    (256, 256): (16.0, 16.0, 240.0, 240.0),
    (512, 512): (32.0, 32.0, 480.0, 480.0),  # 256x256, offset 16, scale 2
    (451, 300): (80 * 451 / 384, 16 * 300 / 256, 304 * 451 / 384, 240 * 300 / 256),  # 384x256
}


@pytest.mark.parametrize("size", CROP_BOXES)
def test_crop_box_matches_the_hand_computation(size: tuple[int, int]) -> None:
    assert Preprocessing().crop_box(*size) == pytest.approx(CROP_BOXES[size], abs=1e-9)


@pytest.mark.parametrize("photo", ["chelsea", "coffee-portrait", "rocket", "chelsea-panorama"])
def test_crop_box_is_the_region_the_model_sees(photo: str) -> None:
    # Resampling just that region of the original to 224x224 gives (almost) the pixels the model gets.
    image = PHOTOS[photo]()
    pre = Preprocessing()
    box = pre.crop_box(*image.size)
    region = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR, box=box), dtype=np.float32)
    seen = by_hand(image).transpose(1, 2, 0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    difference = np.abs(region / 255 - seen)
    assert difference.mean() < 1 / 255 and np.percentile(difference, 99) < 3 / 255

"""Serving preprocessing equals torchvision's Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms

from vision.image.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (1000, 257), (97, 203)])
def test_preprocessing_is_bit_identical_to_torchvision(astronaut: Image.Image, size: tuple[int, int]) -> None:
    image = astronaut.resize(size)
    reference = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    assert torch.equal(Preprocessing()(image), reference(image))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1000, 257), (256, 256)])
def test_crop_box_is_the_region_the_model_sees(size: tuple[int, int]) -> None:
    width, height = size
    left, top, right, bottom = Preprocessing().crop_box(width, height)
    # The crop is centred, square in the resized image, inside the original.
    assert 0 <= left < right <= width + 1e-6 and 0 <= top < bottom <= height + 1e-6
    assert abs((left + right) / 2 - width / 2) <= width / 256 + 1
    assert abs((top + bottom) / 2 - height / 2) <= height / 256 + 1
    short = min(width, height)
    assert abs(min(right - left, bottom - top) - short * 224 / 256) <= 1.0

"""Serving-time preprocessing: identical to torchvision's
``Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize(mean, std)`` (the default 256/224/ImageNet).

It is implemented with those very transforms, so training validation and serving cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from PIL import Image
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    resize_size: int = 256
    input_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    @cached_property
    def transform(self) -> transforms.Compose:
        return transforms.Compose(
            [
                transforms.Resize(self.resize_size),
                transforms.CenterCrop(self.input_size),
                transforms.ToTensor(),
                transforms.Normalize(list(self.mean), list(self.std)),
            ]
        )

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region (left, top, right, bottom) of the original image, in its pixels, that the model sees."""
        # Resize(int) scales the short side to resize_size and truncates the long one, as torchvision does.
        if width <= height:
            resized_w, resized_h = self.resize_size, int(self.resize_size * height / width)
        else:
            resized_w, resized_h = int(self.resize_size * width / height), self.resize_size
        left = round((resized_w - self.input_size) / 2.0)
        top = round((resized_h - self.input_size) / 2.0)
        sx, sy = width / resized_w, height / resized_h
        return (left * sx, top * sy, (left + self.input_size) * sx, (top + self.input_size) * sy)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A float32 tensor of shape (3, input_size, input_size)."""
        return self.transform(image)

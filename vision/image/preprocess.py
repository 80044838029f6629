"""Serving-time preprocessing: identical to torchvision's
``Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize(mean, std)`` (the default 256/224/ImageNet).

The geometry (Resize, CenterCrop) is those very transforms on the PIL image, so training validation and
serving cannot drift apart; ToTensor + Normalize are the same float32 operations in the same order written in
numpy (bit-identical, tests/test_preprocess.py), because torch would run them on its intra-op thread pool:
from many request threads at once, on few cores, those tiny parallel regions waited for descheduled threads
(a 0.1 ms ToTensor took 20-30 ms while the model ran).

The ``fast`` mode (classifier_svc's ``VISION_CLASSIFIER_PREPROCESS=fast``) trades that equality for about
half the CPU time: JPEGs decoded at a DCT scale (`vision.image.decode.decode_image` ``min_side``) and only
the region the centre crop keeps resampled (once, instead of the whole image and then a crop). On photos its
input differs from the exact pipeline's by a mean |Δ| under 0.03 of the normalised range;
tests/test_preprocess_fast.py holds it to `FAST_TOLERANCE` on the input, top-1 and probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FastTolerance:
    """How far ``fast`` preprocessing may move a classifier's answer from the exact pipeline's."""

    max_prob_diff: float = 5e-3  # largest |Δp| over all classes
    top1_agreement: float = 1.0  # on the test photos
    mean_pixel_diff: float = 0.03  # mean |Δ| of the normalised input tensor


FAST_TOLERANCE = FastTolerance()


@dataclass(frozen=True)
class Preprocessing:
    resize_size: int = 256
    input_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    @cached_property
    def geometry(self) -> transforms.Compose:
        return transforms.Compose(
            [transforms.Resize(self.resize_size), transforms.CenterCrop(self.input_size)]
        )

    @cached_property
    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.mean, dtype=np.float32), np.asarray(self.std, dtype=np.float32)

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
        """A float32 tensor of shape (3, input_size, input_size) (an RGB ``image``; others: (C, ...))."""
        if image.mode != "RGB":
            return self.transform(image)
        return self._normalised(self.geometry(image))

    def fast(self, image: Image.Image) -> torch.Tensor:
        """Like calling this, but the centre crop is resampled straight from ``image`` (one resize of the
        kept region): the same geometry up to rounding, not bit-identical (see the module docstring)."""
        if image.mode != "RGB":
            return self.transform(image)
        size = (self.input_size, self.input_size)
        return self._normalised(image.resize(size, Image.Resampling.BILINEAR, box=self.crop_box(*image.size)))

    def _normalised(self, cropped: Image.Image) -> torch.Tensor:
        pixels = np.asarray(cropped, dtype=np.float32) / np.float32(255)  # (H, W, 3)
        mean, std = self._scale
        return torch.from_numpy(np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)))

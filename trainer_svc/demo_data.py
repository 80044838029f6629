"""Demo data, for `vision datasets digits DIR` only (the tests and benchmarks reach it through
``tests/support/digits.py``): a small real labelled dataset that ships with scikit-learn, the 1,797 8x8
handwritten digits (10 classes), upscaled and PNG-encoded, to try the trainer out offline. Not used by the
service itself.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = [str(d) for d in range(10)]


def digit_images(size: int = 32, per_class: int = 0) -> Iterator[tuple[str, bytes]]:
    """(class name, PNG bytes) for every digit (or the first ``per_class`` of each), upscaled bilinearly
    from 8x8 to ``size`` x ``size`` RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    taken = dict.fromkeys(range(10), 0)
    for pixels, label in zip(digits.images, digits.target, strict=True):
        label = int(label)
        if per_class and taken[label] >= per_class:
            continue
        taken[label] += 1
        gray = Image.fromarray((pixels * (255 / 16)).astype(np.uint8))
        image = gray.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        yield CLASS_NAMES[label], buffer.getvalue()


def write_image_folder(root: Path, size: int = 32, per_class: int = 0) -> Path:
    """``root/<digit>/<n>.png``; returns ``root``."""
    for n, (name, png) in enumerate(digit_images(size, per_class)):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{n:05d}.png").write_bytes(png)
    return root

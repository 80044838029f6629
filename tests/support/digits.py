"""The scikit-learn digits as test and benchmark data: 10 classes of small real images, PNG-encoded.

The one implementation is `trainer_svc.demo_data` (it also backs `vision datasets digits DIR`); tests and
benchmarks import it from here so that the service's core never depends on demo data.
"""

from __future__ import annotations

from trainer_svc.demo_data import CLASS_NAMES, digit_images, write_image_folder

__all__ = ["CLASS_NAMES", "digit_images", "write_image_folder"]

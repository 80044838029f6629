"""What the benchmarks send: real photos, and a seeded random classifier published to a model store."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import torch
from PIL import Image

from vision.models.architectures import build_model
from vision.models.store import ModelMetadata, ModelStore, ModelVersion
from vision.models.weights import publish_state_dict

NUM_CLASSES = 1000


def ultralytics_assets() -> Path | None:
    """Ultralytics' bundled photos (bus.jpg, zidane.jpg), read from its package directory, or None."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "assets"


def test_images() -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of real photos: bus.jpg and zidane.jpg (ultralytics), astronaut (scikit-image)."""
    images: list[tuple[str, bytes]] = []
    assets = ultralytics_assets()
    if assets is not None:
        images += [(name, (assets / name).read_bytes()) for name in ("bus.jpg", "zidane.jpg")]
    with contextlib.suppress(ImportError):
        from skimage import data

        buffer = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
        images.append(("astronaut.jpg", buffer.getvalue()))
    if not images:
        raise SystemExit("no test photos: install ultralytics or scikit-image (the dev extras)")
    return images


def publish_random_model(store: ModelStore, arch: str, seed: int = 0) -> ModelVersion:
    """A seeded randomly initialised ``arch`` with 1000 classes, published as model ``arch`` (speed does
    not depend on the weights)."""
    torch.manual_seed(seed)
    model = build_model(arch, NUM_CLASSES)
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    return publish_state_dict(
        store, arch, model.state_dict(), ModelMetadata(architecture=arch, class_names=names)
    )

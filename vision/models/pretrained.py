"""ImageNet weights from torchvision, fetched once into the model store so a first run classifies at once.

The download has a short timeout: offline it fails fast and the caller carries on without a model.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import urllib.request
from pathlib import Path

import torch
from torchvision import models

from vision.errors import InvalidCheckpoint, NotReady
from vision.models.store import ModelMetadata, ModelStore, ModelVersion
from vision.models.weights import publish_state_dict

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V2,
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


class PretrainedUnavailable(NotReady):
    """The weights could not be fetched (offline, mirror down, bad file)."""


def download(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` to ``dest``; verify the sha256 prefix in the file name (torch.hub's convention)."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except (OSError, ValueError) as exc:
        raise PretrainedUnavailable(f"could not download {url}: {exc}") from exc
    match = _HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
    if match and not digest.hexdigest().startswith(match.group(1)):
        raise PretrainedUnavailable(f"{url} does not match the sha256 prefix {match.group(1)} in its name")


def fetch_imagenet(
    store: ModelStore,
    architecture: str = "resnet18",
    *,
    name: str | None = None,
    url: str | None = None,
    timeout: float = 10.0,
) -> ModelVersion:
    """Download torchvision's ImageNet weights for ``architecture`` (or from a mirror ``url``) and publish
    them, with the 1000 ImageNet class names, as the next version of ``name`` (default: the architecture)."""
    if architecture not in IMAGENET_WEIGHTS:
        raise ValueError(f"no ImageNet weights for {architecture!r}; accepted: {', '.join(IMAGENET_WEIGHTS)}")
    weights = IMAGENET_WEIGHTS[architecture]
    source_url = url or weights.url
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.root, prefix=".download-") as tmp:
        path = Path(tmp) / source_url.rsplit("/", 1)[-1]
        download(source_url, path, timeout)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PretrainedUnavailable(f"{source_url} is not a readable state dict: {exc}") from exc
    model = models.get_model(architecture, weights=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidCheckpoint(f"{source_url} does not fit {architecture}: {exc}") from exc
    metadata = ModelMetadata(
        architecture=architecture,
        class_names=list(weights.meta["categories"]),
        metrics={"imagenet_top1": float(weights.meta["_metrics"]["ImageNet-1K"]["acc@1"])},
        provenance={"source": f"torchvision:{weights}", "url": source_url},
    )
    return publish_state_dict(store, name or architecture, model.state_dict(), metadata)


def ensure_default_model(store: ModelStore, *, url: str | None = None, timeout: float = 10.0) -> bool:
    """If the store holds no model at all, try to fetch ImageNet ResNet18 into it. Returns True if fetched.

    Never raises: offline, it logs why and returns False quickly (bounded by ``timeout``).
    """
    if store.names():
        return False
    try:
        version = fetch_imagenet(store, "resnet18", url=url, timeout=timeout)
    except (PretrainedUnavailable, InvalidCheckpoint) as exc:
        log.warning("model store %s is empty and the ImageNet weights are unavailable: %s", store.root, exc)
        log.warning("import a model with `vision models import CHECKPOINT --name NAME`, or train one")
        return False
    log.info("fetched ImageNet resnet18 into the store as %s/%s", version.name, version.version)
    return True

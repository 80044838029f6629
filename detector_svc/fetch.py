"""yolo11n fetched once into the model store on a first, online run; offline it fails fast and quietly.

The download is imported like any user file (`import_yolo_checkpoint`: weights_only loading, safetensors in
the store); the downloaded ``.pt`` itself is deleted.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from detector_svc.checkpoints import import_yolo_checkpoint
from detector_svc.model import DEFAULT_MODEL
from detector_svc.network import DETECTION_TASK
from vision.errors import VisionError
from vision.models.pretrained import download
from vision.models.store import ModelStore

log = logging.getLogger(__name__)


def has_detection_model(store: ModelStore) -> bool:
    return any(v.metadata.task == DETECTION_TASK for v in store.list())


def ensure_default_detector(store: ModelStore, url: str, timeout: float = 10.0) -> bool:
    """If the store holds no detection model, fetch ``url`` and import it as ``yolo11n``. True if fetched.

    Never raises: offline (or with a bad file) it logs why and returns False, within about ``timeout``.
    """
    if has_detection_model(store):
        return False
    store.root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=store.root, prefix=".download-") as tmp:
            path = Path(tmp) / url.rsplit("/", 1)[-1].split("?")[0]
            if path.suffix != ".pt":
                path = path.with_suffix(".pt")
            download(url, path, timeout)
            version = import_yolo_checkpoint(store, path, DEFAULT_MODEL, source=f"download:{url}")
    except (OSError, VisionError) as exc:
        log.warning("no detection model in %s and %s could not be fetched: %s", store.root, url, exc)
        log.warning("import one with `vision models import yolo.pt --name %s`", DEFAULT_MODEL)
        return False
    log.info("fetched %s into the store as %s/%s", url, version.name, version.version)
    return True

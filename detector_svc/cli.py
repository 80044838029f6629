"""What detector_svc adds to the `vision` tools: `vision models import` of Ultralytics YOLO files.

Registered as the ``vision.importers`` entry point ``yolo`` (pyproject.toml); `vision.cli` finds it there.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from vision.models.store import ModelStore, ModelVersion


class YoloImporter:
    """An Ultralytics ``.pt`` (weights-only loading, allow-listed classes) or a YOLO ONNX export."""

    def accepts(self, path: Path) -> bool:
        """An ONNX export, or a torch checkpoint whose pickle names Ultralytics classes (read only)."""
        if path.suffix.lower() == ".onnx":
            return True
        try:
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                return any(b"ultralytics.nn" in archive.read(n) for n in pickles)
        except (OSError, zipfile.BadZipFile):
            return False

    def import_file(self, store: ModelStore, path: Path, name: str) -> ModelVersion:
        from detector_svc.checkpoints import import_detection_file  # torch + ultralytics: only when used

        return import_detection_file(store, path, name)


YOLO_IMPORTER = YoloImporter()

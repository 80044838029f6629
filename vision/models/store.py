"""The model store: a directory (``VISION_MODEL_DIR``) of named, versioned models.

Layout::

    <root>/<name>/<version>/metadata.json     # ModelMetadata
    <root>/<name>/<version>/model.safetensors # the weights (classification models)

Versions are integers counting up from 1. A version is written into a hidden temporary directory beside
its final place and renamed into place in one step, so a reader (in any process) sees either nothing or a
complete version. This module does not import torch; `vision.models.weights` reads and writes tensors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vision.errors import InvalidArgument, ModelNotFound, NoModelAvailable

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_model_name(name: str) -> str:
    """Model names become directory names: lowercase letters, digits, '.', '_', '-', at most 64."""
    if not _NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(
            f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass
class ModelMetadata:
    """What a version is and how to feed it. Serialised as metadata.json."""

    architecture: str
    class_names: list[str]
    task: str = "classification"
    head: str = "linear"
    input_size: int = 224
    resize_size: int = 256
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    created_at: str = ""
    name: str = ""
    version: str = ""
    format_version: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        data = asdict(self)
        data["num_classes"] = self.num_classes
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ModelVersion:
    """One stored version of a model."""

    name: str
    version: str
    path: Path
    metadata: ModelMetadata

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    @property
    def weights_path(self) -> Path:
        return self.path / self.metadata.weights_file


class ModelStore:
    """Reads and publishes model versions under ``root``. Safe to share between threads and processes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first."""
        model_dir = self.root / name
        if not _NAME_RE.match(name) or not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if p.name.isdigit() and (p / METADATA_FILE).is_file()]
        return sorted(found, key=int)

    def snapshot(self) -> dict[str, str]:
        """{name: newest version} for every model: a cheap way to notice what changed."""
        latest = {}
        for name in self.names():
            versions = self.versions(name)
            if versions:
                latest[name] = versions[-1]
        return latest

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The requested version (newest when ``version`` is empty); raises `ModelNotFound`."""
        versions = self.versions(name)
        if not versions:
            available = self.names()
            if not available:
                raise NoModelAvailable(
                    "no model in the model store: import one with `vision models import` or train one"
                )
            raise ModelNotFound(f"model {name!r} not found; available: {', '.join(available)}")
        chosen = version or versions[-1]
        if chosen not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; available versions: {', '.join(versions)}"
            )
        path = self.root / name / chosen
        return ModelVersion(name, chosen, path, self._read_metadata(path))

    def list(self) -> list[ModelVersion]:
        """Every complete version of every model."""
        return [self.get(name, v) for name in self.names() for v in self.versions(name)]

    @staticmethod
    def _read_metadata(path: Path) -> ModelMetadata:
        return ModelMetadata.from_json((path / METADATA_FILE).read_text())

    def publish(
        self,
        name: str,
        metadata: ModelMetadata,
        write_files: Callable[[Path], Mapping[str, str]],
    ) -> ModelVersion:
        """Write a new version of ``name`` atomically and return it.

        ``write_files(tmp_dir)`` writes the version's files into ``tmp_dir`` and returns metadata fields
        to set (e.g. ``weights_sha256``). The version number is the next free one, even with concurrent
        publishers.
        """
        validate_model_name(name)
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            updates = write_files(tmp)
            for key, value in updates.items():
                setattr(metadata, key, value)
            metadata.name = name
            metadata.created_at = metadata.created_at or datetime.now(timezone.utc).isoformat()
            while True:
                existing = self.versions(name) + [p.name for p in model_dir.iterdir() if p.name.isdigit()]
                metadata.version = str(max((int(v) for v in existing), default=0) + 1)
                _write_synced(tmp / METADATA_FILE, metadata.to_json().encode())
                try:
                    os.rename(tmp, model_dir / metadata.version)
                except OSError:
                    continue  # another publisher took this number: take the next one
                _fsync_dir(model_dir)
                return self.get(name, metadata.version)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

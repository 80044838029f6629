"""What a stored version is: its metadata (``metadata.json``), its place, and the rules its names follow.

Split from `vision.models.store` (which reads and writes versions) so that the plain data types and the name
checks stand on their own; the store re-exports them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vision.errors import InvalidArgument

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # and no '..'
_NAME_RE = re.compile(MODEL_NAME_PATTERN)
VERSION_PATTERN = r"^[1-9][0-9]{0,17}$"
_VERSION_RE = re.compile(VERSION_PATTERN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_model_name(name: str) -> bool:
    """Whether ``name`` may name a model (see `validate_model_name`)."""
    return bool(_NAME_RE.fullmatch(name)) and ".." not in name


def validate_model_name(name: str) -> str:
    """Model names become directory names: lowercase letters, digits, '.', '_', '-', at most 64."""
    if not is_model_name(name):
        raise InvalidArgument(
            f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_version(version: str) -> str:
    """A version as a request names it: a positive integer without leading zeros, at most 18 digits."""
    if not _VERSION_RE.fullmatch(version):
        raise InvalidArgument(f"invalid version {version!r}: a version is a number such as 3")
    return version


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

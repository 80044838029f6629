"""What one training run is asked to do (`TrainConfig`): the only training defaults, and the one validation
every entry point goes through.

The gRPC API (`trainer_svc.convert.job_spec_to_config`) and the `vision train` CLI build one with
`TrainConfig.create`, leaving unset options to the defaults here; the service validates it once
(`TrainConfig.validate`). Plain data only: it is stored in the job database as JSON, pickled to the worker
process, and written into every checkpoint (``args``) and published model (``provenance.config``).
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vision.choices import ARCHITECTURES, OPTIMIZERS, PRETRAINED_ARCHITECTURES, pretrained_by_default
from vision.errors import InvalidArgument
from vision.models.store import validate_model_name
from vision.settings import DEFAULT_MAX_CLASSES, MAX_LABEL_CHARS

DATASET_KINDS = ("upload", "image_folder", "food101")
MAX_EPOCHS = 1000
MAX_CLASSES = DEFAULT_MAX_CLASSES
MAX_FILE_NAME_CHARS = 255
FOOD101_CLASSES = 101  # the official meta/classes.txt
FOOD101_HANDLE = "dansbecker/food-101"  # kagglehub dataset handle
MAX_NPROC_PER_NODE = 64
MAX_NNODES = 64


@dataclass
class TrainConfig:
    """One training run. Learning rate is per optimizer step; ``img_size`` is the square input side (px)."""

    model_name: str
    architecture: str = ARCHITECTURES.default
    pretrained: bool = True
    freeze_backbone: bool = True
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = OPTIMIZERS.default
    momentum: float = 0.9
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 5
    label_smoothing: float = 0.0
    img_size: int = 224
    horizontal_flip: bool = True
    dataset: str = "upload"
    dataset_path: str = ""
    class_names: list[str] = field(default_factory=list)
    max_images_per_class: int = 0
    # Data parallelism (trainer_svc.training.distributed): processes per node and nodes. ``batch_size`` is
    # per process, as in torchvision's references: one step trains on batch_size * world_size images.
    nproc_per_node: int = 1
    nnodes: int = 1

    @classmethod
    def create(cls, model_name: str, **options: Any) -> TrainConfig:
        """A config from the options that were given (None: not given, the default applies).

        ``pretrained`` defaults to whether the architecture has ImageNet weights (all but smallcnn), and
        ``freeze_backbone`` to ``pretrained``: a frozen backbone only makes sense over trained weights.
        """
        given = {name: value for name, value in options.items() if value is not None}
        architecture = given.get("architecture", cls.architecture)
        given.setdefault("pretrained", pretrained_by_default(architecture))
        given.setdefault("freeze_backbone", given["pretrained"])
        return cls(model_name=model_name, **given)

    @property
    def world_size(self) -> int:
        """Training processes in all: one rank each."""
        return self.nproc_per_node * self.nnodes

    @property
    def resize_size(self) -> int:
        """Serving's resize before the centre crop: 256 for 224, the same ratio for other sizes."""
        return round(self.img_size * 256 / 224)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self, *, max_epochs: int = MAX_EPOCHS, max_classes: int = MAX_CLASSES) -> TrainConfig:
        """Raise `InvalidArgument` naming the first bad value and its accepted range; return self."""
        validate_model_name(self.model_name)
        _choice("arch", self.architecture, ARCHITECTURES.names)
        _choice("optimizer", self.optimizer, OPTIMIZERS.names)
        _choice("dataset", self.dataset, DATASET_KINDS)
        _in_range("epochs", self.epochs, 1, max_epochs)
        _in_range("batch_size", self.batch_size, 1, 1024)
        _in_range("img_size", self.img_size, 32, 1024)
        _in_range("patience", self.patience, 1, 1000)
        _in_range("seed", self.seed, 0, 2**31 - 1)
        _in_range("max_images_per_class", self.max_images_per_class, 0, 1_000_000)
        _in_range("nproc_per_node", self.nproc_per_node, 1, MAX_NPROC_PER_NODE)
        _in_range("nnodes", self.nnodes, 1, MAX_NNODES)
        _float_in_range("lr", self.lr, 0.0, 10.0, low_open=True)
        _float_in_range("val_split", self.val_fraction, 0.0, 0.5, low_open=True)
        _float_in_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        if self.pretrained and self.architecture not in PRETRAINED_ARCHITECTURES:
            raise InvalidArgument(
                f"{self.architecture} has no ImageNet weights: set pretrained=false to train it from scratch"
            )
        if self.freeze_backbone and not self.pretrained:
            raise InvalidArgument(
                "a frozen backbone needs pretrained weights: set pretrained=true, or freeze_backbone=false "
                "to train every layer"
            )
        if self.dataset == "upload":
            validate_class_names(self.class_names, max_classes)
        if self.dataset == "food101" and max_classes < FOOD101_CLASSES:
            raise InvalidArgument(
                f"Food-101 has {FOOD101_CLASSES} classes, more than this trainer's limit of {max_classes} "
                "classes per job"
            )
        return self


def _choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise InvalidArgument(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")


def _in_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be between {low} and {high}, got {value}")


def _float_in_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidArgument(f"{name} must be in {bracket}{low:g}, {high:g}], got {value:g}")


def resolve_dataset_path(path: str, root: Path) -> Path:
    """An image folder named by a job (relative to ``root``, or absolute), resolved; it must lie inside
    ``root``, the only directory a client may make the service read."""
    if not path or "\x00" in path:
        raise InvalidArgument(
            "image_folder.path is empty: name a directory under the trainer's datasets root"
        )
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InvalidArgument(
            "image_folder.path must be inside the trainer's datasets directory: name it relative to that "
            "directory (VISION_TRAINER_DATASETS_DIR)"
        )
    return resolved


def normalize_label(name: str) -> str:
    """A label in Unicode NFC: look-alikes typed differently ('café' composed or not) are one class."""
    return unicodedata.normalize("NFC", name)


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` (a label or a file name) is refused, or None: empty, '.' or '..', path separators, NUL
    or other control characters could turn a name into a path or a terminal escape. Dots inside a name
    ('...', 'model..1', 'holiday..0.png') are harmless: names never become paths."""
    if not name.strip():
        return "is empty"
    if name.strip() in (".", ".."):
        return "is '.' or '..'"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(_is_control(ch) for ch in name):
        return "contains NUL or another control character"
    return None


def _is_control(ch: str) -> bool:
    # Format characters include bidi overrides (spoofing); the zero-width joiners some scripts need are fine.
    category = unicodedata.category(ch)
    return category in ("Cc", "Zl", "Zp") or (category == "Cf" and ch not in "\u200c\u200d")


def validate_class_names(names: list[str], max_classes: int = MAX_CLASSES) -> None:
    """At least 2 and at most ``max_classes`` distinct (case-insensitively, after NFC), safe labels."""
    if len(names) < 2:
        raise InvalidArgument(f"training needs at least 2 classes, got {len(names)}: name every class")
    if len(names) > max_classes:
        raise InvalidArgument(f"at most {max_classes} classes per job, got {len(names)}")
    seen: dict[str, int] = {}
    for index, name in enumerate(names, start=1):
        reason = unsafe_name_reason(name)
        if reason:
            raise InvalidArgument(f"label {index} ({name!r}) {reason}")
        if name != name.strip() or len(name) > MAX_LABEL_CHARS:
            raise InvalidArgument(
                f"label {index} ({name!r}) must be 1-{MAX_LABEL_CHARS} characters without surrounding spaces"
            )
        key = normalize_label(name).casefold()
        if key in seen:
            raise InvalidArgument(
                f"labels {seen[key]} and {index} are the same ({name!r}): labels must differ"
            )
        seen[key] = index


def validate_file_name(name: str, index: int) -> None:
    """Client file names are only shown in messages, but a hostile one is still refused."""
    if not name:
        return
    reason = unsafe_name_reason(name)
    if reason or len(name) > MAX_FILE_NAME_CHARS:
        raise InvalidArgument(f"file {index + 1} has an unacceptable name {name!r}: {reason or 'too long'}")

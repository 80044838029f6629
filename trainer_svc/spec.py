"""JobSpec (protobuf) -> TrainConfig, with the service's defaults and limits applied.

Unset numbers take the defaults ("0: the default" in the contract); a mode left unspecified freezes the
backbone only when there are pretrained weights to freeze.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer_svc.config import TrainerSettings
from trainer_svc.train_config import TrainConfig
from vision.errors import InvalidArgument
from vision.v1 import trainer_pb2

ARCHITECTURES = {
    trainer_pb2.ARCHITECTURE_UNSPECIFIED: "resnet18",
    trainer_pb2.ARCHITECTURE_RESNET18: "resnet18",
    trainer_pb2.ARCHITECTURE_RESNET50: "resnet50",
    trainer_pb2.ARCHITECTURE_SMALLCNN: "smallcnn",
}
OPTIMIZERS = {
    trainer_pb2.OPTIMIZER_UNSPECIFIED: "adam",
    trainer_pb2.OPTIMIZER_ADAM: "adam",
    trainer_pb2.OPTIMIZER_SGD: "sgd",
}
DATASETS = {"upload": "upload", "image_folder": "image_folder", "food101": "food101"}
DEFAULTS = TrainConfig(model_name="unused")


def _enum(field: str, value: int, accepted: Mapping[Any, str]) -> str:
    if value not in accepted:
        raise InvalidArgument(
            f"unknown {field} {value}; accepted: {', '.join(sorted(set(accepted.values())))}"
        )
    return accepted[value]


def image_folder_path(path: str, root: Path) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved; it must lie inside ``root``."""
    if not path or "\x00" in path:
        raise InvalidArgument(
            "image_folder.path is empty: name a directory under the trainer's datasets root"
        )
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InvalidArgument(f"image_folder.path must be inside the trainer's datasets directory {root}")
    return resolved


def to_config(spec: trainer_pb2.JobSpec, settings: TrainerSettings) -> TrainConfig:
    """The validated TrainConfig for ``spec``; `InvalidArgument` names the first bad field."""
    dataset = spec.WhichOneof("dataset")
    if dataset is None:
        raise InvalidArgument("the JobSpec names no dataset: set upload, image_folder or food101")
    if spec.mode == trainer_pb2.TRAIN_MODE_UNSPECIFIED:
        frozen = spec.pretrained
    else:
        frozen = (
            _enum(
                "mode",
                spec.mode,
                {trainer_pb2.TRAIN_MODE_FROZEN: "frozen", trainer_pb2.TRAIN_MODE_FULL: "full"},
            )
            == "frozen"
        )
    config = TrainConfig(
        model_name=spec.model_name,
        architecture=_enum("architecture", spec.architecture, ARCHITECTURES),
        pretrained=spec.pretrained,
        freeze_backbone=frozen,
        epochs=spec.epochs or DEFAULTS.epochs,
        batch_size=spec.batch_size or DEFAULTS.batch_size,
        lr=spec.learning_rate or DEFAULTS.lr,
        optimizer=_enum("optimizer", spec.optimizer, OPTIMIZERS),
        val_fraction=spec.val_fraction or DEFAULTS.val_fraction,
        seed=spec.seed,
        patience=spec.patience or settings.default_patience,
        label_smoothing=spec.label_smoothing,
        img_size=spec.img_size or DEFAULTS.img_size,
        horizontal_flip=spec.horizontal_flip if spec.HasField("horizontal_flip") else True,
        dataset=DATASETS[dataset],
        class_names=list(spec.class_names) if dataset == "upload" else [],
    )
    if dataset == "image_folder":
        config.dataset_path = str(image_folder_path(spec.image_folder.path, settings.image_folder_root))
    if dataset == "food101":
        config.max_images_per_class = spec.food101.max_images_per_class
    return config.validate(max_epochs=settings.max_epochs, max_classes=settings.max_classes)

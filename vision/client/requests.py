"""Keyword arguments -> vision.v1 request messages, shared by the sync and the asyncio client.

Only what cannot be encoded is refused here (an unknown option name, a number outside int32, an image
file that cannot be read): whether the values make sense is the service's to say, with its own message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

from vision.choices import (
    ARCHITECTURES,
    CAM_METHODS,
    COLORMAPS,
    OPTIMIZERS,
    OVERLAY_FORMATS,
    pretrained_by_default,
)
from vision.client.errors import invalid_request
from vision.errors import InvalidArgument
from vision.image.decode import ALLOWED_FORMATS, sniff_format
from vision.v1 import classifier_pb2, common_pb2, detector_pb2, explainer_pb2, models_pb2, trainer_pb2

Image = Union[bytes, str, "os.PathLike[str]"]
# Pieces an uploaded file is sent in: well under any message limit, small enough to stream steadily.
UPLOAD_CHUNK_BYTES = 256 * 1024
_SNIFF_BYTES = 16

M = TypeVar("M")


def build(method: str, make: Callable[[], M]) -> M:
    """``make()``; what it refuses (a bad option, a value protobuf cannot hold) as InvalidArgumentError."""
    try:
        return make()
    except InvalidArgument as exc:
        raise invalid_request(exc.message, method) from exc
    except (ValueError, TypeError) as exc:
        raise invalid_request(f"bad option: {exc}", method) from exc


def read_image(image: Image) -> bytes:
    """The encoded image: ``image`` itself when bytes, else the file it names (OSError when unreadable)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return Path(image).read_bytes()


def model_ref(model: str, version: str) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=model, version=version)


def classify(image: bytes, model: str, version: str, top_k: int) -> classifier_pb2.ClassifyRequest:
    return classifier_pb2.ClassifyRequest(image=image, model=model_ref(model, version), top_k=top_k)


def explain(
    image: bytes,
    *,
    model: str,
    version: str,
    method: str,
    layer: str,
    target: int | str | None,
    alpha: float | None,
    colormap: str,
    top_k: int,
    overlay_max_side: int = 0,
    overlay_format: str = "",
) -> explainer_pb2.ExplainRequest:
    request = explainer_pb2.ExplainRequest(
        image=image,
        model=model_ref(model, version),
        method=CAM_METHODS.to_enum(method or CAM_METHODS.default),  # type: ignore[arg-type]
        layer=layer,
        colormap=COLORMAPS.to_enum(colormap or COLORMAPS.default),  # type: ignore[arg-type]
        top_k=top_k,
        overlay_max_side=overlay_max_side,
        # empty: unset, the service's setting (jpeg by default)
        overlay_format=OVERLAY_FORMATS.to_enum(overlay_format) if overlay_format else 0,  # type: ignore[arg-type]
    )
    if isinstance(target, bool):
        raise InvalidArgument("target must be a class id or a label, not a bool")
    if isinstance(target, int):
        request.target_class_id = target
    elif isinstance(target, str):
        request.target_label = target
    if alpha is not None:
        request.alpha = alpha
    return request


def detect(
    image: bytes,
    *,
    model: str,
    version: str,
    conf: float | None,
    iou: float | None,
    max_det: int | None,
    classes: Iterable[int | str],
    imgsz: int | None,
    annotate: bool,
) -> detector_pb2.DetectRequest:
    wanted = list(classes)
    request = detector_pb2.DetectRequest(
        image=image,
        model=model_ref(model, version),
        class_ids=[c for c in wanted if isinstance(c, int) and not isinstance(c, bool)],
        class_names=[c for c in wanted if isinstance(c, str)],
        annotate=annotate,
    )
    if len(request.class_ids) + len(request.class_names) != len(wanted):
        raise InvalidArgument("classes must be class ids (int) or class names (str)")
    for name, value in (("conf", conf), ("iou", iou), ("max_det", max_det), ("imgsz", imgsz)):
        if value is not None:
            setattr(request, name, value)
    return request


def list_models(task: str) -> models_pb2.ListModelsRequest:
    return models_pb2.ListModelsRequest(task=task)


# -- training ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainerFolder:
    """An ImageFolder directory on the trainer's own filesystem (under its VISION_TRAINER_DATASETS_DIR):
    nothing is uploaded."""

    path: str


Labelled = tuple[str, Image]
Dataset = Union[str, "os.PathLike[str]", TrainerFolder, Iterable[Labelled]]


def job_spec(
    dataset: Dataset,
    class_names: list[str],
    *,
    model_name: str,
    architecture: str,
    pretrained: bool | None,
    freeze_backbone: bool | None,
    optimizer: str | None,
    horizontal_flip: bool | None,
    numbers: dict[str, int | float | None],
) -> trainer_pb2.JobSpec:
    """The JobSpec; numbers left None stay 0 (the trainer's defaults); ``pretrained`` None: whether the
    architecture has ImageNet weights (as the gateway's form does)."""
    arch = ARCHITECTURES.check(architecture or ARCHITECTURES.default)
    spec = trainer_pb2.JobSpec(
        model_name=model_name,
        architecture=ARCHITECTURES.to_enum(arch),  # type: ignore[arg-type]
        class_names=class_names,
        pretrained=pretrained_by_default(arch) if pretrained is None else pretrained,
    )
    if isinstance(dataset, TrainerFolder):
        spec.image_folder.path = dataset.path
    else:
        spec.upload.SetInParent()
    if optimizer is not None:
        spec.optimizer = OPTIMIZERS.to_enum(optimizer)  # type: ignore[assignment]
    if freeze_backbone is not None:
        spec.mode = trainer_pb2.TRAIN_MODE_FROZEN if freeze_backbone else trainer_pb2.TRAIN_MODE_FULL
    if horizontal_flip is not None:
        spec.horizontal_flip = horizontal_flip
    for name, value in numbers.items():
        if value is not None:
            setattr(spec, name, value)
    return spec


def _is_image_file(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    with path.open("rb") as handle:
        return sniff_format(handle.read(_SNIFF_BYTES)) in ALLOWED_FORMATS


def folder_images(root: Path) -> tuple[list[str], list[Labelled]]:
    """``root/<class>/<image>``: the class names (sorted folder names) and (class, path) of every file whose
    bytes are a JPEG, PNG, WebP or BMP (others, and hidden files, are left out). A ``train/`` + ``val/``
    layout is refused: the trainer splits an upload itself (``val_fraction``)."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory of class folders (DIR/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if {"train", "val"} <= set(classes):
        raise InvalidArgument(
            f"{root} has train/ and val/ folders: upload one folder of classes (e.g. {root / 'train'}); the "
            "trainer splits it for validation itself (val_fraction)"
        )
    images: list[Labelled] = [
        (name, path) for name in classes for path in sorted((root / name).iterdir()) if _is_image_file(path)
    ]
    if not images:
        raise InvalidArgument(f"{root} holds no images in class folders (DIR/<class>/<image>)")
    return classes, images


def labelled_images(dataset: Dataset, class_names: list[str] | None) -> tuple[list[str], Iterable[Labelled]]:
    """(class names in label order, the (class, image) pairs to upload) for ``dataset``."""
    if isinstance(dataset, TrainerFolder):
        return list(class_names or []), []
    if isinstance(dataset, (str, os.PathLike)):
        found, images = folder_images(Path(dataset))
        return list(class_names or found), images
    pairs = list(dataset)
    return list(class_names or dict.fromkeys(label for label, _ in pairs)), pairs


def upload_messages(spec: trainer_pb2.JobSpec, images: Iterable[Labelled]) -> Iterator[Any]:
    """The CreateJob stream: the spec, then each image in chunks of `UPLOAD_CHUNK_BYTES` (files are read
    one at a time, as the stream is sent)."""
    yield trainer_pb2.CreateJobRequest(spec=spec)
    for index, (label, image) in enumerate(images):
        data = read_image(image)
        name = os.fspath(image) if not isinstance(image, (bytes, bytearray, memoryview)) else f"image {index}"
        pieces = range(0, max(len(data), 1), UPLOAD_CHUNK_BYTES)
        for start in pieces:
            chunk = trainer_pb2.ImageChunk(
                file_index=index,
                class_name=label,
                file_name=Path(name).name,
                data=data[start : start + UPLOAD_CHUNK_BYTES],
                last=start + UPLOAD_CHUNK_BYTES >= len(data),
            )
            yield trainer_pb2.CreateJobRequest(chunk=chunk)

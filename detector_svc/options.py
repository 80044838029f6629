"""What a Detect request may ask for, checked before any work: `InvalidArgument` says what is wrong."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vision.errors import InvalidArgument

DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.45  # the original project's value (Ultralytics' own default is 0.7)
DEFAULT_MAX_DET = 300
IMGSZ_STRIDE = 32


@dataclass(frozen=True)
class DetectOptions:
    """Thresholds are in [0, 1]; ``imgsz`` None means the model's own input size; classes given as ids and
    names combine, and none means every class."""

    conf: float = DEFAULT_CONF
    iou: float = DEFAULT_IOU
    max_det: int = DEFAULT_MAX_DET
    class_ids: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    imgsz: int | None = None
    annotate: bool = False

    def check(self, max_det_limit: int, max_imgsz: int) -> None:
        """Raise `InvalidArgument` for values outside what the service accepts."""
        for field, value in (("conf", self.conf), ("iou", self.iou)):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InvalidArgument(f"{field} must be a number between 0 and 1, got {value}")
        if not 1 <= self.max_det <= max_det_limit:
            raise InvalidArgument(f"max_det must be between 1 and {max_det_limit}, got {self.max_det}")
        if self.imgsz is not None and not (0 < self.imgsz <= max_imgsz and self.imgsz % IMGSZ_STRIDE == 0):
            raise InvalidArgument(
                f"imgsz must be a positive multiple of {IMGSZ_STRIDE} up to {max_imgsz} "
                f"(e.g. 320, 640, 1280), got {self.imgsz}"
            )


def resolve_classes(
    class_ids: tuple[int, ...], class_names: tuple[str, ...], names: list[str]
) -> tuple[int, ...] | None:
    """Sorted unique class ids to keep, or None for all; unknown ids or names are an `InvalidArgument`
    naming what the model has."""
    if not class_ids and not class_names:
        return None
    out_of_range = [i for i in class_ids if not 0 <= i < len(names)]
    if out_of_range:
        raise InvalidArgument(
            f"class id {out_of_range[0]} is out of range: the model has classes 0..{len(names) - 1}"
        )
    index = {name: i for i, name in enumerate(names)}
    unknown = [n for n in class_names if n not in index]
    if unknown:
        examples = ", ".join(repr(n) for n in names[:6])
        more = f", ... ({len(names)} classes)" if len(names) > 6 else ""
        raise InvalidArgument(f"unknown class name {unknown[0]!r}; the model's classes are {examples}{more}")
    return tuple(sorted({*class_ids, *(index[n] for n in class_names)}))

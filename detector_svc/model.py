"""The detector engine: hot-reloaded YOLO models, decoding in the caller's thread, batched ``predict`` calls.
No gRPC here.

Thread safety: an Ultralytics model (and its predictor) is only ever used by the batcher's one worker
thread; loading, conversion to the configured runtime and warm-up happen before a model is published to the
registry (`detector_svc.served`).

Equal answers: one ``YOLO.predict`` call gets only requests with the same image shape and the same
parameters. Ultralytics letterboxes a batch of equal shapes exactly as it does one image (minimal padding),
but pads a batch of mixed shapes to a square, which changes the boxes; grouping keeps every answer equal to
a single-image ``YOLO.predict`` of the same image with the same parameters.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image

from detector_svc.config import DetectorSettings
from detector_svc.network import DETECTION_TASK
from detector_svc.options import DetectOptions, resolve_classes
from detector_svc.parity import ParityBounds
from detector_svc.served import PredictKey, ServedDetector, load_for_serving
from vision.errors import InvalidArgument, ModelNotFound, NoModelAvailable
from vision.image.decode import decode_image
from vision.image.png import encode_png
from vision.models.store import ModelStore, ModelVersion
from vision.serving.engine import Answered, ServingEngine
from vision.serving.runtimes import RuntimeOptions
from vision.settings import cpu_cores

if TYPE_CHECKING:
    from ultralytics.engine.results import Results

DEFAULT_MODEL = "yolo11n"
NO_DETECTION_MODEL = (
    f"no detection model: import one with `vision models import yolo.pt --name {DEFAULT_MODEL}`"
)


@dataclass(frozen=True)
class Box:
    """Corners in original-image pixels (origin top-left, x right, y down)."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int
    class_name: str
    confidence: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1


@dataclass(frozen=True)
class Detection:
    boxes: list[Box]  # highest confidence first
    annotated_png: bytes
    image_width: int
    image_height: int
    answered: Answered


def boxes_of(result: Results, names: list[str]) -> list[Box]:
    """The result's boxes, highest confidence first (stable: Ultralytics' order among equal scores)."""
    data = np.asarray(result.boxes.data) if result.boxes is not None else np.zeros((0, 6), np.float32)
    boxes = [
        Box(float(x1), float(y1), float(x2), float(y2), int(c), names[int(c)], float(s))
        for x1, y1, x2, y2, s, c in data.tolist()
    ]
    return sorted(boxes, key=lambda b: -b.confidence)


def annotated_png(result: Results, max_side: int) -> bytes:
    """PNG of Ultralytics' ``plot()`` of ``result``, its longer side at most ``max_side``.

    A larger photo is scaled down (area interpolation) before the boxes are drawn on it, scaled with it, so
    lines and labels keep a readable size and the reply stays small (~3 bytes a pixel at worst). A photo
    that fits is drawn at its own size, exactly as ``result.plot()``.
    """
    from ultralytics.engine.results import Results as UltralyticsResults

    height, width = result.orig_shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(result.orig_img, size, interpolation=cv2.INTER_AREA)
        boxes = None
        if result.boxes is not None:
            boxes = torch.as_tensor(result.boxes.data).clone()
            boxes[:, :4] *= torch.tensor([size[0] / width, size[1] / height] * 2, dtype=boxes.dtype)
        result = UltralyticsResults(small, path=result.path, names=result.names, boxes=boxes)
    return encode_png(Image.fromarray(cv2.cvtColor(result.plot(), cv2.COLOR_BGR2RGB)))


def annotated_side_limit(max_side: int, max_message_bytes: int, max_det: int) -> int:
    """``max_side``, lowered if need be so that the worst-case annotated PNG (3 bytes a pixel, +15% for
    incompressible pixels) and ``max_det`` boxes fit in one reply of ``max_message_bytes``."""
    budget = max_message_bytes - 64 * 1024 - 128 * max_det
    return max(64, min(max_side, math.isqrt(max(0, int(budget / 3.45)))))


class DetectorEngine(ServingEngine[ServedDetector, np.ndarray, "Results"]):
    """Decodes images in the caller's thread and batches the ``predict`` calls of concurrent callers."""

    name = "detector"
    task = DETECTION_TASK
    preferred_default = DEFAULT_MODEL
    empty_message = NO_DETECTION_MODEL
    settings: DetectorSettings

    def __init__(self, store: ModelStore, settings: DetectorSettings) -> None:
        super().__init__(store, settings)
        self.max_annotated_side = annotated_side_limit(
            settings.max_annotated_side, settings.max_message_bytes, settings.max_det
        )
        self.runtime = dataclasses.replace(
            RuntimeOptions.resolve(
                settings.runtime,
                self.device,
                settings.precision,
                settings.runtime_cache_dir,
                settings.parity_score_tolerance,
            ),
            # Ultralytics sets torch's threads to cores - 1 with each new predictor: not read from torch.
            threads=settings.torch_threads or cpu_cores(),
        )
        self.parity_bounds = ParityBounds(settings.parity_box_tolerance_px, settings.parity_score_tolerance)

    def load(self, version: ModelVersion) -> ServedDetector:
        return load_for_serving(
            version,
            self.device,
            self.settings.half,
            self.runtime,
            self.parity_bounds,
            self.settings.openvino_streams,
        )

    def run_batch(self, key: Hashable, items: Sequence[np.ndarray]) -> list[Results]:
        assert isinstance(key, PredictKey)
        return key.model.predict(items, key)

    def _model(self, model_name: str, version: str) -> tuple[str, str, ServedDetector]:
        try:
            return self.registry.get(model_name, version)
        except ModelNotFound:
            if not any(v.metadata.task == DETECTION_TASK for v in self.registry.store.list()):
                raise NoModelAvailable(NO_DETECTION_MODEL) from None
            raise

    def _imgsz(self, model: ServedDetector, requested: int | None) -> int:
        fixed = model.fixed_imgsz
        if fixed is None:
            return requested or model.version.metadata.input_size
        if requested is not None and [requested, requested] != fixed:
            raise InvalidArgument(
                f"model {model.version.name} is a static ONNX export for imgsz {fixed}; "
                f"leave imgsz unset or export it again with dynamic=True"
            )
        return max(fixed)

    def detect(
        self,
        image: bytes,
        options: DetectOptions,
        *,
        model_name: str = "",
        version: str = "",
        timeout: float | None = None,
    ) -> Detection:
        """Boxes in original-image pixels, equal to ``YOLO.predict(image, conf=, iou=, max_det=, classes=,
        imgsz=)`` on the same weights; the annotated image (Ultralytics' ``plot()``) as PNG if asked for, its
        longer side at most ``max_annotated_side``. ``timeout`` (seconds) bounds the whole call."""
        start = time.perf_counter()
        options.check(self.settings.max_det, self.settings.max_imgsz)
        name, resolved_version, model = self._model(model_name, version)
        classes = resolve_classes(options.class_ids, options.class_names, model.class_names)
        imgsz = self._imgsz(model, options.imgsz)
        deadline = self.deadline_after(timeout)
        with self.decode_slot(deadline):
            picture = decode_image(image, self.image_limits)
            width, height = picture.size
            bgr = cv2.cvtColor(np.asarray(picture), cv2.COLOR_RGB2BGR)  # Ultralytics' arrays are BGR (OpenCV)
            del picture
        decode_ms = (time.perf_counter() - start) * 1000
        key = PredictKey(
            model, (bgr.shape[0], bgr.shape[1]), options.conf, options.iou, options.max_det, classes, imgsz
        )
        batched = self.batcher.run(key, bgr, timeout=self.time_left(deadline))
        answered = self.answered(name, resolved_version, decode_ms, batched)
        result = batched.value
        annotated = b""
        with self.telemetry.encoding():
            if options.annotate:
                annotated = annotated_png(result, self.max_annotated_side)
            boxes = boxes_of(result, model.class_names)
        return Detection(
            boxes=boxes,
            annotated_png=annotated,
            image_width=width,
            image_height=height,
            answered=answered,
        )

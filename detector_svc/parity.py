"""Does a converted detection model answer as torch ``YOLO.predict`` does? Checked before it serves.

Torch and the converted model run on the same fixed input: the two photos that ship with Ultralytics
(bus.jpg 810x1080, zidane.jpg 1280x720: two letterbox shapes) one at a time, and zidane with its mirror
image as a batch of two (the batch dimension), through Ultralytics' predictor at a low confidence
(`PARITY_CONF`), so that even a barely trained model gives boxes. Two things are compared:

* the boxes: each of torch's is matched to the converted model's box of the same class that overlaps it
  most (IoU >= 0.5); matched boxes must agree within the box bound (any coordinate, original-image pixels)
  and the score bound (confidence). A box found by one side only passes when it is borderline: its score is
  within the score bound of the threshold that dropped it on the other side (``conf``, or the lowest score
  kept when ``max_det`` boxes were kept).
* the raw network output (before NMS) on the letterboxed photos: every class score within the score bound,
  and the boxes of torch's 100 best anchors within the box bound (scaled to original-image pixels). This part
  does not depend on thresholds: it checks a model that finds no box at all as well.

fp32 must agree everywhere. Below fp32 (bf16: 7-bit mantissa, fp16: 10-bit) the bounds are looser
(`LOW_PRECISION_BOUNDS`) and some boxes may disagree: at least `LOW_PRECISION_MIN_AGREEMENT` of them must
match within the bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PARITY_CONF = 0.05
PARITY_IOU = 0.45
PARITY_MAX_DET = 300
PARITY_PHOTOS = ("bus.jpg", "zidane.jpg")
_RAW_TOP_ANCHORS = 100
_MATCH_IOU = 0.5
# Below fp32: (box bound as a fraction of the photo's longer side, score bound); fp16 has 3 more mantissa bits
# than bf16.
LOW_PRECISION_BOUNDS = {"bf16": (0.02, 0.05), "fp16": (0.005, 0.01)}
LOW_PRECISION_MIN_AGREEMENT = 0.9


# Issue 15: at fp32, boxes within a pixel and scores within 1e-3 of torch's (VISION_DETECTOR_PARITY_*).
FP32_BOX_PX = 1.0
FP32_SCORE = 1e-3


@dataclass(frozen=True)
class ParityBounds:
    """What fp32 must meet: box coordinates (original-image pixels) and scores."""

    box_px: float = FP32_BOX_PX
    score: float = FP32_SCORE


@dataclass(frozen=True)
class DetectionParity:
    """How a converted model's detections compare with torch's on the parity photos."""

    max_box_px: float  # largest |Δ| of a coordinate of matched boxes and of the raw top anchors' boxes
    max_score_diff: float  # largest |Δ| of a matched box's confidence and of any raw class score
    box_agreement: float  # boxes matched within the bounds / boxes compared (borderline ones left out)
    boxes: int  # boxes torch found on the parity photos
    box_bound: float  # the bound applied to the largest photo (low precision: relative to its size)
    score_bound: float
    failure: str  # '' when it passes


Rows = np.ndarray  # (n, 6): x1, y1, x2, y2, confidence, class; original-image pixels
Predict = Callable[[Sequence[np.ndarray]], list[Rows]]
Network = Callable[[torch.Tensor], torch.Tensor]


def parity_groups() -> list[list[np.ndarray]]:
    """The fixed input, as groups of HxWx3 BGR uint8 images for one ``predict`` call each (see the module
    docstring); seeded noise of the same sizes where Ultralytics' assets are missing."""
    from PIL import Image
    from ultralytics.utils import ASSETS

    photos = []
    for name, size in zip(PARITY_PHOTOS, ((1080, 810), (720, 1280)), strict=True):
        path = ASSETS / name
        if path.is_file():
            photos.append(np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]))
        else:
            photos.append(np.random.default_rng(len(photos)).integers(0, 256, (*size, 3), dtype=np.uint8))
    mirrored = np.ascontiguousarray(photos[1][:, ::-1])
    return [[photos[0]], [photos[1]], [photos[1], mirrored]]


def letterboxed(image: np.ndarray, imgsz: int, stride: int) -> tuple[torch.Tensor, float]:
    """``image`` as Ultralytics' predictor feeds a torch model (minimal-padding letterbox, RGB, [0, 1]),
    (1, 3, H, W), and the letterbox's scale (input pixels per original pixel)."""
    from ultralytics.data.augment import LetterBox

    boxed: np.ndarray = LetterBox((imgsz, imgsz), auto=True, stride=stride)(image=image)  # type: ignore[assignment]
    tensor = torch.from_numpy(np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1))).float() / 255
    return tensor[None], min(imgsz / image.shape[0], imgsz / image.shape[1])


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x2, y2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_box = (box[2] - box[0]) * (box[3] - box[1])
    area = area_box + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(area - inter, 1e-9))


def _cutoff(rows: Rows, conf: float, max_det: int) -> float:
    """The score below which the side that found ``rows`` dropped boxes."""
    return float(rows[:, 4].min()) if len(rows) >= max_det else conf


@dataclass
class _Tally:
    box_px: float = 0.0
    score: float = 0.0
    agreeing: int = 0
    compared: int = 0
    boxes: int = 0
    first_miss: str = ""

    def miss(self, what: str) -> None:
        self.compared += 1
        self.first_miss = self.first_miss or what


def compare_boxes(
    want: Rows, got: Rows, bounds: ParityBounds, tally: _Tally, conf: float, max_det: int
) -> None:
    """Match ``got`` (converted) to ``want`` (torch) for one image and add the outcome to ``tally``."""
    tally.boxes += len(want)
    free = np.ones(len(got), dtype=bool)
    for row in want:
        candidates = free & (got[:, 5] == row[5]) if len(got) else free
        overlap = _iou(row, got) if len(got) else np.zeros(0)
        overlap = np.where(candidates, overlap, -1.0)
        best = int(np.argmax(overlap)) if len(got) else -1
        if best < 0 or overlap[best] < _MATCH_IOU:
            if row[4] > _cutoff(got, conf, max_det) + bounds.score:
                tally.miss(f"torch's box {_describe(row)} is missing")
            continue
        free[best] = False
        box_px = float(np.abs(got[best, :4] - row[:4]).max())
        score = float(abs(got[best, 4] - row[4]))
        tally.box_px, tally.score = max(tally.box_px, box_px), max(tally.score, score)
        if box_px <= bounds.box_px and score <= bounds.score:
            tally.agreeing += 1
            tally.compared += 1
        else:
            tally.miss(f"box {_describe(row)} moved {box_px:.3g} px, its score by {score:.3g}")
    for row in got[free]:
        if row[4] > _cutoff(want, conf, max_det) + bounds.score:
            tally.miss(f"box {_describe(row)} is not among torch's")


def _describe(row: np.ndarray) -> str:
    corners = ", ".join(f"{v:.0f}" for v in row[:4])
    return f"class {int(row[5])} at ({corners}) score {row[4]:.3f}"


def compare_raw(want: torch.Tensor, got: torch.Tensor, scale: float, tally: _Tally) -> None:
    """Raw outputs (1, 4 + K, anchors) of torch and the converted model on one letterboxed image."""
    tally.score = max(tally.score, float((got[:, 4:] - want[:, 4:]).abs().max()))
    top = want[0, 4:].amax(0).topk(min(_RAW_TOP_ANCHORS, want.shape[2])).indices
    tally.box_px = max(tally.box_px, float((got[0, :4, top] - want[0, :4, top]).abs().max()) / scale)


def check_parity(
    reference: Predict,
    converted: Predict,
    torch_network: Network,
    network: Network,
    imgsz: int,
    stride: int,
    precision: str,
    bounds: ParityBounds,
) -> DetectionParity:
    """Run torch (``reference``, ``torch_network``) and the converted model (``converted``, ``network``) on
    the parity input and compare them (see the module docstring)."""
    groups = parity_groups()
    longest = max(max(image.shape[:2]) for group in groups for image in group)
    if precision != "fp32":
        fraction, score = LOW_PRECISION_BOUNDS[precision]
        bounds = ParityBounds(max(bounds.box_px, fraction * longest), max(bounds.score, score))
    tally = _Tally()
    wanted = [reference(group) for group in groups]  # all of torch's first: one predictor set-up each side
    for want_group, group in zip(wanted, groups, strict=True):
        for want, got in zip(want_group, converted(group), strict=True):
            compare_boxes(want, got, bounds, tally, PARITY_CONF, PARITY_MAX_DET)
    raw_box_px, raw_score = 0.0, 0.0
    for image in (group[0] for group in groups[:2]):
        tensor, scale = letterboxed(image, imgsz, stride)
        with torch.inference_mode():
            raw = _Tally()
            compare_raw(torch_network(tensor), network(tensor), scale, raw)
        raw_box_px, raw_score = max(raw_box_px, raw.box_px), max(raw_score, raw.score)
    agreement = tally.agreeing / tally.compared if tally.compared else 1.0
    failure = ""
    if raw_score > bounds.score:
        failure = f"a raw class score differs by {raw_score:.3g} (bound {bounds.score:.3g}, {precision})"
    elif raw_box_px > bounds.box_px:
        failure = f"a raw box differs by {raw_box_px:.3g} px (bound {bounds.box_px:.3g} px, {precision})"
    elif precision == "fp32" and tally.first_miss:
        failure = f"{tally.first_miss} (bounds {bounds.box_px:.3g} px, score {bounds.score:.3g}, fp32)"
    elif agreement < LOW_PRECISION_MIN_AGREEMENT:
        failure = f"only {agreement:.0%} of the boxes agree ({precision}); first: {tally.first_miss}"
    return DetectionParity(
        max(tally.box_px, raw_box_px),
        max(tally.score, raw_score),
        agreement,
        tally.boxes,
        bounds.box_px,
        bounds.score,
        failure,
    )


def rows_of(results: Sequence[Any]) -> list[Rows]:
    """Ultralytics results as (n, 6) float64 arrays (original-image pixels)."""
    out = []
    for result in results:
        data = result.boxes.data if result.boxes is not None else torch.zeros(0, 6)
        out.append(np.asarray(data.cpu(), dtype=np.float64).reshape(-1, 6))
    return out

"""Shared by the detector tests (no tests in here): a real Ultralytics YOLO11n built from the package's
bundled ``yolo11n.yaml`` (random weights, nothing downloaded), the direct ``YOLO.predict`` reference, and a
real detector_svc on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from detector_svc.config import DetectorSettings
from detector_svc.model import DetectorEngine
from detector_svc.offline import make_ultralytics_offline
from detector_svc.server import create_detector_server
from tests.conftest import ultralytics_asset
from vision.models.store import ModelStore
from vision.rpc.server import GrpcServer
from vision.v1 import detector_pb2

make_ultralytics_offline()

from ultralytics import YOLO  # noqa: E402
from ultralytics.data.augment import LetterBox  # noqa: E402

PHOTOS = ("bus.jpg", "zidane.jpg")
Row = tuple[float, float, float, float, float, int]


def coco_names() -> list[str]:
    """The 80 COCO class names, from the dataset YAML that ships with ultralytics."""
    data = yaml.safe_load((ultralytics_asset("").parent / "cfg/datasets/coco.yaml").read_text())
    return [data["names"][i] for i in range(len(data["names"]))]


def photo_bgr(name: str) -> np.ndarray:
    from PIL import Image

    return np.ascontiguousarray(np.asarray(Image.open(ultralytics_asset(name)).convert("RGB"))[:, :, ::-1])


def make_yolo_checkpoint(path: Path, names: list[str] | None = None, seed: int = 0) -> Path:
    """Save an Ultralytics YOLO11n ``.pt`` that finds boxes on the bundled photos at the default conf.

    Random weights shrink activations to ~1e-8 by the head, so every score would be the head's bias
    (~1e-4). The BatchNorm statistics are set from the two photos (as a short training run would), and the
    class-head convs (last layer of each ``cv3`` branch) get smaller weights and a raised bias: the bus
    then has a few hundred candidate boxes over ~40 classes, zidane a handful.
    """
    torch.manual_seed(seed)
    model = YOLO("yolo11n.yaml")
    network = model.model
    assert isinstance(network, torch.nn.Module)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration passes
    network.train()
    with torch.no_grad():
        for photo in PHOTOS:
            letterboxed = LetterBox((640, 640), auto=True, stride=32)(image=photo_bgr(photo))
            network(torch.from_numpy(letterboxed[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255)
        for branch in network.model[-1].cv3:
            branch[-1].weight *= 0.1
            branch[-1].bias.fill_(-1.5)
    network.eval()
    network.names = dict(enumerate(names or coco_names()))
    model.save(str(path))
    return path


def reference(weights: Path | str, source: Any, **params: Any) -> list[Row]:
    """What ``YOLO(weights).predict(source, **params)`` finds, highest confidence first."""
    result = YOLO(str(weights), task="detect").predict(source, verbose=False, **params)[0]
    return sorted((rows(result.boxes.data)), key=lambda r: -r[4])


def rows(data: torch.Tensor) -> list[Row]:
    return [(x1, y1, x2, y2, s, int(c)) for x1, y1, x2, y2, s, c in data.cpu().tolist()]


def reply_rows(reply: detector_pb2.DetectResponse) -> list[Row]:
    return [(b.x1, b.y1, b.x2, b.y2, b.confidence, b.class_id) for b in reply.boxes]


def as_float32(table: list[Row]) -> list[Row]:
    """Rows as they travel in the proto (float32), for exact comparison."""
    out = []
    for *coords, score, cls in table:
        x1, y1, x2, y2, s = (float(np.float32(v)) for v in (*coords, score))
        out.append((x1, y1, x2, y2, s, cls))
    return out


def assert_same_detections(got: list[Row], want: list[Row]) -> None:
    """Same boxes with the same classes; coordinates and scores equal up to float32 rounding.

    A batched forward pass rounds differently from a single-image one (by ~0.003 px at most on the photos):
    Ultralytics' own ``predict([a, b])`` differs from ``predict(a)`` by as much.
    """
    assert len(got) == len(want)
    a, b = (np.array(t, dtype=float).reshape(-1, 6) for t in (got, want))
    unmatched = np.ones(len(b), dtype=bool)
    for row in a:
        close = (
            unmatched
            & (b[:, 5] == row[5])
            & np.all(np.abs(b[:, :4] - row[:4]) <= 0.01, axis=1)  # pixels
            & (np.abs(b[:, 4] - row[4]) <= 1e-4)  # confidence
        )
        assert close.any(), f"no match for {row.tolist()}"
        unmatched[np.argmax(close)] = False


def start_detector(store: ModelStore, **overrides: Any) -> tuple[GrpcServer, DetectorEngine]:
    fields: dict[str, Any] = {
        "port": 0,
        "model_dir": store.root,
        "fetch_default": False,
        "poll_interval_s": 0.2,
    }
    return create_detector_server(DetectorSettings(**{**fields, **overrides}))

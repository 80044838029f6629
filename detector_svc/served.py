"""A stored detection version loaded to serve: an Ultralytics YOLO, run by torch or, on the CPU, by a
converted model (OpenVINO, onnxruntime) that passed the parity check against torch (`detector_svc.parity`).

Thread safety: a served model (and its predictor) is only ever used by the batcher's one worker thread;
loading, conversion, the parity check and warm-up happen before it is published to the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from detector_svc.conversion import converted_predictor, export_network, make_network
from detector_svc.network import load_yolo
from detector_svc.parity import (
    PARITY_CONF,
    PARITY_IOU,
    PARITY_MAX_DET,
    DetectionParity,
    ParityBounds,
    check_parity,
    rows_of,
)
from vision.models.store import ModelVersion
from vision.serving.runtimes import RuntimeOptions, ServedAs

if TYPE_CHECKING:
    from ultralytics.engine.results import Results

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedDetector:
    """A stored version as an Ultralytics YOLO on ``device``; ``predict`` runs on the batcher thread only.

    ``predictor`` is the Ultralytics predictor class ``predict`` uses: torch's own ``DetectionPredictor``
    unless a converted model serves (`detector_svc.conversion.converted_predictor`).
    """

    version: ModelVersion
    yolo: Any  # ultralytics.YOLO
    device: torch.device
    half: bool
    predictor: type[Any] | None = None
    served_as: ServedAs = field(default_factory=ServedAs)
    parity: DetectionParity | None = None

    @property
    def class_names(self) -> list[str]:
        return self.version.metadata.class_names

    @property
    def is_onnx(self) -> bool:
        return self.version.weights_path.suffix == ".onnx"

    @property
    def fixed_imgsz(self) -> list[int] | None:
        """[h, w] of a static ONNX export (it answers only at that size); None when any size works."""
        prov = self.version.metadata.provenance
        return list(prov["imgsz"]) if prov.get("format") == "onnx" and not prov.get("dynamic") else None

    def predict(self, images: Sequence[np.ndarray], key: PredictKey) -> list[Results]:
        """One ``YOLO.predict`` over HxWx3 BGR uint8 ``images`` of one shape; results on the CPU, in order."""
        return self.predict_with(self.predictor, images, key)

    def predict_with(
        self, predictor: type[Any] | None, images: Sequence[np.ndarray], key: PredictKey
    ) -> list[Results]:
        """`predict` with the predictor class ``predictor`` (None: Ultralytics' default for the weights)."""
        kwargs: dict[str, Any] = {}
        if self.half and self.device.type == "cuda" and not self.is_onnx:
            kwargs["quantize"] = 16
        if predictor is None and not self.is_onnx:
            # Named, not left to None: Ultralytics would otherwise keep whatever predictor class it last had.
            from ultralytics.models.yolo.detect import DetectionPredictor

            predictor = DetectionPredictor
        results = self.yolo.predict(
            list(images),
            conf=key.conf,
            iou=key.iou,
            max_det=key.max_det,
            classes=list(key.classes) if key.classes is not None else None,
            imgsz=key.imgsz,
            device=str(self.device),
            verbose=False,
            predictor=predictor,
            **kwargs,
        )
        return [r.cpu() for r in results]


@dataclass(frozen=True)
class PredictKey:
    """What must be equal for requests to share one ``predict`` call."""

    model: ServedDetector
    shape: tuple[int, int]
    conf: float
    iou: float
    max_det: int
    classes: tuple[int, ...] | None
    imgsz: int


def load_for_serving(
    version: ModelVersion,
    device: torch.device,
    half: bool,
    runtime: RuntimeOptions | None = None,
    bounds: ParityBounds | None = None,
    streams: int = 0,
) -> ServedDetector:
    """Load ``version`` and warm it up (predictor set-up, first-call allocations) before it serves.

    With a converted ``runtime`` the version is converted (or taken from the cache), checked against torch
    and served by it (OpenVINO with ``streams`` streams, see `OpenVinoNetwork`); when either step fails
    torch serves it and ``served_as.fallback`` says why. A stored
    ONNX model runs on onnxruntime whatever the runtime (it has no torch weights to check a conversion with).
    """
    served = ServedDetector(version, load_yolo(version), device, half)
    cuda_half = half and device.type == "cuda"
    served.served_as = ServedAs("torch", "fp16" if cuda_half else "fp32")
    wanted = runtime.runtime if runtime is not None else "torch"
    if served.is_onnx:
        why = "" if wanted == "onnxruntime" else onnx_fallback(wanted)
        served.served_as = ServedAs("onnxruntime", "fp32", why)
    warm_up(served)
    if runtime is not None and wanted != "torch" and not served.is_onnx:
        attach_runtime(served, runtime, bounds or ParityBounds(score=runtime.tolerance), streams)
        warm_up(served)
    return served


def onnx_fallback(wanted: str) -> str:
    return (
        f"a stored ONNX model runs on onnxruntime (Ultralytics' ONNX backend), not {wanted}: it has no torch "
        "weights to convert or check against"
    )


def warm_up(served: ServedDetector) -> None:
    size = served.fixed_imgsz or [served.version.metadata.input_size] * 2
    blank = np.zeros((size[0], size[1], 3), dtype=np.uint8)
    served.predict([blank], PredictKey(served, (size[0], size[1]), 0.25, 0.45, 300, None, max(size)))


def attach_runtime(
    served: ServedDetector, options: RuntimeOptions, bounds: ParityBounds, streams: int = 0
) -> None:
    """Serve ``served`` by the converted runtime ``options`` asks for, if it converts and passes parity."""
    version = served.version
    wanted = f"{options.runtime} {options.precision}"
    imgsz = version.metadata.input_size

    def rows(predictor: type[Any] | None, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        shape = (images[0].shape[0], images[0].shape[1])
        key = PredictKey(served, shape, PARITY_CONF, PARITY_IOU, PARITY_MAX_DET, None, imgsz)
        return rows_of(served.predict_with(predictor, images, key))

    try:
        network = make_network(version, served.yolo, options, streams)
        predictor = converted_predictor(network)
        parity = check_parity(
            lambda images: rows(None, images),
            lambda images: rows(predictor, images),
            export_network(served.yolo),
            network,
            imgsz,
            max(int(served.yolo.model.stride.max()), 32),
            options.precision,
            bounds,
        )
    except Exception as exc:  # any conversion failure: torch serves, the reason is reported
        why = f"{wanted} unavailable ({type(exc).__name__}: {exc}); torch serves this version"
        log.warning("%s version %s: %s", version.name, version.version, why, exc_info=exc)
        served.served_as = ServedAs("torch", served.served_as.precision, why)
        return
    served.parity = parity
    if parity.failure:
        why = f"{wanted} failed the parity check against torch: {parity.failure}; torch serves this version"
        log.warning("%s version %s: %s", version.name, version.version, why)
        served.served_as = ServedAs("torch", served.served_as.precision, why)
        return
    served.predictor = predictor
    served.served_as = ServedAs(options.runtime, options.precision)
    log.info(
        "%s version %s served by %s (parity with torch on %d boxes: max |Δbox| %.3g px, max |Δscore| %.3g, "
        "%.0f%% of boxes agree)",
        version.name,
        version.version,
        wanted,
        parity.boxes,
        parity.max_box_px,
        parity.max_score_diff,
        parity.box_agreement * 100,
    )

"""detector_svc settings, from VISION_DETECTOR_* environment variables (plus the shared VISION_* ones)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from detector_svc.parity import FP32_BOX_PX, FP32_SCORE
from vision.settings import RuntimeServiceSettings

YOLO11N_URL = "https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n.pt"


class DetectorSettings(RuntimeServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_DETECTOR_", extra="ignore", populate_by_name=True)

    port: int = Field(50053, ge=0, le=65535, description="gRPC port (0: any free port).")
    metrics_port: int = Field(9103, ge=0, le=65535, description="Port of GET /metrics (Prometheus); 0: off.")
    default_model: str = Field(
        "", description="Model used when a request names none; empty: 'yolo11n' if stored, else the newest."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests in one predict call.")
    max_queue: int = Field(64, ge=1, description="Requests waiting beyond this get RESOURCE_EXHAUSTED.")
    max_det: int = Field(1000, ge=1, le=100_000, description="Largest max_det a request may ask for.")
    max_imgsz: int = Field(2048, ge=32, le=8192, description="Largest imgsz a request may ask for.")
    half: bool = Field(True, description="float16 inference on CUDA (ignored on CPU and for ONNX models).")
    max_annotated_side: int = Field(
        1920,
        ge=64,
        le=16384,
        description="Annotated images of larger photos are drawn scaled down to this longer side (PNG); "
        "lowered if need be so that the reply fits the message limit.",
    )
    fetch_default: bool = Field(
        True, description="With no detection model in the store, fetch yolo11n.pt (in the background)."
    )
    default_weights_url: str = Field(YOLO11N_URL, description="Where yolo11n.pt is fetched from.")
    fetch_timeout_s: float = Field(10.0, gt=0, description="Network timeout for that download.")
    openvino_streams: int = Field(
        0,
        ge=0,
        le=64,
        description="OpenVINO CPU streams of a converted model: 0, one per inference thread (each "
        "single-threaded; a batch's images run side by side: throughput, robust on a busy CPU); 1, one "
        "stream using every thread (the lowest latency for lone requests on an idle CPU).",
    )
    parity_box_tolerance_px: float = Field(
        FP32_BOX_PX,
        ge=0,
        description="Largest difference of a box coordinate (original-image pixels) an fp32 converted model "
        "may have from torch's on the parity photos; beyond it torch serves that version.",
    )
    parity_score_tolerance: float = Field(
        FP32_SCORE,
        ge=0,
        description="Largest difference of a confidence (and of any raw class score) an fp32 converted model "
        "may have from torch's on the parity photos; beyond it torch serves that version.",
    )

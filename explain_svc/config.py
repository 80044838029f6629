"""explain_svc settings, from VISION_EXPLAIN_* environment variables (plus the shared VISION_* ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from vision.choices import OVERLAY_FORMATS
from vision.settings import ClassificationServiceSettings

MIN_OVERLAY_SIDE = 64


class ExplainSettings(ClassificationServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_EXPLAIN_", extra="ignore", populate_by_name=True)

    port: int = Field(50052, ge=0, le=65535, description="gRPC port (0: any free port).")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Port of GET /metrics (Prometheus); 0: off.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests in one forward(/backward) pass.")
    max_queue: int = Field(128, ge=1, description="Requests waiting beyond this get RESOURCE_EXHAUSTED.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k a request may ask for.")
    overlay_side: int = Field(
        640,
        ge=MIN_OVERLAY_SIDE,
        description="Longest side of an overlay when the request does not say (overlay_max_side 0): a longer "
        "photo is shrunk by the smallest whole factor that fits.",
    )
    max_overlay_side: int = Field(
        2048, ge=MIN_OVERLAY_SIDE, description="The largest overlay_max_side a request may ask for."
    )

    overlay_format: Literal["jpeg", "png"] = Field(
        OVERLAY_FORMATS.default,  # type: ignore[arg-type]
        description="Encoding of overlays when the request does not say: jpeg (a quarter of PNG's bytes, "
        "quicker to make) or png (lossless). The raw heatmap is always PNG.",
    )
    overlay_jpeg_quality: int = Field(90, ge=1, le=95, description="JPEG quality of JPEG overlays.")

    @model_validator(mode="after")
    def _default_within_the_limit(self) -> ExplainSettings:
        if self.overlay_side > self.max_overlay_side:
            raise ValueError(
                f"overlay_side ({self.overlay_side}) must not exceed "
                f"max_overlay_side ({self.max_overlay_side})"
            )
        return self

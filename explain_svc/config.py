"""explain_svc settings, from VISION_EXPLAIN_* environment variables (plus the shared VISION_* ones)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vision.settings import ClassificationServiceSettings


class ExplainSettings(ClassificationServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_EXPLAIN_", extra="ignore", populate_by_name=True)

    port: int = Field(50052, ge=0, le=65535, description="gRPC port (0: any free port).")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Port of GET /metrics (Prometheus); 0: off.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests in one forward(/backward) pass.")
    max_queue: int = Field(128, ge=1, description="Requests waiting beyond this get RESOURCE_EXHAUSTED.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k a request may ask for.")
    max_overlay_side: int = Field(
        2048, ge=64, description="Overlays of larger photos are scaled down to this."
    )

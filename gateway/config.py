"""Gateway settings, from VISION_GATEWAY_* environment variables (plus the shared VISION_* ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vision.settings import (
    DEFAULT_MAX_CLASSES,
    MESSAGE_OVERHEAD_BYTES,
    max_upload_bytes,
    max_upload_files,
    shared,
)

# Multipart framing and the small form fields around the image.
FORM_OVERHEAD_BYTES = 64 * 1024
# Multipart framing per file of a training upload (part headers with the file name).
TRAIN_PART_OVERHEAD_BYTES = 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", description="HTTP listen address ('0.0.0.0' in containers).")
    port: int = Field(8000, ge=0, le=65535)
    metrics_port: int = Field(
        9100, ge=0, le=65535, description="Port of GET /metrics (Prometheus), never the public one; 0: off."
    )
    # Any gRPC target: host:port, dns:///name:port (every address of a headless Service), or a list
    # ipv4:10.0.0.1:50051,10.0.0.2:50051. Calls are spread over the addresses by lb_policy.
    classifier_addr: str = Field("127.0.0.1:50051", description="classifier_svc gRPC target (required).")
    explain_addr: str = Field("", description="explain_svc gRPC target; empty: not deployed.")
    detector_addr: str = Field("", description="detector_svc gRPC target; empty: not deployed.")
    trainer_addr: str = Field("", description="trainer_svc gRPC target; empty: not deployed.")
    lb_policy: Literal["round_robin", "pick_first"] = Field(
        "round_robin",
        description="How calls are spread over a target's addresses: round_robin (each call to the next "
        "ready one) or pick_first (one connection).",
    )
    drain_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, how long requests in progress get to finish before the gateway stops.",
    )
    timeout_s: float = Field(30.0, gt=0, description="Deadline of each gRPC call.")
    health_timeout_s: float = Field(2.0, gt=0, description="Deadline of each downstream health check.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty: CORS off."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 429 (service overloaded).")
    max_image_bytes: int = shared(
        "VISION_MAX_IMAGE_BYTES", 20 * 1024 * 1024, "Largest image upload accepted."
    )
    # Shared with trainer_svc: VISION_MAX_UPLOAD_FILES / _BYTES (the older gateway-only names still work).
    train_max_files: int = max_upload_files("VISION_GATEWAY_TRAIN_MAX_FILES")
    train_max_bytes: int = max_upload_bytes("VISION_GATEWAY_TRAIN_MAX_BYTES")
    train_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="Deadline of the CreateJob stream behind one POST /train (from its first file on).",
    )
    train_max_labels: int = Field(
        DEFAULT_MAX_CLASSES, ge=2, description="Most classes (label1..labelN) one POST /train may name."
    )
    train_max_field_bytes: int = Field(
        1024, ge=64, description="Longest text field (a label, an option) of POST /train, in bytes."
    )
    train_max_form_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Most bytes of all text fields of one POST /train together (names and values).",
    )
    train_max_concurrent: int = Field(
        8, ge=1, description="POST /train uploads in progress at once; more get 429 at once."
    )
    events_max_streams: int = Field(
        16, ge=1, description="GET /jobs/{id}/events streams open at once; more get 429 at once."
    )
    events_max_s: float = Field(
        300.0,
        gt=0,
        description="Longest one event stream stays open; the browser then reconnects with Last-Event-ID.",
    )
    body_idle_timeout_s: float = Field(
        30.0, gt=0, description="A request body that sends no byte for this long is refused with 408."
    )
    log_level: str = shared("VISION_LOG_LEVEL", "INFO", "Logging level.")
    log_json: bool = shared("VISION_LOG_JSON", False, "One JSON object per log line.")

    @field_validator("classifier_addr")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("VISION_GATEWAY_CLASSIFIER_ADDR is required (the gRPC target of classifier_svc)")
        return value

    @property
    def max_upload_bytes(self) -> int:
        """Largest request body for an image upload route: the image plus the form around it."""
        return self.max_image_bytes + FORM_OVERHEAD_BYTES

    @property
    def max_train_body_bytes(self) -> int:
        """Largest POST /train body: the images, each file's part headers, and the form fields."""
        return self.train_max_bytes + self.train_max_files * TRAIN_PART_OVERHEAD_BYTES + FORM_OVERHEAD_BYTES

    @property
    def max_message_bytes(self) -> int:
        return self.max_image_bytes + MESSAGE_OVERHEAD_BYTES

    def backends(self) -> dict[str, str]:
        """Configured downstream services: {name: address}."""
        all_addrs = {
            "classifier": self.classifier_addr,
            "explain": self.explain_addr,
            "detector": self.detector_addr,
            "trainer": self.trainer_addr,
        }
        return {name: addr for name, addr in all_addrs.items() if addr}

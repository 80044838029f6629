"""classifier_svc settings, from VISION_CLASSIFIER_* environment variables (plus the shared VISION_* ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from vision.image.batch_decode import DEFAULT_MAX_BATCH_PIXELS
from vision.settings import ClassificationServiceSettings


class ClassifierSettings(ClassificationServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_CLASSIFIER_", extra="ignore", populate_by_name=True)

    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port).")
    metrics_port: int = Field(9101, ge=0, le=65535, description="Port of GET /metrics (Prometheus); 0: off.")
    half: bool = Field(True, description="float16 + channels_last on CUDA (ignored on CPU).")
    max_top_k: int = Field(100, ge=1, description="Largest top_k a request may ask for.")
    preprocess: Literal["exact", "fast"] = Field(
        "exact",
        description="exact: torchvision's Resize -> CenterCrop, bit for bit; fast: JPEGs decoded at a DCT "
        "scale and only the crop resampled, about half the CPU per image, probabilities within 5e-3.",
    )
    decode: Literal["auto", "pillow", "batched"] = Field(
        "auto",
        description="pillow: each request's image decoded on the CPU in its handler thread; batched: JPEGs "
        "decoded a batch at a time on the model's device (nvJPEG on CUDA); auto: batched on CUDA with "
        "exact preprocessing, else pillow.",
    )
    decode_max_batch_pixels: int = Field(
        DEFAULT_MAX_BATCH_PIXELS,
        ge=1,
        description="Batched decoding: most declared pixels decoded on the device by one call (bounds "
        "its memory: 3 bytes a pixel).",
    )

    @model_validator(mode="after")
    def _fast_is_pillow(self) -> ClassifierSettings:
        if self.decode == "batched" and self.preprocess == "fast":
            raise ValueError(
                "VISION_CLASSIFIER_PREPROCESS=fast is a Pillow mode: it needs DECODE=pillow or auto"
            )
        return self

    def batched_decode(self, device_type: str) -> bool:
        """Whether images are decoded a batch at a time on the model's device (see ``decode``)."""
        if self.decode == "auto":
            return device_type == "cuda" and self.preprocess == "exact"
        return self.decode == "batched"

    fetch_pretrained: bool = Field(
        True, description="When the store is empty, try to fetch ImageNet ResNet18 (in the background)."
    )
    pretrained_url: str = Field("", description="Mirror URL for the ResNet18 ImageNet weights.")
    pretrained_timeout_s: float = Field(10.0, gt=0, description="Network timeout for that download.")

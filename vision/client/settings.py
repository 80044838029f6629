"""The client's settings (``VISION_CLIENT_*``): where the services are, how long a call may take, how it
retries. TLS is `vision.security.tls.TlsSettings` (``VISION_TLS_*``, the variables every process of the
mesh reads), or one made with explicit paths."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vision.settings import MESSAGE_OVERHEAD_BYTES, ServiceSettings

ENV_PREFIX = "VISION_CLIENT_"
SERVICES = ("classifier", "explain", "detector", "trainer")
# The services' own limit on an encoded image (VISION_MAX_IMAGE_BYTES): the client's messages may be as large.
_DEFAULT_MAX_MESSAGE_BYTES = (
    int(ServiceSettings.model_fields["max_image_bytes"].default) + MESSAGE_OVERHEAD_BYTES
)


def _address(service: str) -> str:
    return Field(
        "",
        description=f"gRPC target of {service}_svc (host:port, dns:///name:port, ipv4:a:p,b:p); empty: not "
        "configured (its methods raise NotConfiguredError).",
    )


class ClientSettings(BaseSettings):
    """How `VisionClient` and `AsyncVisionClient` reach the services and treat failures."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    classifier_addr: str = _address("classifier")
    explain_addr: str = _address("explain")
    detector_addr: str = _address("detector")
    trainer_addr: str = _address("trainer")
    deadline_s: float = Field(
        30.0, gt=0, description="Deadline of a call (all its attempts together) unless the call names one."
    )
    upload_deadline_s: float = Field(
        3600.0, gt=0, description="Deadline of a training upload (the CreateJob stream) unless given."
    )
    watch_deadline_s: float = Field(
        86400.0, gt=0, description="Longest watch_job follows a job (over every stream it reopens)."
    )
    max_attempts: int = Field(4, ge=1, le=20, description="Attempts of a retryable call (1: no retries).")
    backoff_initial_s: float = Field(0.25, gt=0, description="Wait before the first retry.")
    backoff_max_s: float = Field(5.0, gt=0, description="Longest wait between two attempts.")
    backoff_multiplier: float = Field(2.0, ge=1, description="Growth of the wait after each failed attempt.")
    retry_overloaded: bool = Field(
        True,
        description="Retry calls a service refused at once because it was at its limit of calls "
        "(RESOURCE_EXHAUSTED, kind overloaded), as well as UNAVAILABLE ones.",
    )
    max_message_bytes: int = Field(
        _DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        description="Largest gRPC message sent or received (an image plus the fields around it).",
    )
    lb_policy: Literal["round_robin", "pick_first"] = Field(
        "round_robin", description="How calls spread over the addresses of a target (dns:/// of many pods)."
    )
    concurrency: int = Field(
        8, ge=1, le=1024, description="Calls in flight at once in classify_many / detect_many / explain_many."
    )

    @model_validator(mode="after")
    def _backoff_ordered(self) -> ClientSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"{ENV_PREFIX}BACKOFF_MAX_S ({self.backoff_max_s}) is below {ENV_PREFIX}BACKOFF_INITIAL_S "
                f"({self.backoff_initial_s})"
            )
        return self

    def address(self, service: str) -> str:
        """The configured target of ``service`` ("" when none)."""
        return str(getattr(self, f"{service}_addr"))

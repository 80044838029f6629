"""Typed settings from environment variables, shared by every service.

Each service has its own prefix (``VISION_CLASSIFIER_``, ``VISION_GATEWAY_`` ...); the few settings every
service shares (model store, log format, image limits) have fixed names without a service prefix.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vision.image.decode import ImageLimits

# The largest gRPC message a service accepts: the image limit plus room for the other fields.
MESSAGE_OVERHEAD_BYTES = 1 * 1024 * 1024


def cpu_cores() -> int:
    """CPU cores this process may use: its affinity mask (where the platform has one), capped by the
    container's CPU limit (the cgroup's CPU quota, rounded up), so that thread pools sized from it do not
    oversubscribe a pod limited to fewer cores than its node has."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path | None = None) -> float | None:
    """The CPU limit of this process's cgroup in cores (cgroup v2 ``cpu.max``, else v1's CFS quota and
    period); None when there is none or it cannot be read."""
    root = root if root is not None else CGROUP_ROOT
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100_000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _split_commas(value: object) -> object:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; lists pass as they are."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# A list setting written in the environment as comma-separated words (``VISION_X=a,b``), not JSON.
CommaSeparated = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


def shared(env_name: str, default: Any, description: str) -> Any:
    """A field read from one un-prefixed environment variable shared by all services."""
    return Field(default, validation_alias=AliasChoices(env_name), description=description)


# Most classes one training job may have: the trainer's VISION_TRAINER_MAX_CLASSES and the gateway's
# VISION_GATEWAY_TRAIN_MAX_LABELS default to it.
DEFAULT_MAX_CLASSES = 1000
# Longest class label, in characters.
MAX_LABEL_CHARS = 100
# Most jobs in one page of trainer_svc's ListJobs (and the gateway's GET /jobs).
MAX_JOBS_PAGE_SIZE = 500
# Longest ListJobs page_token (ASCII digits: a job's seq); 18 digits always fit SQLite's 64-bit integers.
MAX_PAGE_TOKEN_DIGITS = 18

# The limits of one uploaded training dataset. The gateway enforces them while POST /train streams in and
# trainer_svc when it stores the upload: both read these same variables, so the two cannot disagree.
MAX_UPLOAD_FILES_ENV = "VISION_MAX_UPLOAD_FILES"
MAX_UPLOAD_BYTES_ENV = "VISION_MAX_UPLOAD_BYTES"
DEFAULT_MAX_UPLOAD_FILES = 10_000
DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3


def max_upload_files(*older_env_names: str) -> Any:
    """The field for the most images in one uploaded training dataset, read from ``VISION_MAX_UPLOAD_FILES``
    (or, still, from a service's older variable names given here)."""
    return Field(
        DEFAULT_MAX_UPLOAD_FILES,
        ge=1,
        validation_alias=AliasChoices(MAX_UPLOAD_FILES_ENV, *older_env_names),
        description="Most images in one uploaded training dataset.",
    )


def max_upload_bytes(*older_env_names: str) -> Any:
    """The field for the most bytes of images in one uploaded training dataset, read from
    ``VISION_MAX_UPLOAD_BYTES`` (or, still, from a service's older variable names given here)."""
    return Field(
        DEFAULT_MAX_UPLOAD_BYTES,
        ge=1,
        validation_alias=AliasChoices(MAX_UPLOAD_BYTES_ENV, *older_env_names),
        description="Most bytes of images in one uploaded training dataset.",
    )


class StoreSettings(BaseSettings):
    """Where the model store is: what every process that reads or writes models needs."""

    model_config = SettingsConfigDict(env_prefix="VISION_", extra="ignore", populate_by_name=True)

    model_dir: Path = shared("VISION_MODEL_DIR", Path("var/models"), "Model store directory.")
    keep_versions: int = Field(
        5,
        ge=0,
        validation_alias=AliasChoices("VISION_MODEL_KEEP_VERSIONS"),
        description="Newest versions kept per model when one is published (held ones too); 0: keep all.",
    )


class ServiceSettings(StoreSettings):
    """Settings every gRPC service has. Subclasses set ``env_prefix`` and the default port."""

    host: str = Field("127.0.0.1", description="Address to listen on ('0.0.0.0' or '[::]' in containers).")
    port: int = Field(0, ge=0, le=65535, description="gRPC port (0: any free port).")
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="A second, plaintext port answering grpc.health.v1 alone, for probes that cannot speak "
        "TLS (Kubernetes' grpc probes); 0: none.",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of GET /metrics (Prometheus, plain HTTP) on the same host; 0: off.",
    )
    max_connection_age_s: float = Field(
        60.0,
        ge=0,
        description="A client connection is closed (GOAWAY) after this long, so clients resolve the service "
        "again and new replicas get traffic; 0: never.",
    )
    max_connection_age_grace_s: float = Field(
        300.0, ge=0, description="Calls still running on such a connection get this long to finish."
    )
    max_workers: int = Field(32, ge=1, description="gRPC handler threads.")
    max_concurrent_rpcs: int = Field(
        0,
        ge=0,
        description="Calls handled at once, streams counted while open (health checks aside); more get "
        "RESOURCE_EXHAUSTED at once. 0 or more than max_workers: max_workers.",
    )
    health_workers: int = Field(
        2, ge=1, description="Threads kept for grpc.health.v1 Check alone, so health answers under any load."
    )
    grace_seconds: float = Field(20.0, ge=0, description="How long in-flight calls may run after SIGTERM.")
    shutdown_delay_seconds: float = Field(
        0.0, ge=0, description="After SIGTERM, keep accepting calls this long while health says NOT_SERVING."
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    log_level: str = shared("VISION_LOG_LEVEL", "INFO", "Logging level.")
    log_json: bool = shared("VISION_LOG_JSON", False, "One JSON object per log line.")
    max_image_bytes: int = shared(
        "VISION_MAX_IMAGE_BYTES", 20 * 1024 * 1024, "Largest encoded image accepted."
    )
    # Pillow refuses anything over 2 x Image.MAX_IMAGE_PIXELS (178,956,970) itself, whatever we allow.
    max_image_pixels: int = shared("VISION_MAX_IMAGE_PIXELS", 40_000_000, "Largest width*height accepted.")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_port_setting(self) -> str:
        """The variable ``metrics_port`` is read from (for error messages)."""
        return f"{self.model_config.get('env_prefix', '')}METRICS_PORT"

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)

    @property
    def max_message_bytes(self) -> int:
        return self.max_image_bytes + MESSAGE_OVERHEAD_BYTES


class ModelServiceSettings(ServiceSettings):
    """Settings of a service that serves stored models through a `ServingEngine` (classifier, explain,
    detector). Subclasses set ``env_prefix`` and may change the defaults (e.g. a smaller batch)."""

    default_model: str = Field(
        "", description="Model used when a request names none; empty: the service's preferred, else newest."
    )
    torch_threads: int = shared(
        "VISION_TORCH_THREADS",
        0,
        "torch intra-op threads of a model service; 0: the cores it may use (the container's CPU limit).",
    )
    max_batch_size: int = Field(16, ge=1, le=512, description="Most requests in one forward pass.")
    max_batch_delay_ms: float = Field(4.0, ge=0, le=1000, description="Longest wait to fill a batch.")
    max_queue: int = Field(256, ge=1, description="Requests waiting beyond this get RESOURCE_EXHAUSTED.")
    poll_interval_s: float = Field(
        2.0, gt=0, description="How often the model store is checked for new versions."
    )
    default_deadline_s: float = Field(
        30.0, gt=0, description="How long a call whose client set no deadline may take."
    )
    max_deadline_s: float = Field(
        300.0, gt=0, description="Longest any call may take, whatever deadline its client set."
    )
    max_concurrent_decodes: int = Field(
        default_factory=cpu_cores,
        ge=1,
        description="Images decoded at once (the rest wait, within their deadline); default: the CPU cores.",
    )
    max_loaded_models: int = Field(
        4, ge=0, description="Most model versions kept in memory (LRU; the default model stays); 0: no limit."
    )
    max_models_memory_mb: float = Field(
        1024.0,
        ge=0,
        description="Memory budget of loaded models in MiB, estimated from their weights files (LRU; the "
        "default model stays); 0: no limit.",
    )


def default_runtime_cache_dir() -> Path:
    """Where converted models are cached when the store is read-only: a per-user temp directory."""
    return Path(tempfile.gettempdir()) / f"vision-runtime-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"


class RuntimeServiceSettings(ModelServiceSettings):
    """A model service whose models may run converted (classifier, explain, detector): which runtime runs
    them, at which precision, and where converted models are cached. Each service adds its parity bounds."""

    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="What runs the forward pass: auto (OpenVINO on the CPU when installed, else onnxruntime, "
        "else torch; torch on CUDA), torch, openvino or onnxruntime (CPU only).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Inference precision of openvino (fp32, bf16, fp16) and onnxruntime (fp32 only). "
        "auto: for classifiers on OpenVINO, bf16 where the CPU computes bf16 natively (AVX512-BF16 or AMX) "
        "and the version keeps its probabilities within auto_prob_tolerance of torch's, else fp32; "
        "fp32 for detectors.",
    )
    runtime_cache_dir: Path = Field(
        default_factory=default_runtime_cache_dir,
        description="Where converted models are cached when the store's version directory is not writable.",
    )


class ClassificationServiceSettings(RuntimeServiceSettings):
    """A model service serving stored classifiers (classifier, explain)."""

    parity_tolerance: float = Field(
        1e-3,
        ge=0,
        description="Largest |Δlogit| an fp32 converted model may differ from torch on the parity batch; "
        "beyond it torch serves that version.",
    )
    auto_prob_tolerance: float = Field(
        2e-3,
        ge=0,
        description="Largest |Δprobability| from torch's, on the parity batch (seeded noise and real "
        "photos), of a precision chosen by precision=auto (bf16); beyond it the version is served in fp32.",
    )

"""trainer_svc settings, from VISION_TRAINER_* environment variables (plus the shared VISION_* ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from trainer_svc.training.config import (
    FOOD101_HANDLE,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_NNODES,
    MAX_NPROC_PER_NODE,
    TrainConfig,
)
from vision.serving.registry import PREFERRED_DEFAULT
from vision.settings import CommaSeparated, ServiceSettings, max_upload_bytes, max_upload_files, shared

# Calls (handler threads) never taken by uploads or watchers: GetJob, ListJobs and CancelJob always find one.
# Health checks have threads of their own (vision.rpc.admission).
MIN_SPARE_CALLS = 4


class KubernetesPodConfig(BaseModel):
    """Scheduling of job pods, as the Kubernetes fields they become (checked by the API server)."""

    model_config = {"extra": "forbid", "populate_by_name": True}

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)
    service_account_name: str = Field("", alias="serviceAccountName")
    priority_class_name: str = Field("", alias="priorityClassName")


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_TRAINER_", extra="ignore", populate_by_name=True)

    port: int = Field(50054, ge=0, le=65535, description="gRPC port (0: any free port).")
    max_connection_age_grace_s: float = Field(
        3600.0, ge=0, description="Calls on a connection past its age get this long to finish (uploads)."
    )
    metrics_port: int = Field(9104, ge=0, le=65535, description="Port of GET /metrics (Prometheus); 0: off.")
    data_dir: Path = shared(
        "VISION_DATA_DIR", Path("var/data"), "Job database, uploaded datasets and checkpoints live here."
    )
    datasets_dir: Path | None = Field(
        None,
        description="ImageFolder datasets named in a job must lie under this directory; "
        "unset: <data_dir>/datasets.",
    )
    max_upload_files: int = max_upload_files("VISION_TRAINER_MAX_UPLOAD_FILES")
    max_upload_bytes: int = max_upload_bytes("VISION_TRAINER_MAX_UPLOAD_BYTES")
    max_classes: int = Field(MAX_CLASSES, ge=2, description="Most classes in one job.")
    min_images_per_class: int = Field(
        5, ge=2, description="Fewest images a class may have (before the train/validation split)."
    )
    max_epochs: int = Field(MAX_EPOCHS, ge=1, description="Largest epochs a job may ask for.")
    default_patience: int = Field(
        TrainConfig.patience, ge=1, description="Early-stopping patience when a job names none."
    )
    max_attempts: int = Field(
        3, ge=1, description="Starts of one job (first run + resumes after crashes) before it is failed."
    )
    loader_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes per job.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads in a job; 0: torch's default.")
    progress_interval_s: float = Field(
        2.0, gt=0, description="Seconds between progress events within an epoch."
    )
    cancel_grace_s: float = Field(
        30.0, gt=0, description="How long a cancelled job may take to stop before it is killed."
    )
    pretrained_url: str = Field(
        "",
        description="Mirror of the ImageNet weights (a file named like torchvision's); empty: torchvision's.",
    )
    pretrained_timeout_s: float = Field(10.0, gt=0, description="Network timeout of that download.")
    food101_handle: str = Field(FOOD101_HANDLE, description="kagglehub dataset handle of Food-101.")
    kagglehub_cache: Path | None = Field(
        None, description="kagglehub cache directory (KAGGLEHUB_CACHE for jobs); unset: kagglehub's default."
    )
    keep_job_files: bool = Field(
        False, description="Keep a finished job's uploaded images and checkpoints (debugging)."
    )
    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        description="CreateJob streams received at once (each holds a handler thread); more: "
        "RESOURCE_EXHAUSTED (HTTP 429).",
    )
    max_watchers: int = Field(
        16,
        ge=1,
        description="WatchJob streams open at once (each holds a handler thread); more: "
        "RESOURCE_EXHAUSTED (HTTP 429).",
    )
    watch_max_s: float = Field(
        600.0,
        gt=0,
        description="Longest a WatchJob stream stays open; it then ends with OK and the client watches "
        "again with after_seq.",
    )

    backend: Literal["local", "kubernetes"] = Field(
        "local",
        description="Where jobs train: 'local' (worker processes beside the service, one rank per device "
        "slot) or 'kubernetes' (an Indexed Job of nnodes pods per job, trainer_svc.jobs.cluster).",
    )
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto",
        description="torch.distributed backend of multi-process jobs; auto: nccl on CUDA, gloo on CPU.",
    )
    dist_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="How long a rank waits for the others in one collective (rendezvous, gradient sync, the "
        "barrier while rank 0 evaluates and writes the model) before the job's processes give up.",
    )
    kubernetes_namespace: str = Field(
        "", description="Namespace of the job pods; empty: the trainer pod's own (its service account's)."
    )
    kubernetes_image: str = Field(
        "", description="Image of the job pods; empty: the trainer pod's own (read from the API at start)."
    )
    kubernetes_gpus_per_pod: int = Field(
        0,
        ge=0,
        le=MAX_NPROC_PER_NODE,
        description="GPUs of one job pod: nproc_per_node's default and maximum (nvidia.com/gpu); "
        "0: CPU pods.",
    )
    kubernetes_max_nodes: int = Field(
        8, ge=1, le=MAX_NNODES, description="Most pods (nnodes) one job may train on."
    )
    kubernetes_models_claim: str = Field(
        "vision-models", description="PersistentVolumeClaim of the model store, mounted at model_dir."
    )
    kubernetes_data_claim: str = Field(
        "vision-trainer-data",
        description="PersistentVolumeClaim of data_dir (job files, checkpoints, event files): every job pod "
        "mounts it, so it must be ReadWriteMany when pods land on several nodes.",
    )
    kubernetes_max_jobs: int = Field(
        4, ge=1, description="Jobs running as Kubernetes Jobs at once; more wait in the trainer's queue."
    )
    kubernetes_poll_s: float = Field(
        2.0, gt=0, description="Seconds between reads of a running Job's status and its events file."
    )
    kubernetes_pod_config: KubernetesPodConfig = Field(
        default_factory=lambda: KubernetesPodConfig(),
        description="JSON: nodeSelector, tolerations, resources (requests/limits beside nvidia.com/gpu), "
        "serviceAccountName and priorityClassName of the job pods.",
    )

    reserved_model_names: CommaSeparated = Field(
        default_factory=lambda: [PREFERRED_DEFAULT],
        description="Model names only admins may train (comma-separated): the default model's name (set it "
        "to VISION_CLASSIFIER_DEFAULT_MODEL). Names stored without an owner are the admins' as well.",
    )

    @model_validator(mode="after")
    def _calls_left_for_other_calls(self) -> TrainerSettings:
        limit = min(self.max_concurrent_rpcs or self.max_workers, self.max_workers)  # as vision.rpc.server
        spare = limit - self.max_concurrent_uploads - self.max_watchers
        if spare < MIN_SPARE_CALLS:
            raise ValueError(
                f"max_concurrent_uploads ({self.max_concurrent_uploads}) + max_watchers "
                f"({self.max_watchers}) must leave at least {MIN_SPARE_CALLS} of the {limit} calls the "
                "server handles at once (max_workers, max_concurrent_rpcs) for job queries and cancels"
            )
        return self

    @property
    def image_folder_root(self) -> Path:
        return self.datasets_dir or self.data_dir / "datasets"

    @property
    def max_message_bytes(self) -> int:
        # Upload chunks are small; a GetModelReport reply carries two PNGs.
        return max(self.max_image_bytes, 32 * 1024 * 1024) + 1024 * 1024

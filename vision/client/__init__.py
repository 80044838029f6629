"""A Python client for the internal gRPC services: `VisionClient` (sync, thread-safe) and
`AsyncVisionClient` (asyncio). Every call has a deadline, idempotent calls are retried on UNAVAILABLE with
exponential backoff and jitter, results are typed dataclasses and failures typed `ServiceError`s.

    from vision.client import VisionClient

    with VisionClient(classifier="127.0.0.1:50051") as client:
        print(client.classify(Path("photo.jpg")).top)
"""

from vision.client.aio import AsyncVisionClient
from vision.client.errors import (
    CallCancelledError,
    ConflictError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    LimitExceededError,
    NotConfiguredError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
)
from vision.client.requests import TrainerFolder
from vision.client.results import (
    Box,
    Classification,
    Detection,
    EventKind,
    Explanation,
    Job,
    JobEvent,
    JobPage,
    JobResult,
    JobState,
    ModelInfo,
    ModelList,
    ModelRef,
    Outcome,
    ScoredClass,
    Timing,
)
from vision.client.settings import ClientSettings
from vision.client.sync import VisionClient

__all__ = [
    "AsyncVisionClient", "Box", "CallCancelledError", "Classification", "ClientSettings", "ConflictError",
    "DeadlineExceededError", "Detection", "EventKind", "Explanation", "InternalError", "InvalidArgumentError",
    "Job", "JobEvent", "JobPage", "JobResult", "JobState", "LimitExceededError", "ModelInfo", "ModelList",
    "ModelRef", "NotConfiguredError", "NotFoundError", "Outcome", "PermissionDeniedError",
    "ResourceExhaustedError", "ScoredClass", "ServiceError", "Timing", "TrainerFolder",
    "UnauthenticatedError", "UnavailableError", "VisionClient",
]  # fmt: skip

"""What every model service's engine is made of: hot-reloaded models and one dynamic batcher.

An engine takes the service's settings object (a `ModelServiceSettings`) and the model store; a subclass says
how to load a stored version (`load`) and how to run a batch (`run_batch`), and adds its request method.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry

from vision.errors import Overloaded
from vision.models.devices import resolve_device
from vision.models.store import ModelStore, ModelVersion
from vision.serving.batching import Batched, DynamicBatcher
from vision.serving.registry import EMPTY_STORE_MESSAGE, PREFERRED_DEFAULT, ModelRegistry
from vision.serving.telemetry import EngineTelemetry
from vision.settings import ModelServiceSettings

M = TypeVar("M")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Answered:
    """Which stored version answered a request, and where its time went (milliseconds; the batch it shared).

    Every engine's result carries one (``result.answered``); the servicers turn it into ModelRef and Timing.
    """

    model_name: str
    model_version: str
    decode_ms: float
    queue_ms: float
    inference_ms: float
    batch_size: int

    @classmethod
    def of(cls, name: str, version: str, decode_ms: float, batched: Batched[Any]) -> Answered:
        return cls(name, version, decode_ms, batched.queue_ms, batched.inference_ms, batched.batch_size)


class ServingEngine(Generic[M, T, R]):
    """Owns ``registry`` (models of one task, kept loaded and swapped on publish) and ``batcher`` (whose one
    worker thread runs `run_batch`, the only code that touches a model)."""

    name = "engine"
    task = "classification"
    preferred_default = PREFERRED_DEFAULT
    empty_message = EMPTY_STORE_MESSAGE

    def __init__(self, store: ModelStore, settings: ModelServiceSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.image_limits = settings.image_limits
        # This engine's metrics and its server's (`vision.rpc.service` serves them on the metrics port).
        self.metrics_registry = CollectorRegistry()
        self.registry: ModelRegistry[M] = ModelRegistry(
            store,
            self.load,
            default_model=settings.default_model,
            poll_interval_s=settings.poll_interval_s,
            max_loaded_models=settings.max_loaded_models,
            max_memory_mb=settings.max_models_memory_mb,
            task=self.task,
            preferred_default=self.preferred_default,
            empty_message=self.empty_message,
            on_load_failure=lambda name, version: self.telemetry.load_failed(name, version),
        )
        self.batcher: DynamicBatcher[T, R] = DynamicBatcher(
            self.run_batch,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000,
            max_queue=settings.max_queue,
            name=f"{self.name}-batcher",
        )
        self.telemetry = EngineTelemetry(
            self.metrics_registry, lambda: self.batcher.queued, self.registry.loaded, self.device
        )
        # Decoding an image can take 120 MB and more (40 MP): bounding how many run at once bounds memory.
        self.max_concurrent_decodes = settings.max_concurrent_decodes
        self._decode_slots = threading.BoundedSemaphore(self.max_concurrent_decodes)

    @contextmanager
    def decode_slot(self, deadline: float | None) -> Iterator[None]:
        """Hold one of the ``max_concurrent_decodes`` decode slots while decoding (and shrinking) an image.

        Waits until ``deadline`` (a `time.monotonic` instant; None: no limit) for a free slot, then raises
        `Overloaded`. The decoding is the request's ``decode`` span.
        """
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._decode_slots.acquire(timeout=timeout):
            raise Overloaded(
                f"all {self.max_concurrent_decodes} image decoding slots stayed busy until the deadline; "
                "retry shortly"
            )
        try:
            with self.telemetry.decoding():
                yield
        finally:
            self._decode_slots.release()

    def answered(self, name: str, version: str, decode_ms: float, batched: Batched[Any]) -> Answered:
        """The `Answered` of a request that ``batched`` answered; records its stage metrics and spans."""
        self.telemetry.observe(name, version, decode_ms, batched)
        return Answered.of(name, version, decode_ms, batched)

    @staticmethod
    def deadline_after(timeout: float | None) -> float | None:
        """The `time.monotonic` instant ``timeout`` seconds from now (None: no deadline)."""
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def time_left(deadline: float | None) -> float | None:
        """Seconds until ``deadline`` (never negative; None: no deadline), for the batcher's wait."""
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def load(self, version: ModelVersion) -> M:
        """Load and warm up ``version`` on ``self.device`` (called by the registry, never concurrently)."""
        raise NotImplementedError

    def run_batch(self, key: Hashable, items: Sequence[T]) -> Sequence[R]:
        """One result per item, in order, for items that share ``key`` (on the batcher's thread)."""
        raise NotImplementedError

    def start(self) -> None:
        """Load and warm up what the store holds (a version that fails is recorded, not fatal), then watch."""
        self.registry.start()

    def close(self) -> None:
        """Stop watching the store; finish what is queued."""
        self.registry.stop()
        self.batcher.close(timeout=10)

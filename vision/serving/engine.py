"""What every model service's engine is made of: hot-reloaded models and one dynamic batcher."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from vision.serving.batching import DynamicBatcher
from vision.serving.registry import ModelRegistry

M = TypeVar("M")
T = TypeVar("T")
R = TypeVar("R")


class ServingEngine(Generic[M, T, R]):
    """Owns ``registry`` (models of one task, kept loaded and swapped on publish) and ``batcher`` (whose one
    worker thread runs ``run_batch(key, items)``, the only code that touches a model)."""

    def __init__(
        self,
        registry: ModelRegistry[M],
        run_batch: Callable[[Any, Sequence[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_batch_delay_ms: float,
        max_queue: int,
        name: str,
    ) -> None:
        self.registry = registry
        self.batcher: DynamicBatcher[T, R] = DynamicBatcher(
            run_batch,
            max_batch_size=max_batch_size,
            max_delay_s=max_batch_delay_ms / 1000,
            max_queue=max_queue,
            name=name,
        )

    def start(self) -> None:
        """Load and warm up what the store holds, then watch it."""
        self.registry.start()

    def close(self) -> None:
        """Stop watching the store; finish what is queued."""
        self.registry.stop()
        self.batcher.close(timeout=10)

"""Which version answered and where a request's time went, as every service reports it (ModelRef, Timing)."""

from __future__ import annotations

import time
from typing import Protocol

from vision.v1 import common_pb2


class StageTimes(Protocol):
    """What an engine's result says about its own time: milliseconds per stage and the batch it shared
    (`vision.serving.engine.Answered` is one)."""

    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def decode_ms(self) -> float: ...
    @property
    def queue_ms(self) -> float: ...
    @property
    def inference_ms(self) -> float: ...
    @property
    def batch_size(self) -> int: ...


def model_ref(result: StageTimes) -> common_pb2.ModelRef:
    """The ModelRef of the version that answered."""
    return common_pb2.ModelRef(name=result.model_name, version=result.model_version)


def timing_message(result: StageTimes, start: float) -> common_pb2.Timing:
    """The Timing of a reply; ``start`` is ``time.perf_counter()`` when the request arrived."""
    return common_pb2.Timing(
        decode_ms=result.decode_ms,
        queue_ms=result.queue_ms,
        inference_ms=result.inference_ms,
        total_ms=(time.perf_counter() - start) * 1000,
        batch_size=result.batch_size,
    )

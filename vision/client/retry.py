"""When and how long to wait before sending a call again: exponential backoff with jitter, a bounded number
of attempts, all within the call's one deadline. Shared by the sync and the asyncio client.

A call is retried only when it is safe to send again: an idempotent method (every one but CreateJob and
CancelJob) that failed with UNAVAILABLE (the service could not be reached, or cannot answer now) or, with
``retry_overloaded``, with RESOURCE_EXHAUSTED of the ``overloaded`` kind (refused at once at the service's
limit of calls, before reading the request). Nothing else is retried: a bad request fails the same way
again, and a full disk or a used-up quota does not clear in seconds.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

import grpc

from vision.client.errors import ServiceError
from vision.client.settings import ClientSettings

log = logging.getLogger("vision.client")

OVERLOADED_KIND = "overloaded"
# An attempt with less time than this left is not worth sending: the last failure is reported instead.
MIN_ATTEMPT_S = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    max_s: float
    multiplier: float
    retry_overloaded: bool
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> RetryPolicy:
        return cls(
            settings.max_attempts,
            settings.backoff_initial_s,
            settings.backoff_max_s,
            settings.backoff_multiplier,
            settings.retry_overloaded,
        )

    def retryable(self, error: ServiceError) -> bool:
        if error.code == grpc.StatusCode.UNAVAILABLE:
            return True
        return (
            self.retry_overloaded
            and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and error.kind == OVERLOADED_KIND
        )

    def delay_s(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1, 2, ...): the nominal backoff
        ``initial * multiplier**(failures-1)`` (at most ``max_s``), jittered into [half of it, all of it] so
        that many clients failing together do not retry together."""
        nominal = min(self.max_s, self.initial_s * self.multiplier ** (failures - 1))
        return nominal * (0.5 + 0.5 * self.rng.random())


class Deadline:
    """The one deadline of a call: every attempt and every wait between them fit in it."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._ends = time.monotonic() + timeout_s

    def remaining(self) -> float:
        return max(0.0, self._ends - time.monotonic())


def next_wait(
    policy: RetryPolicy,
    error: ServiceError,
    failures: int,
    deadline: Deadline,
    method: str,
    idempotent: bool = True,
) -> float | None:
    """Seconds to wait before attempt ``failures + 1``, or None when ``error`` is final (a method not safe to
    send again, an error not retryable, no attempts left, or no time left for another after the wait)."""
    if not idempotent or not policy.retryable(error) or failures >= policy.max_attempts:
        return None
    wait = policy.delay_s(failures)
    if deadline.remaining() - wait < MIN_ATTEMPT_S:
        return None
    log.info(
        "%s: %s (%s); attempt %d of %d in %.2f s",
        method,
        error.details,
        error.code.name,
        failures + 1,
        policy.max_attempts,
        wait,
    )
    return wait

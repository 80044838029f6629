"""Caps on the long requests one gateway holds at once: training uploads and Server-Sent Event streams.

Each holds a connection (and, behind it, a trainer stream) for minutes, so a client with a script could open
hundreds and leave nothing for anyone else. Beyond the cap a request is refused at once with 429 and a
Retry-After, before anything is read or any gRPC call is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import ApiError


class Slots:
    """At most ``limit`` holders at once (one event loop: no lock needed)."""

    def __init__(self, limit: int, what: str, retry_after_s: int) -> None:
        self.limit = limit
        self.what = what
        self.retry_after_s = retry_after_s
        self.in_use = 0

    def take(self) -> None:
        """Take a slot; 429 when all are taken. The caller must `give_back` exactly once."""
        if self.in_use >= self.limit:
            raise ApiError(
                429,
                "resource_exhausted",
                f"{self.limit} {self.what} are in progress, the most this gateway takes; retry shortly",
                {"Retry-After": str(self.retry_after_s)},
            )
        self.in_use += 1

    def give_back(self) -> None:
        self.in_use -= 1

    @contextmanager
    def held(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.give_back()

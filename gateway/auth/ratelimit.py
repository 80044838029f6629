"""Per-principal token buckets: ``rate`` requests per second on average, up to ``burst`` at once.

Kept in the gateway process (with several gateway replicas each applies the limit on its own: the limit a
client sees is at most replicas x rate). At most `MAX_BUCKETS` principals are tracked; the least recently
seen is forgotten first (it starts again with a full bucket)."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # name -> (tokens, at)
        self._max = max_buckets
        self._lock = threading.Lock()

    def take(self, name: str, rate: float, burst: int) -> float:
        """Take one token from ``name``'s bucket: 0.0 if it had one, else the seconds until it will.
        A rate of 0 is no limit."""
        if rate <= 0:
            return 0.0
        capacity = float(max(burst, 1))
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.pop(name, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[name] = (tokens, now)
                wait = (1.0 - tokens) / rate
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return wait


def retry_after_header(wait_s: float) -> str:
    """Whole seconds for ``Retry-After`` (at least 1: the header has no fractions)."""
    return str(max(1, math.ceil(wait_s)))

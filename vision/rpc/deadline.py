"""How long a call may wait: the client's deadline, or a server-side default when it sent none.

A call without a deadline reports ``time_remaining()`` of ~9.2e18 s, which no ``Future.result`` or lock
accepts (OverflowError); grpcurl without ``-max-time``, reflection clients and stubs called without
``timeout=`` all send such calls.
"""

from __future__ import annotations

import grpc

# Any deadline a client really sets is far shorter than this (about three years).
NO_DEADLINE_S = 1e8


def call_timeout(context: grpc.ServicerContext, default_s: float, max_s: float) -> float:
    """Seconds this call may still take: the client's deadline when it set one, else ``default_s``; never
    more than ``max_s``, never negative."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_S:
        remaining = default_s
    return max(0.0, min(remaining, max_s))

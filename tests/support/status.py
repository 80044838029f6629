"""Reading a refused gRPC call as a client such as the gateway does: its domain error kind."""

from __future__ import annotations

from typing import Any

import grpc

from vision.rpc.status import ERROR_KIND_KEY


def error_kind(error: grpc.RpcError) -> str:
    """The ``vision-error-kind`` trailer of a refused call ("overloaded", "storage_full" ...; '' if none)."""
    metadata: Any = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    return next((str(value) for key, value in metadata if key == ERROR_KIND_KEY), "")

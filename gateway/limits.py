"""Request-body limit enforced while the body streams in, before any parsing or spooling.

A declared Content-Length over the limit is refused at once; a chunked body without one is counted as it
arrives and refused as soon as it passes the limit. Either way the client gets 413 with the JSON error body.
One limit applies to every route except those given their own (``path_limits``: POST /train takes a whole
dataset, not one image).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_body


class _TooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Limit request bodies to ``max_bytes``, or ``path_limits[path]`` for those exact paths (pure ASGI, so
    it sees the bytes before the app does)."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:  # the app's own reaction to the aborted body is replaced by our 413
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        message = f"the upload is larger than the limit of {limit} bytes"
        body = json.dumps(error_body("payload_too_large", message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

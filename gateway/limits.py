"""Request-body limits enforced while the body streams in, before any parsing or spooling.

Size: a declared Content-Length over the limit is refused at once; a chunked body without one is counted as
it arrives and refused as soon as it passes the limit (413). One limit applies to every route except those
given their own (``path_limits``: POST /train takes a whole dataset, not one image).

Time: a body that sends nothing for ``idle_timeout_s`` (the first byte included) is refused with 408 and the
connection closed, so a client that opens uploads and goes quiet holds nothing for long. Only the body is
timed: once it is complete, waiting for the client to disconnect (as a streaming response does) is not.
Either way the client gets the JSON error body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_body


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BodyLimitsMiddleware:
    """Limit request bodies to ``max_bytes`` (or ``path_limits[path]`` for those exact paths) and to
    ``idle_timeout_s`` between pieces (pure ASGI, so it sees the bytes before the app does)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        path_limits: Mapping[str, int] | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, _too_large(limit))
            return
        received = 0
        body_done = False
        refused: _Refused | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done, refused
            if refused is not None:
                raise refused
            if body_done or self.idle_timeout_s is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.idle_timeout_s)
                except asyncio.TimeoutError:
                    refused = _idle(self.idle_timeout_s)
                    raise refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    refused = _too_large(limit)
                    raise refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is None:  # the app's own reaction to the refused body is replaced by ours
                started = True
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused:
            pass
        except Exception:
            if refused is None:
                raise
        if refused is not None and not started:
            await self._reject(send, refused)

    async def _reject(self, send: Send, refused: _Refused) -> None:
        body = json.dumps(error_body(refused.code, refused.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> _Refused:
    return _Refused(413, "payload_too_large", f"the upload is larger than the limit of {limit} bytes")


def _idle(timeout_s: float) -> _Refused:
    return _Refused(
        408,
        "request_timeout",
        f"the request body sent nothing for {timeout_s:g} s; send it without pauses",
    )

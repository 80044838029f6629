"""Authentication, authorization and rate limiting of every request, before its body is read (pure ASGI:
a refused upload costs its headers, not its bytes).

Order per request: public route (probes, the web page) → pass; a browser POST from another site → 403
(`gateway.auth.origin`); credentials → principal (or 401); anonymous
when none are sent and authentication is not required; the route's role (`policy`) → 403; the principal's
token bucket → 429 with ``Retry-After``. The principal is then in ``scope["state"]["principal"]`` and in
`gateway.auth.context` for the calls to the services.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.context import reset_principal, set_principal
from gateway.auth.credentials import Authenticator, CredentialsUnavailable, Forbidden, Unauthenticated
from gateway.auth.origin import OriginCheck
from gateway.auth.policy import is_public, required_role
from gateway.auth.ratelimit import RateLimiter, retry_after_header
from gateway.errors import error_body
from gateway.telemetry import record_refusal
from vision.security.principal import Principal

log = logging.getLogger(__name__)
REALM = 'Bearer realm="vision"'


def _refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    record_refusal(status, code)
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        limiter: RateLimiter | None = None,
        origins: OriginCheck | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.origins = origins or OriginCheck(())
        self.required = authenticator.settings.required
        self.limiter = limiter or RateLimiter()

    async def _principal(self, headers: Headers) -> Principal | None:
        api_key, authorization = headers.get("x-api-key"), headers.get("authorization")
        if self.authenticator.jwt is not None and api_key is None and authorization is not None:
            # A JWKS fetch may block on the network: not on the event loop.
            return await asyncio.to_thread(self.authenticator.authenticate, api_key, authorization)
        return self.authenticator.authenticate(api_key, authorization)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        cross_site = self.origins.refusal(method, headers)
        if cross_site is not None:
            await _refusal(403, "cross_site", cross_site)(scope, receive, send)
            return
        try:
            principal = await self._principal(headers)
            if principal is None:
                if self.required:
                    raise Unauthenticated(
                        "authentication required: send `X-API-Key: <key>` or `Authorization: Bearer <token>`",
                        invalid=False,
                    )
                principal = self.authenticator.anonymous
            needed = required_role(method, path)
            if not principal.may(needed):
                raise Forbidden(
                    f"{principal.name} has the role {principal.role.label}; {method} {path} needs "
                    f"{needed.label} or above"
                )
        except Unauthenticated as exc:
            challenge = REALM + (', error="invalid_token"' if exc.invalid else "")
            await _refusal(401, "unauthenticated", exc.message, {"WWW-Authenticate": challenge})(
                scope, receive, send
            )
            return
        except Forbidden as exc:
            await _refusal(403, "forbidden", exc.message)(scope, receive, send)
            return
        except CredentialsUnavailable as exc:
            await _refusal(503, "auth_unavailable", exc.message, {"Retry-After": "5"})(scope, receive, send)
            return
        limits = principal.limits
        wait = self.limiter.take(principal.name, limits.rate, limits.burst)
        if wait > 0:
            message = (
                f"over the rate limit of {limits.rate:g} requests/s (burst {max(limits.burst, 1)}) for "
                f"{principal.name}; retry after the time in Retry-After"
            )
            await _refusal(429, "rate_limited", message, {"Retry-After": retry_after_header(wait)})(
                scope, receive, send
            )
            return
        scope.setdefault("state", {})["principal"] = principal
        token = set_principal(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_principal(token)

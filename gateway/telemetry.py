"""The gateway's metrics and request context.

Metrics (served on ``VISION_GATEWAY_METRICS_PORT``, never on the public port):

* ``vision_gateway_requests_total`` by route template (``/jobs/{job_id}``, not the raw path), method, status;
* ``vision_gateway_request_seconds`` (to the last body byte) by route; ``vision_gateway_in_flight_requests``;
* ``vision_gateway_upstream_errors_total`` by service and gRPC code;
* ``vision_gateway_auth_rejections_total`` by reason (401 unauthenticated, 403 forbidden or cross_site);
* ``vision_gateway_rate_limited_total`` (429 from the gateway's own token buckets).

Every request gets a request id: the client's ``X-Request-ID`` when it is a usable one (letters, digits,
``._:-``, at most 64), else a new one. It is in the ``X-Request-ID`` response header, in every error body
(``error.request_id``), on the log lines of the request and in the metadata of the calls it makes.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vision.telemetry.context import REQUEST_ID_HEADER, accept_request_id, request_context
from vision.telemetry.metrics import LATENCY_BUCKETS


class GatewayMetrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vision_gateway_requests", "HTTP requests", ("route", "method", "status"), registry=self.registry
        )
        self.latency = Histogram(
            "vision_gateway_request_seconds",
            "HTTP request latency (to the last body byte)",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vision_gateway_in_flight_requests", "HTTP requests in progress", registry=self.registry
        )
        self.upstream_errors = Counter(
            "vision_gateway_upstream_errors",
            "Failed gRPC calls to the services, by service and status code",
            ("service", "code"),
            registry=self.registry,
        )
        self.auth_rejections = Counter(
            "vision_gateway_auth_rejections",
            "Requests refused by authentication or authorisation (401, 403), by reason",
            ("reason",),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "vision_gateway_rate_limited",
            "Requests refused by the per-principal rate limit (429)",
            registry=self.registry,
        )


_current: ContextVar[GatewayMetrics | None] = ContextVar("vision_gateway_metrics", default=None)


def record_upstream_error(service: str, code: str) -> None:
    metrics = _current.get()
    if metrics is not None:
        metrics.upstream_errors.labels(service, code).inc()


def record_refusal(status: int, reason: str) -> None:
    """A refusal by the gateway's own access control: 401/403 (by reason) or 429 (rate limit)."""
    metrics = _current.get()
    if metrics is None:
        return
    if status == 429:
        metrics.rate_limited.inc()
    else:
        metrics.auth_rejections.labels(reason).inc()


def _route_template(scope: Scope) -> str:
    """The template of the route the request went to, or would have gone to had it not been refused before
    routing (401, 403, 429 are answered by middleware); "unmatched" for no route."""
    route = scope.get("route")
    if route is None:
        route = _matching(getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope)
    return str(getattr(route, "path", "unmatched"))


def _matching(routes: Any, scope: Scope) -> Any:
    """The route of ``routes`` that takes ``scope``, looking into included routers (FastAPI wraps them)."""
    for candidate in routes:
        if candidate.matches(scope)[0] != Match.FULL:
            continue
        if isinstance(getattr(candidate, "path", None), str):
            return candidate
        nested = getattr(candidate, "routes", None) or getattr(
            getattr(candidate, "original_router", None), "routes", None
        )
        if nested:
            return _matching(nested, scope)
    return None


class TelemetryMiddleware:
    """The request id, and the request metrics (counted under the route's template once it is known)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        request_id = accept_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        trace.get_current_span().set_attribute("vision.request_id", request_id)  # no-op without tracing

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = _current.set(self.metrics)
        self.metrics.in_flight.inc()
        try:
            with request_context(request_id):
                await self.app(scope, receive, recording_send)
        finally:
            _current.reset(token)
            self.metrics.in_flight.dec()
            route = _route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

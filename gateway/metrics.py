"""Prometheus metrics for the gateway: requests by route template, method and status, and their latency.

Served at GET /metrics in the Prometheus text format.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
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

    def app(self) -> ASGIApp:
        return make_asgi_app(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request under its route template (``/jobs/{job_id}``), never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

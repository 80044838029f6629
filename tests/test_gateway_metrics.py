"""GET /metrics: Prometheus counters and latency by route template and status."""

from __future__ import annotations

import httpx


def test_requests_are_counted_by_route_template_and_status(gateway: httpx.Client, bus_jpeg: bytes) -> None:
    assert gateway.post("/predict", files={"file": ("a.jpg", bus_jpeg, "image/jpeg")}).status_code == 200
    assert gateway.post("/predict", files={"file": ("a.jpg", b"", "image/jpeg")}).status_code == 400
    gateway.get("/no/such/page")
    text = gateway.get("/metrics/").text
    assert 'vision_gateway_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'vision_gateway_requests_total{method="POST",route="/predict",status="400"} 1.0' in text
    assert 'route="unmatched"' in text and "/no/such/page" not in text
    assert 'vision_gateway_request_seconds_count{route="/predict"} 2.0' in text

"""Observability settings and log lines, without services: when tracing is on (only when OTEL_* ask for it),
which exporter and protocol, the service name, and the request and trace ids on a log line."""

from __future__ import annotations

import json
import logging

import pytest

from vision.logs import JsonFormatter, TextFormatter
from vision.telemetry.context import LogContextFilter, accept_request_id, request_context
from vision.telemetry.tracing import TracingSettings

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, []),  # nothing configured: nothing exported, no SDK installed
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], exporters: list[str]
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert TracingSettings().exporters() == exporters


def test_an_unknown_exporter_or_protocol_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match=r"unknown exporter.*zipkin"):
        TracingSettings().exporters()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        TracingSettings().otlp_protocol()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert TracingSettings().otlp_protocol() == "http/protobuf"  # the signal's own variable wins


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("has space", False),
        ("x\r\ny", False),
        ("", False),
    ],
)
def test_a_client_request_id_is_kept_only_when_safe_to_log_and_echo(given: str, kept: bool) -> None:
    chosen = accept_request_id(given)
    assert (chosen == given) is kept and 1 <= len(chosen) <= 64


def _record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("vision.test", logging.WARNING, __file__, 1, message, None, None)
    LogContextFilter().filter(record)
    return record


def test_log_lines_carry_the_request_id_inside_a_request_only() -> None:
    outside = _record("idle")
    with request_context("req-7"):
        inside = _record("busy")
    assert json.loads(JsonFormatter().format(inside))["request_id"] == "req-7"
    assert "request_id" not in json.loads(JsonFormatter().format(outside))
    text = TextFormatter("%(levelname)s %(message)s")
    assert text.format(inside) == "WARNING busy [request req-7]"
    assert text.format(outside) == "WARNING idle"

"""OpenTelemetry traces, configured only by the standard ``OTEL_*`` variables.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``; comma-separated) or,
with that variable unset, when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Otherwise nothing is installed: the API's no-op tracer answers, the
gRPC and HTTP instrumentation is not added, and the service spends no time on traces. (The OpenTelemetry
default exporter is ``otlp`` to localhost; here an unconfigured process exports nothing.)

The SDK itself reads the rest: endpoint, headers, certificates and timeouts of the exporter, the sampler
(``OTEL_TRACES_SAMPLER``), the batch processor (``OTEL_BSP_*``), ``OTEL_RESOURCE_ATTRIBUTES``.
``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``..._TRACES_PROTOCOL``) is ``grpc`` (default, port 4317) or
``http/protobuf`` (4318). ``service.name`` is ``OTEL_SERVICE_NAME``, else the one in
``OTEL_RESOURCE_ATTRIBUTES``, else the process's default (``vision-classifier``, ...).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, cast

import grpc
from opentelemetry import trace
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

TRACER_NAME = "vision"
EXPORTERS = ("otlp", "console")
PROTOCOLS = ("grpc", "http/protobuf")


def _env(name: str, default: str = "") -> Any:
    return Field(default, validation_alias=AliasChoices(name))


class TracingSettings(BaseSettings):
    """The few OTEL_* variables that decide whether and where to export (the SDK reads the others)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    sdk_disabled: bool = _env("OTEL_SDK_DISABLED", False)  # type: ignore[arg-type]
    traces_exporter: str = _env("OTEL_TRACES_EXPORTER")
    endpoint: str = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    traces_endpoint: str = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    protocol: str = _env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    traces_protocol: str = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    service_name: str = _env("OTEL_SERVICE_NAME")

    def exporters(self) -> list[str]:
        """The exporters to install, [] when tracing is off. Unknown names are a configuration error."""
        if self.sdk_disabled:
            return []
        if not self.traces_exporter.strip():
            return ["otlp"] if (self.endpoint or self.traces_endpoint) else []
        names = [name.strip().lower() for name in self.traces_exporter.split(",") if name.strip()]
        if "none" in names:
            return []
        unknown = sorted(set(names) - set(EXPORTERS))
        if unknown:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: unknown exporter(s) {unknown}; use {', '.join(EXPORTERS)}"
            )
        return names

    def otlp_protocol(self) -> str:
        protocol = (self.traces_protocol or self.protocol or "grpc").strip().lower()
        if protocol not in PROTOCOLS:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {PROTOCOLS}, not {protocol!r}")
        return protocol


_enabled = False


def tracing_enabled() -> bool:
    """Whether this process records spans (`configure_tracing` installed an SDK provider)."""
    return _enabled


def configure_tracing(default_service_name: str, settings: TracingSettings | None = None) -> bool:
    """Install a tracer provider exporting as ``OTEL_*`` say, once per process; False when tracing is off."""
    global _enabled
    if _enabled:
        return True
    settings = settings if settings is not None else TracingSettings()
    exporters = settings.exporters()
    if not exporters:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    from_env = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)  # OTEL_SERVICE_NAME included
    name = settings.service_name or (str(from_env) if from_env else default_service_name)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for exporter_name in exporters:
        exporter: SpanExporter
        if exporter_name == "console":
            exporter = ConsoleSpanExporter()
        elif settings.otlp_protocol() == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporter = HttpExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the SDK flushes and shuts it down at exit
    _enabled = True
    log.info("tracing: service.name %s, exporting with %s", name, ", ".join(exporters))
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def span(name: str, **attributes: Any) -> Any:
    """A child span of the current one around a ``with`` block; nothing at all while tracing is off."""
    if not _enabled:
        return nullcontext()
    return tracer().start_as_current_span(name, attributes=attributes or None)


def record_span(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A child span of the current one for a stage that ran elsewhere (the batcher's thread), from its
    wall-clock times (`time.time_ns`)."""
    if not _enabled:
        return
    recorded = tracer().start_span(name, start_time=start_ns, attributes=attributes or None)
    recorded.end(end_time=max(end_ns, start_ns))


def grpc_server_interceptors() -> list[Any]:
    """The OpenTelemetry gRPC server interceptor (a server span continuing the caller's ``traceparent``),
    health checks left out; [] while tracing is off."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor(filter_=_not_health())]


def _not_health() -> Any:
    """A filter of the gRPC instrumentation: every call but health checks (probes would flood traces)."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.service_prefix("grpc.health.v1"))


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` (synchronous) with a client span per call and its ``traceparent`` in the metadata;
    ``channel`` itself while tracing is off."""
    if not _enabled:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor, intercept_channel

    return cast(grpc.Channel, intercept_channel(channel, client_interceptor(filter_=_not_health())))


def grpc_aio_client_interceptors() -> list[Any]:
    """The OpenTelemetry interceptors of an asyncio channel (client spans, ``traceparent`` sent in the
    metadata); [] while tracing is off."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=_not_health()))

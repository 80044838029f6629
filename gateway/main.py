"""Assembles the gateway app: settings, gRPC channels (lifespan), routers, limits, CORS, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from gateway.auth.credentials import Authenticator
from gateway.auth.middleware import AuthMiddleware
from gateway.auth.origin import OriginCheck
from gateway.auth.policy import is_public
from gateway.backends import Backends
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.limits import BodyLimitsMiddleware
from gateway.routers import detect, explain, lifecycle, oip, predict, system
from gateway.telemetry import GatewayMetrics, TelemetryMiddleware
from gateway.train import routes as train
from vision.security.roles import QuotaSettings
from vision.security.settings import AuthSettings
from vision.telemetry.metrics import start_metrics_endpoint
from vision.telemetry.tracing import tracing_enabled

STATIC_DIR = Path(__file__).parent / "static"
ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, made true to what the gateway sends: a request that fails validation is answered
    400 with an `ErrorBody` (never FastAPI's 422 body), any route may answer 500 with an `ErrorBody`, and
    the training events' ``data:`` objects are described too."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                responses.setdefault("500", {"description": "Internal error (logged by the gateway)"})
                responses["500"]["content"] = {"application/json": {"schema": ERROR_BODY_REF}}
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        _, events = models_json_schema(
            [(model, "serialization") for model in train.EVENT_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        components.update(events.get("$defs", {}))
        _add_links(schema)
        _add_security(schema)
        app.openapi_schema = schema
    return app.openapi_schema


# OpenAPI links: what a client (or a stateful fuzzer) can do next with an answer's ids.
_JOB_OPERATIONS = (
    ("/jobs/{job_id}", "get"),
    ("/jobs/{job_id}/events", "get"),
    ("/jobs/{job_id}/cancel", "post"),
)
_MODEL_OPERATIONS = (
    ("/models/{name}/versions/{version}/report", "get"),
    ("/models/{name}/versions/{version}/{image}.png", "get"),
)
LINKS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...], dict[str, str]], ...] = (
    ("/train", "post", "202", _JOB_OPERATIONS, {"job_id": "$response.body#/job_id"}),
    ("/jobs", "get", "200", _JOB_OPERATIONS, {"job_id": "$response.body#/jobs/0/job_id"}),
    (
        "/models",
        "get",
        "200",
        _MODEL_OPERATIONS,
        {"name": "$response.body#/models/0/name", "version": "$response.body#/models/0/version"},
    ),
)


def _add_links(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    for path, method, status, targets, parameters in LINKS:
        links = paths[path][method]["responses"][status].setdefault("links", {})
        for target_path, target_method in targets:
            operation_id = paths[target_path][target_method]["operationId"]
            links[operation_id] = {"operationId": operation_id, "parameters": dict(parameters)}


SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`vision keys create`"},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "an API key or a JWT from the OIDC issuer"},
}
AUTH_RESPONSES = {
    "401": "No credentials, or credentials that are not valid (with `WWW-Authenticate: Bearer`)",
    "403": "The caller's role does not allow this (or, for /train, the model name is another's)",
    "429": "Over the caller's rate limit or a quota (with `Retry-After`)",
}


def _add_security(schema: dict[str, Any]) -> None:
    """Document the credentials and the refusals of every route that needs them (`gateway.auth.policy`)."""
    schema["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if is_public(method.upper(), path):
                continue
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
            responses = operation.setdefault("responses", {})
            for status, description in AUTH_RESPONSES.items():
                responses.setdefault(status, {"description": description})
                responses[status].setdefault("content", {"application/json": {"schema": ERROR_BODY_REF}})


def create_app(
    settings: GatewaySettings | None = None,
    auth: AuthSettings | None = None,
    quotas: QuotaSettings | None = None,
) -> FastAPI:
    settings = settings or GatewaySettings()
    authenticator = Authenticator(auth or AuthSettings(), quotas or QuotaSettings())
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        endpoint = start_metrics_endpoint(
            metrics.registry, settings.host, settings.metrics_port, "VISION_GATEWAY_METRICS_PORT"
        )
        app.state.metrics_endpoint = endpoint
        app.state.backends = Backends.connect(settings)
        try:
            yield
        finally:
            await app.state.backends.close()
            if endpoint is not None:
                endpoint.stop()

    app = FastAPI(
        title="Vision gateway",
        version="1.0",
        description="Classification and explanations over HTTP, backed by gRPC vision services.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.include_router(predict.router)
    app.include_router(explain.router)
    app.include_router(detect.router)
    app.include_router(train.router)
    app.include_router(system.router)
    app.include_router(oip.router)
    app.include_router(lifecycle.router)

    # The web client: packaged static files, no CDN.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.add_middleware(
        BodyLimitsMiddleware,
        max_bytes=settings.max_upload_bytes,
        path_limits={train.TRAIN_PATH: settings.max_train_body_bytes},
        idle_timeout_s=settings.body_idle_timeout_s,
    )
    # Outside the body limits (credentials are checked before any byte of the body is read), inside the
    # metrics (refusals are counted) and CORS (refusals carry CORS headers; preflights pass).
    app.add_middleware(
        AuthMiddleware, authenticator=authenticator, origins=OriginCheck(settings.cors_origins)
    )
    app.add_middleware(TelemetryMiddleware, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    if tracing_enabled():  # a server span per request, continuing a client's traceparent; outermost
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="/healthz,/static/.*")
    return app

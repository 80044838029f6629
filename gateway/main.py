"""Assembles the gateway app: settings, gRPC channels (lifespan), routers, limits, CORS, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse

from gateway.backends import Backends
from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.limits import BodySizeLimitMiddleware
from gateway.routers import explain, predict, system


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.backends = Backends.connect(settings)
        try:
            yield
        finally:
            await app.state.backends.close()

    app = FastAPI(
        title="Vision gateway",
        version="1.0",
        description="Classification and explanations over HTTP, backed by gRPC vision services.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(predict.router)
    app.include_router(explain.router)
    app.include_router(system.router)

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/docs")

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    return app

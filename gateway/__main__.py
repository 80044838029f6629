"""`python -m gateway`: serve the HTTP gateway with uvicorn."""

from __future__ import annotations

import uvicorn

from gateway.config import GatewaySettings
from gateway.main import create_app
from vision.logs import configure_logging
from vision.telemetry.tracing import configure_tracing


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_json, service="gateway")
    configure_tracing("vision-gateway")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(settings.drain_s)),
        server_header=False,
    )


if __name__ == "__main__":
    main()

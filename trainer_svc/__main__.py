"""`python -m trainer_svc`: settings from the environment, logging, serve until SIGTERM."""

from __future__ import annotations

from trainer_svc.config import TrainerSettings
from trainer_svc.server import create_trainer_server
from vision.logs import configure_logging
from vision.rpc.server import serve_until_signalled
from vision.telemetry.tracing import configure_tracing


def main() -> None:
    settings = TrainerSettings()
    configure_logging(settings.log_level, settings.log_json, service="trainer")
    configure_tracing("vision-trainer")
    server, manager = create_trainer_server(settings)
    serve_until_signalled(
        server, settings.grace_seconds, on_stop=manager.close, shutdown_delay=settings.shutdown_delay_seconds
    )


if __name__ == "__main__":
    main()

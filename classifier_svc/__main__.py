"""`python -m classifier_svc`: settings from the environment, logging, serve until SIGTERM."""

from __future__ import annotations

from classifier_svc.config import ClassifierSettings
from classifier_svc.server import create_classifier_server
from vision.logs import configure_logging
from vision.rpc.server import serve_until_signalled


def main() -> None:
    settings = ClassifierSettings()
    configure_logging(settings.log_level, settings.log_json, service="classifier")
    server, engine = create_classifier_server(settings)
    serve_until_signalled(
        server, settings.grace_seconds, on_stop=engine.close, shutdown_delay=settings.shutdown_delay_seconds
    )


if __name__ == "__main__":
    main()

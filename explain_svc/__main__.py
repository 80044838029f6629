"""`python -m explain_svc`: settings from the environment, logging, serve until SIGTERM."""

from __future__ import annotations

from explain_svc.config import ExplainSettings
from explain_svc.server import create_explain_server
from vision.logs import configure_logging
from vision.rpc.server import serve_until_signalled


def main() -> None:
    settings = ExplainSettings()
    configure_logging(settings.log_level, settings.log_json, service="explain")
    server, engine = create_explain_server(settings)
    serve_until_signalled(
        server, settings.grace_seconds, on_stop=engine.close, shutdown_delay=settings.shutdown_delay_seconds
    )


if __name__ == "__main__":
    main()

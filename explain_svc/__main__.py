"""`python -m explain_svc`: settings from the environment, logging, serve until SIGTERM."""

from __future__ import annotations

from explain_svc.config import ExplainSettings
from explain_svc.server import SPEC, create_explain_server
from vision.rpc.service import run_model_service

if __name__ == "__main__":
    run_model_service(SPEC, ExplainSettings(), create_explain_server)

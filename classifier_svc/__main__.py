"""`python -m classifier_svc`: settings from the environment, logging, serve until SIGTERM."""

from __future__ import annotations

from classifier_svc.config import ClassifierSettings
from classifier_svc.server import SPEC, create_classifier_server
from vision.rpc.service import run_model_service

if __name__ == "__main__":
    run_model_service(SPEC, ClassifierSettings(), create_classifier_server)

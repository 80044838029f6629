"""`python -m detector_svc`: settings from the environment, logging, serve until SIGTERM."""

from __future__ import annotations

from detector_svc.config import DetectorSettings
from detector_svc.server import SPEC, create_detector_server
from vision.rpc.service import run_model_service

if __name__ == "__main__":
    run_model_service(SPEC, DetectorSettings(), create_detector_server)

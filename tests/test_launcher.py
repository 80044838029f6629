"""`vision run` (what `make run` starts): every service plus the gateway, one Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import publish_random_model
from vision.models.store import ModelStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_vision_run_serves_predict_and_ctrl_c_stops_everything(tmp_path: Path, bus_jpeg: bytes) -> None:
    store = ModelStore(tmp_path / "models")
    publish_random_model(store, arch="smallcnn")
    http_port = free_port()
    env = {
        **os.environ,
        "VISION_MODEL_DIR": str(store.root),
        "VISION_DATA_DIR": str(tmp_path / "data"),  # trainer_svc's jobs: not the working directory's var/
        "VISION_GATEWAY_PORT": str(http_port),
        "VISION_CLASSIFIER_PORT": str(free_port()),
        "VISION_EXPLAIN_PORT": str(free_port()),
        "VISION_DETECTOR_PORT": str(free_port()),
        "VISION_TRAINER_PORT": str(free_port()),
        "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vision.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
            while True:
                try:
                    if client.get("/health").json().get("status") == "ok":
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "the system did not come up"
                time.sleep(0.3)
            reply = client.post("/predict", files={"file": ("bus.jpg", bus_jpeg, "image/jpeg")})
            assert reply.status_code == 200 and reply.json()["success"] is True
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0
        assert f"http://127.0.0.1:{http_port}/" in output
        assert "all stopped" in output
    finally:
        if proc.poll() is None:
            proc.kill()

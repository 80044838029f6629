"""Shared by tests/test_oip.py (no tests here): the real services and gateway behind the Open Inference
Protocol, the plans of calls Triton's gRPC client makes against them, and the native answers to compare."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from detector_svc.checkpoints import import_yolo_checkpoint
from gateway.config import GatewaySettings
from gateway.main import create_app
from tests.conftest import LiveServer, encode, publish_random_model, start_classifier, ultralytics_asset
from tests.support.detector import make_yolo_checkpoint, start_detector
from vision.image.preprocess import Preprocessing
from vision.models.store import ModelStore
from vision.security.keys import create_key
from vision.security.roles import Role
from vision.security.settings import AuthSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_BATCH = 8


@dataclass
class Stack:
    classifier: str  # gRPC addresses
    detector: str
    gateway: str  # base URL
    headers: dict[str, str]  # a viewer's API key
    engines: tuple[Any, Any]
    photos: dict[str, bytes]

    def credentials(self) -> dict[str, str]:
        """A fresh copy of ``headers``: tritonclient.http adds its own headers to the dict it is given."""
        return dict(self.headers)


@contextlib.contextmanager
def serving_stack(root: Path, astronaut: Image.Image) -> Iterator[Stack]:
    """Two versions of a seeded ResNet18 (10 classes) and a YOLO11n in a store under ``root``; classifier_svc
    (max batch `MAX_BATCH`), detector_svc and the gateway (API keys required) on loopback."""
    store = ModelStore(root / "models")
    publish_random_model(store, seed=1)  # resnet18 version 1
    publish_random_model(store, seed=0)  # version 2: the served one
    import_yolo_checkpoint(store, make_yolo_checkpoint(root / "yolo11n.pt"), "yolo11n")
    classifier, c_engine = start_classifier(store, max_batch_size=MAX_BATCH)
    detector, d_engine = start_detector(store)
    keys_file = root / "keys.json"
    key = create_key(keys_file, "viewer", Role.VIEWER, {"rate": 0})[1]
    settings = GatewaySettings(
        classifier_addr=f"127.0.0.1:{classifier.port}",
        detector_addr=f"127.0.0.1:{detector.port}",
        timeout_s=60,
    )
    photos = {
        "bus": ultralytics_asset("bus.jpg").read_bytes(),
        "zidane": ultralytics_asset("zidane.jpg").read_bytes(),
        "astronaut": encode(astronaut, "PNG"),
    }
    with LiveServer(create_app(settings, AuthSettings(required=True, keys_file=keys_file))) as live:
        yield Stack(
            f"127.0.0.1:{classifier.port}",
            f"127.0.0.1:{detector.port}",
            live.url,
            {"X-API-Key": key},
            (c_engine, d_engine),
            photos,
        )
    for server in (classifier, detector):
        server.stop(0).wait()
    c_engine.close()  # type: ignore[attr-defined]
    d_engine.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_input(*photos: bytes, name: str = "IMAGE", datatype: str = "BYTES") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(photos)], "b64": [b64(p) for p in photos]}


def triton_grpc(address: str, plan: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run ``plan`` (name -> step) with tritonclient.grpc in a process of its own; name -> result."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.triton_grpc", address],
        input=json.dumps(list(plan.values())),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=240,
        check=True,
    )
    return dict(zip(plan, json.loads(done.stdout), strict=True))


def predict(stack: Stack, photo: bytes, **form: Any) -> dict[int, float]:
    """/predict's probabilities by class id (every class: top_k 10)."""
    reply = httpx.post(
        f"{stack.gateway}/predict",
        files={"file": ("photo", photo)},
        data={"top_k": "10", **form},
        headers=stack.headers,
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return {c["class_id"]: c["confidence"] for c in reply.json()["top5"]}


def detect(stack: Stack, photo: bytes, **form: Any) -> list[tuple[float, ...]]:
    reply = httpx.post(
        f"{stack.gateway}/detect",
        files={"file": ("photo", photo)},
        data={"annotate": "false", "model": "yolo11n", **form},
        headers=stack.headers,
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return [
        (d["bbox"]["x1"], d["bbox"]["y1"], d["bbox"]["x2"], d["bbox"]["y2"], d["confidence"], d["class_id"])
        for d in reply.json()["detections"]
    ]


def assert_probabilities_equal(rows: Any, expected: list[dict[int, float]]) -> None:
    got = np.asarray(rows, dtype=np.float64)
    want = np.array([[e[i] for i in range(got.shape[1])] for e in expected])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def classifier_plan(photos: dict[str, bytes], workdir: Path) -> dict[str, dict[str, Any]]:
    """What tritonclient.grpc asks classifier_svc: health, metadata, inference, then bad input."""
    pixels = Preprocessing()(Image.open(io.BytesIO(photos["astronaut"])).convert("RGB")).numpy()[None]
    npy = workdir / "astronaut.npy"
    np.save(npy, pixels)
    small = npy.with_name("small.npy")  # a tensor of the wrong size for the model
    np.save(small, np.zeros((1, 3, 100, 100), np.float32))
    classify = {"op": "infer", "model": "resnet18"}
    return {
        "live": {"op": "live"},
        "ready": {"op": "ready"},
        "server": {"op": "server_metadata"},
        "ready_v2": {"op": "model_ready", "model": "resnet18"},
        "ready_v1_before": {"op": "model_ready", "model": "resnet18", "version": "1"},
        "ready_unknown": {"op": "model_ready", "model": "nope"},
        "metadata": {"op": "model_metadata", "model": "resnet18"},
        "metadata_unknown": {"op": "model_metadata", "model": "nope"},
        "two_photos": {**classify, "id": "req-7", "inputs": [image_input(photos["bus"], photos["zidane"])]},
        "top3": {
            **classify,
            "inputs": [image_input(photos["bus"])],
            "outputs": [{"name": "PROBABILITIES", "class_count": 3}],
        },
        "astronaut": {**classify, "inputs": [image_input(photos["astronaut"])]},
        "pixels": {
            **classify,
            "inputs": [{"name": "PIXELS", "datatype": "FP32", "shape": [1, 3, 224, 224], "npy": str(npy)}],
        },
        "version_1": {**classify, "version": "1", "inputs": [image_input(photos["bus"])]},
        "ready_v1_after": {"op": "model_ready", "model": "resnet18", "version": "1"},
        # Bad input, each with the status Triton's clients expect; the service answers the next call.
        "two_inputs": {
            **classify,
            "inputs": [image_input(photos["bus"]), {**image_input(photos["bus"]), "name": "OTHER"}],
        },
        "wrong_datatype": {
            **classify,
            "inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [1, 3, 224, 224], "npy": str(npy)}],
        },
        "wrong_shape": {
            **classify,
            "inputs": [{"name": "PIXELS", "datatype": "FP32", "shape": [1, 3, 100, 100], "npy": str(small)}],
        },
        "not_an_image": {**classify, "inputs": [image_input(b"not an image at all")]},
        "too_many": {**classify, "inputs": [image_input(*[photos["zidane"]] * (MAX_BATCH + 1))]},
        "unknown_model": {"op": "infer", "model": "nope", "inputs": [image_input(photos["bus"])]},
        "unknown_version": {**classify, "version": "9", "inputs": [image_input(photos["bus"])]},
        "unknown_output": {
            **classify,
            "inputs": [image_input(photos["bus"])],
            "outputs": [{"name": "LOGITS"}],
        },
        "unknown_parameter": {**classify, "inputs": [image_input(photos["bus"])], "parameters": {"top_k": 3}},
        "detection_model_here": {"op": "infer", "model": "yolo11n", "inputs": [image_input(photos["bus"])]},
        "still_up": {**classify, "inputs": [image_input(photos["bus"])]},
    }


def detector_plan(photos: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """What tritonclient.grpc asks detector_svc."""
    return {
        "metadata": {"op": "model_metadata", "model": "yolo11n"},
        "boxes": {
            "op": "infer",
            "model": "yolo11n",
            "inputs": [image_input(photos["bus"])],
            "parameters": {"conf": 0.3, "iou": 0.6, "max_det": 20},
        },
        "defaults": {"op": "infer", "model": "yolo11n", "inputs": [image_input(photos["zidane"])]},
        "bad_conf": {
            "op": "infer",
            "model": "yolo11n",
            "inputs": [image_input(photos["bus"])],
            "parameters": {"conf": 2.0},
        },
        "two_images": {
            "op": "infer",
            "model": "yolo11n",
            "inputs": [image_input(photos["bus"], photos["bus"])],
        },
    }

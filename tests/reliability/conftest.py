"""One real `vision run` shared by the reliability tests: every service and the gateway as child processes of
the launcher, on free loopback ports, with a seeded smallcnn classifier and a YOLO11n detector (random,
calibrated weights) in a temporary store. Tests that kill services wait for them to be back before ending,
so the next test finds the system whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import publish_random_model
from tests.reliability.mesh import VisionRun
from tests.reliability.traffic import GATEWAY_TIMEOUT_S
from vision.models.store import ModelStore

CLASSIFIER = "smallcnn"
DETECTOR = "yolo11n"


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisionRun]:
    from detector_svc.checkpoints import import_yolo_checkpoint
    from tests.support.detector import make_yolo_checkpoint

    root = tmp_path_factory.mktemp("mesh")
    store = ModelStore(root / "models")
    publish_random_model(store, name=CLASSIFIER, arch="smallcnn")
    import_yolo_checkpoint(store, make_yolo_checkpoint(root / "yolo11n.pt"), DETECTOR)
    run = VisionRun(
        root,
        VISION_CLASSIFIER_DEFAULT_MODEL=CLASSIFIER,
        VISION_EXPLAIN_DEFAULT_MODEL=CLASSIFIER,
        VISION_DETECTOR_DEFAULT_MODEL=DETECTOR,
        VISION_LOG_LEVEL="WARNING",
        # A hang shows within seconds, not after the default 30 s (tests/reliability/traffic.py).
        VISION_GATEWAY_TIMEOUT_S=str(GATEWAY_TIMEOUT_S),
    )
    with run:
        run.wait_healthy(180)
        yield run
        status = run.interrupt()
        assert status == 0, run.tail()


@pytest.fixture(scope="package")
def mesh_root(mesh: VisionRun) -> Path:
    return mesh.root

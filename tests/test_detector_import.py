"""`vision models import` of Ultralytics files: weights_only loading with an allow-list, safetensors + network
config + class names in the store, refusal of anything that would run code; ONNX exports stored as-is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest
import torch

from detector_svc.checkpoints import import_yolo_checkpoint
from tests.conftest import publish_random_model, ultralytics_asset
from tests.support.detector import (
    YOLO,
    as_float32,
    coco_names,
    make_yolo_checkpoint,
    reply_rows,
    rows,
    start_detector,
)
from vision.cli import main as vision_cli
from vision.errors import InvalidCheckpoint
from vision.models.store import ModelStore
from vision.v1 import common_pb2, detector_pb2, detector_pb2_grpc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yolo_checkpoint(tmp_path_factory.mktemp("weights") / "yolo11n.pt")


def cli_import(path: Path, name: str, store: ModelStore) -> int:
    return vision_cli(["models", "import", str(path), "--name", name, "--model-dir", str(store.root)])


def test_a_yolo_pt_is_stored_as_safetensors_a_network_config_and_class_names(
    checkpoint: Path, store: ModelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_import(checkpoint, "yolo11n", store) == 0
    assert "as yolo11n version 1 (detection, yolo11n, 80 classes)" in capsys.readouterr().out
    version = store.get("yolo11n")
    assert sorted(p.name for p in version.path.iterdir()) == [
        "metadata.json",
        "model.safetensors",
        "network.yaml",
    ]
    meta = json.loads((version.path / "metadata.json").read_text())
    assert meta["task"] == "detection" and meta["class_names"] == coco_names() and meta["input_size"] == 640
    assert meta["provenance"]["format"] == "ultralytics-pt" and len(meta["weights_sha256"]) == 64


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pt_that_would_run_code_is_refused_and_the_code_never_runs(
    tmp_path: Path, store: ModelStore
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "yolo11n.pt"
    from ultralytics.nn.tasks import DetectionModel  # an Ultralytics name, so the file routes to YOLO import

    torch.save({"model": DetectionModel, "payload": RunsCode(marker)}, evil)
    with pytest.raises(InvalidCheckpoint, match=r"refused: posix\.system"):
        import_yolo_checkpoint(store, evil, "evil")
    assert cli_import(evil, "evil", store) == 2
    assert not marker.exists() and store.names() == []


def test_a_segmentation_checkpoint_is_refused_as_not_a_detection_model(
    tmp_path: Path, store: ModelStore
) -> None:
    YOLO("yolo11n-seg.yaml").save(str(tmp_path / "seg.pt"))
    with pytest.raises(InvalidCheckpoint, match=r"only detection models can be imported .*SegmentationModel"):
        import_yolo_checkpoint(store, tmp_path / "seg.pt", "seg")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"activation": "__import__('os').system('touch pwned')"}, "is not a torch.nn layer"),
        ({"activation": "nn.SiLU(__import__('os'))"}, "is not a torch.nn layer"),
        ({"head_module": "torch_load"}, "names 'torch_load', which is not a known layer"),
    ],
)
def test_a_network_config_that_names_code_is_refused(
    checkpoint: Path, tmp_path: Path, store: ModelStore, edit: dict[str, str], message: str
) -> None:
    model = YOLO(str(checkpoint))
    network = model.model
    if "activation" in edit:
        network.yaml["activation"] = edit["activation"]
    else:
        network.yaml["head"][-2][2] = edit["head_module"]
    model.save(str(tmp_path / "edited.pt"))
    with pytest.raises(InvalidCheckpoint, match=message):
        import_yolo_checkpoint(store, tmp_path / "edited.pt", "edited")
    assert not (Path.cwd() / "pwned").exists()


def test_a_classifier_checkpoint_still_imports_as_a_classifier(tmp_path: Path, store: ModelStore) -> None:
    version = publish_random_model(
        ModelStore(tmp_path / "other"), "pets", arch="smallcnn", classes=["a", "b"]
    )
    from safetensors.torch import load_file

    torch.save(
        {"model_state_dict": load_file(version.weights_path), "class_names": ["a", "b"]}, tmp_path / "p.pth"
    )
    assert cli_import(tmp_path / "p.pth", "pets", store) == 0
    assert store.get("pets").metadata.task == "classification"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # from Ultralytics' own export
def test_an_onnx_export_is_stored_as_is_and_served_like_ultralytics_onnxruntime(
    checkpoint: Path, tmp_path: Path, store: ModelStore
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # only to export here; serving needs onnxruntime alone
    exported = Path(YOLO(str(checkpoint)).export(format="onnx", imgsz=640, simplify=False, dynamic=False))
    assert cli_import(exported, "yolo11n-onnx", store) == 0
    version = store.get("yolo11n-onnx")
    assert (version.path / "model.onnx").read_bytes() == exported.read_bytes()
    assert version.metadata.class_names == coco_names() and version.metadata.provenance["imgsz"] == [640, 640]
    server, engine = start_detector(store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = detector_pb2_grpc.DetectorStub(channel)
            image = ultralytics_asset("bus.jpg").read_bytes()
            model = common_pb2.ModelRef(name="yolo11n-onnx")
            reply = stub.Detect(detector_pb2.DetectRequest(image=image, model=model), timeout=60)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Detect(detector_pb2.DetectRequest(image=image, model=model, imgsz=320), timeout=60)
    finally:
        server.stop(0).wait()
        engine.close()
    want = YOLO(str(exported), task="detect").predict(
        str(ultralytics_asset("bus.jpg")), iou=0.45, verbose=False
    )
    assert reply_rows(reply) == as_float32(sorted(rows(want[0].boxes.data), key=lambda r: -r[4]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "static ONNX export for imgsz [640, 640]" in caught.value.details()

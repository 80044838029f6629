"""detector_svc on the fast CPU path: a real YOLO11n (from ultralytics' yolo11n.yaml, seeded, BatchNorm set
from the photos) converted to OpenVINO / onnxruntime, checked against torch ``YOLO.predict`` before it serves.

Real servers on loopback, real conversions, real runtimes, the real photos that ship with ultralytics. Runs
in the runtime tests' own pytest process (see the Makefile): OpenVINO stays out of the main test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from detector_svc.checkpoints import import_yolo_checkpoint
from detector_svc.model import DetectorEngine
from detector_svc.parity import (
    LOW_PRECISION_BOUNDS,
    PARITY_CONF,
    ParityBounds,
    check_parity,
    parity_groups,
)
from detector_svc.served import load_for_serving
from tests.conftest import ultralytics_asset
from tests.support.detector import (
    YOLO,
    Row,
    as_float32,
    assert_same_detections,
    make_yolo_checkpoint,
    reply_rows,
    rows,
    start_detector,
)
from vision.models.derived import DERIVED_DIR, STAMP_SUFFIX
from vision.models.export import OPENVINO_FILES
from vision.models.store import ModelStore, ModelVersion
from vision.serving.runtimes import RuntimeOptions
from vision.v1 import detector_pb2, detector_pb2_grpc, models_pb2, models_pb2_grpc

CPU = torch.device("cpu")
BOX_PX, SCORE = 1.0, 1e-3  # issue 15: the converted model's boxes equal torch's within these (fp32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yolo_checkpoint(tmp_path_factory.mktemp("weights") / "yolo11n.pt")


@pytest.fixture(scope="module")
def reference_model(checkpoint: Path) -> Any:
    """The original ``.pt`` loaded by Ultralytics itself, on torch: the answers to match."""
    return YOLO(str(checkpoint), task="detect")


@pytest.fixture(scope="module")
def stored(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelVersion:
    """The checkpoint imported into a store shared by this module (its conversion is cached there)."""
    return import_yolo_checkpoint(
        ModelStore(tmp_path_factory.mktemp("store") / "models"), checkpoint, "yolo11n"
    )


@pytest.fixture(scope="module")
def fast_service(
    stored: ModelVersion, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, DetectorEngine]]:
    """detector_svc with the default runtime (auto: OpenVINO fp32 on the CPU), serving ``stored`` (its IR
    converted beside it, the store being writable); its port and engine."""
    server, engine = start_detector(
        ModelStore(stored.path.parents[1]),
        runtime="auto",
        runtime_cache_dir=tmp_path_factory.mktemp("cache"),
        max_batch_delay_ms=50,
    )
    yield server.port, engine
    server.stop(0).wait()
    engine.close()


@pytest.fixture(scope="module")
def fast_engine(fast_service: tuple[int, DetectorEngine]) -> DetectorEngine:
    return fast_service[1]


@pytest.fixture(scope="module")
def fast_detector(fast_service: tuple[int, DetectorEngine]) -> int:
    return fast_service[0]


def catalog(port: int) -> dict[tuple[str, str], models_pb2.ModelVersionInfo]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = models_pb2_grpc.ModelCatalogStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
    return {(m.name, m.version): m for m in reply.models}


def detect(port: int, photo: str, **fields: Any) -> detector_pb2.DetectResponse:
    request = detector_pb2.DetectRequest(image=ultralytics_asset(photo).read_bytes(), **fields)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply: detector_pb2.DetectResponse = detector_pb2_grpc.DetectorStub(channel).Detect(
            request, timeout=60
        )
    return reply


def expected(reference_model: Any, photo: str, **params: Any) -> list[Row]:
    result = reference_model.predict(str(ultralytics_asset(photo)), verbose=False, **params)[0]
    return sorted(rows(result.boxes.data), key=lambda r: -r[4])


def assert_within(got: list[Row], want: list[Row], box_px: float = BOX_PX, score: float = SCORE) -> None:
    """The same boxes: each of torch's has one of the same class within ``box_px`` (every corner
    coordinate) and ``score``, and no box is left over."""
    assert len(got) == len(want), (len(got), len(want))
    a, b = (np.array(t, dtype=float).reshape(-1, 6) for t in (got, want))
    free = np.ones(len(a), dtype=bool)
    for row in b:
        close = free & (a[:, 5] == row[5]) & (np.abs(a[:, :4] - row[:4]).max(1) <= box_px)
        close &= np.abs(a[:, 4] - row[4]) <= score
        assert close.any(), f"torch's box {row.tolist()} has no counterpart within {box_px} px / {score}"
        free[np.argmax(close)] = False


PARAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {"conf": 0.25, "iou": 0.45}),
    "imgsz and classes": (
        {"imgsz": 320, "conf": 0.2, "class_ids": [0, 2, 5]},
        {"imgsz": 320, "conf": 0.2, "iou": 0.45, "classes": [0, 2, 5]},
    ),
}


def test_the_default_runtime_is_openvino_fp32_and_reported_per_model(fast_detector: int) -> None:
    info = catalog(fast_detector)[("yolo11n", "1")]
    assert (info.loaded, info.runtime, info.precision, info.runtime_fallback) == (
        True,
        "openvino",
        "fp32",
        "",
    )


@pytest.mark.parametrize("params", PARAMS.values(), ids=PARAMS.keys())
@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
def test_openvino_boxes_equal_torch_predict_within_a_pixel_and_1e3(
    fast_detector: int, reference_model: Any, photo: str, params: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    fields, predict_params = params
    want = expected(reference_model, photo, **predict_params)
    assert want, "the test model must find boxes for this to mean anything"
    assert_within(reply_rows(detect(fast_detector, photo, **fields)), want)


def test_concurrent_requests_share_openvino_batches_and_still_equal_torch(
    fast_detector: int, reference_model: Any
) -> None:
    photos = ["bus.jpg", "zidane.jpg"] * 6
    with ThreadPoolExecutor(len(photos)) as pool:
        replies = list(pool.map(lambda p: detect(fast_detector, p), photos))
    assert max(r.timing.batch_size for r in replies) > 1
    for photo, reply in zip(photos, replies, strict=True):
        assert_within(reply_rows(reply), expected(reference_model, photo, conf=0.25, iou=0.45))


def test_a_version_failing_the_parity_check_is_served_by_torch_and_the_reason_is_listed(
    stored: ModelVersion, reference_model: Any, tmp_path: Path
) -> None:
    server, engine = start_detector(
        ModelStore(stored.path.parents[1]),
        runtime="openvino",
        parity_score_tolerance=0.0,
        runtime_cache_dir=tmp_path,
    )
    try:
        info = catalog(server.port)[("yolo11n", "1")]
        assert (info.runtime, info.precision) == ("torch", "fp32")
        assert "openvino fp32 failed the parity check" in info.runtime_fallback
        assert "torch serves" in info.runtime_fallback
        reply = detect(server.port, "zidane.jpg")
        assert_same_detections(
            reply_rows(reply), expected(reference_model, "zidane.jpg", conf=0.25, iou=0.45)
        )
    finally:
        server.stop(0).wait()
        engine.close()


def test_runtime_torch_converts_nothing_and_answers_as_before(
    checkpoint: Path, reference_model: Any, tmp_path: Path
) -> None:
    version = import_yolo_checkpoint(ModelStore(tmp_path / "models"), checkpoint, "yolo11n")
    server, engine = start_detector(ModelStore(tmp_path / "models"), runtime="torch")
    try:
        info = catalog(server.port)[("yolo11n", "1")]
        assert (info.runtime, info.precision, info.runtime_fallback) == ("torch", "fp32", "")
        reply = detect(server.port, "bus.jpg")
        want = expected(reference_model, "bus.jpg", conf=0.25, iou=0.45)
        assert reply_rows(reply) == as_float32(want)  # exactly, as before
    finally:
        server.stop(0).wait()
        engine.close()
    assert not (version.path / DERIVED_DIR).exists()


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_each_fp32_runtime_passes_parity_with_the_figures_reported(
    fast_engine: DetectorEngine, stored: ModelVersion, tmp_path: Path, runtime: str
) -> None:
    if runtime == "openvino":  # the service's own
        served = fast_engine.registry.get("yolo11n", "1")[2]
    else:
        served = load_for_serving(stored, CPU, True, RuntimeOptions(runtime, "fp32", tmp_path, threads=2))
    assert (served.served_as.runtime, served.served_as.fallback) == (runtime, "")
    parity = served.parity
    assert parity is not None and parity.boxes > 0 and parity.box_agreement == 1.0
    assert parity.max_box_px <= BOX_PX and parity.max_score_diff <= SCORE


def test_below_fp32_the_looser_bounds_apply_and_the_outcome_follows_the_figures(
    fast_engine: DetectorEngine, stored: ModelVersion, tmp_path: Path
) -> None:
    precision = "bf16"  # this CPU's AMX; fp16's bounds are checked on synthetic boxes below
    served = load_for_serving(stored, CPU, True, RuntimeOptions("openvino", precision, tmp_path, threads=2))
    parity = served.parity
    assert parity is not None
    fraction, score = LOW_PRECISION_BOUNDS[precision]
    assert (parity.box_bound, parity.score_bound) == (fraction * 1280, score)  # zidane: 1280 px wide
    if parity.failure:  # this seeded model is fragile below fp32: then torch serves, and says why
        assert served.served_as.runtime == "torch" and precision in served.served_as.fallback
        assert served.predictor is None
    else:
        assert (served.served_as.runtime, served.served_as.precision) == ("openvino", precision)


def _stamp(version: ModelVersion) -> Path:
    return version.path / DERIVED_DIR / (OPENVINO_FILES[0] + STAMP_SUFFIX)


OFFLINE_LOAD = textwrap.dedent(
    """
    import sys
    attempts = []
    def audit(event, args):
        if event == "subprocess.Popen" and args[0] == "/sbin/ldconfig":
            return  # ctypes.util.find_library: a local library lookup
        if event in ("socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.system", "os.exec"):
            attempts.append((event, repr(args)[:200]))
    sys.addaudithook(audit)
    from pathlib import Path
    import torch
    from detector_svc.served import load_for_serving
    from vision.models.store import ModelStore
    from vision.serving.runtimes import RuntimeOptions
    version = ModelStore(Path(sys.argv[1])).get("yolo11n")
    options = RuntimeOptions("openvino", "fp32", Path(sys.argv[2]))
    served = load_for_serving(version, torch.device("cpu"), True, options)
    print("SERVED_AS", served.served_as.runtime, served.served_as.fallback)
    print("ATTEMPTS", attempts)
    """
)


def load_offline(store: Path, cache: Path, tmp_path: Path) -> str:
    """``load_for_serving`` on OpenVINO in a fresh interpreter, in a network namespace of its own (no
    interface up: the internet boundary is real, not mocked), with an audit hook recording every connect, name
    lookup and subprocess (a pip install) but ldconfig's library lookup; Ultralytics' YOLO_* variables unset,
    so detector_svc must set them itself. Its output."""
    script = tmp_path / "load_offline.py"
    script.write_text(OFFLINE_LOAD)
    prefix = ["unshare", "-rn"] if subprocess.run(["unshare", "-rn", "true"]).returncode == 0 else []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "ULTRALYTICS_"))}
    env["PYTHONPATH"] = os.getcwd()
    command = [*prefix, sys.executable, str(script), str(store), str(cache)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_conversion_is_reused_on_restart_and_rebuilt_when_stale_offline_installing_nothing(
    fast_engine: DetectorEngine, stored: ModelVersion, tmp_path: Path
) -> None:
    version = stored  # the running service converted it beside the version (the store is writable)
    ir = version.path / DERIVED_DIR / OPENVINO_FILES[0]
    first = ir.stat().st_mtime_ns, ir.stat().st_ino
    assert json.loads(_stamp(version).read_text())["weights_sha256"] == version.metadata.weights_sha256
    load_for_serving(version, CPU, True, RuntimeOptions("openvino", "fp32", tmp_path / "cache", threads=2))
    assert (ir.stat().st_mtime_ns, ir.stat().st_ino) == first  # what a restart does: the same artifact
    stamp = json.loads(_stamp(version).read_text())
    _stamp(version).write_text(json.dumps({**stamp, "openvino": "0.0-older"}))
    out = load_offline(version.path.parents[1], tmp_path / "cache", tmp_path)
    assert "SERVED_AS openvino \n" in out and "ATTEMPTS []" in out, out
    assert (ir.stat().st_mtime_ns, ir.stat().st_ino) != first  # rebuilt, with the current stamp
    assert json.loads(_stamp(version).read_text()) == stamp
    assert not (tmp_path / "cache").exists()  # the store was writable: nothing went to the cache dir


# Pure logic: the bounds of the parity check, on synthetic detections (no model).


def _rows(*boxes: tuple[float, ...]) -> np.ndarray:
    return np.array(boxes, dtype=np.float64).reshape(-1, 6)


def _check(want: list[np.ndarray], got: list[np.ndarray], precision: str = "fp32") -> str:
    """check_parity's verdict where torch finds ``want`` and the converted model ``got`` on every photo group,
    with identical raw outputs."""
    groups = parity_groups()

    def side(found: list[np.ndarray]) -> Any:
        return lambda images: [found[min(i, len(found) - 1)] for i in range(len(images))]

    def same(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(1, keepdim=True)] * 14, 1)[:, :, ::8, ::8].flatten(2)

    assert groups
    parity = check_parity(side(want), side(got), same, same, 640, 32, precision, ParityBounds(BOX_PX, SCORE))
    return parity.failure


BOX = (100.0, 100.0, 300.0, 400.0, 0.8, 3.0)


@pytest.mark.fast
def test_parity_fp32_accepts_sub_pixel_moves_and_rejects_a_two_pixel_one() -> None:
    assert _check([_rows(BOX)], [_rows((100.4, 99.6, 300.9, 400.0, 0.8005, 3.0))]) == ""
    assert "moved 2 px" in _check([_rows(BOX)], [_rows((102.0, 100.0, 300.0, 400.0, 0.8, 3.0))])


@pytest.mark.fast
def test_parity_below_fp32_accepts_moves_within_its_bounds() -> None:
    moved = _rows((110.0, 95.0, 310.0, 400.0, 0.83, 3.0))  # 10 px, 0.03: within bf16's 25.6 px / 0.05
    assert _check([_rows(BOX)], [moved], "bf16") == ""
    assert _check([_rows(BOX)], [moved], "fp32") != ""


@pytest.mark.fast
def test_parity_tolerates_borderline_boxes_only() -> None:
    near_threshold = (500.0, 500.0, 600.0, 600.0, PARITY_CONF + 0.0004, 1.0)
    assert _check([_rows(BOX, near_threshold)], [_rows(BOX)]) == ""
    confident = (500.0, 500.0, 600.0, 600.0, 0.6, 1.0)
    assert "is missing" in _check([_rows(BOX, confident)], [_rows(BOX)])
    assert "not among torch's" in _check([_rows(BOX)], [_rows(BOX, confident)])
    assert "is missing" in _check([_rows(BOX)], [_rows((100.0, 100.0, 300.0, 400.0, 0.8, 4.0))])  # class

"""classifier_svc and explain_svc on their default runtime (auto: OpenVINO on the CPU), as real servers on
loopback: what they report per model, answers equal to torch's, batching, fallback, a read-only store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
import torch

from explain_svc.config import ExplainSettings
from explain_svc.server import create_explain_server
from tests.conftest import live_gateway, publish_random_model, start_classifier
from tests.reliability.mesh import free_port, wait_until
from vision.image.decode import decode_image
from vision.image.preprocess import Preprocessing
from vision.models.derived import DERIVED_DIR
from vision.models.store import ModelStore
from vision.models.weights import load_classifier
from vision.serving.runtimes import AUTO_PROB_TOLERANCE, native_bf16
from vision.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    explainer_pb2,
    explainer_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)


def torch_probabilities(store: ModelStore, image: bytes) -> torch.Tensor:
    model = load_classifier(store.get("resnet18"))
    with torch.inference_mode():
        return torch.softmax(model(Preprocessing()(decode_image(image)).unsqueeze(0)), 1)[0]


def catalog(port: int) -> dict[tuple[str, str], models_pb2.ModelVersionInfo]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = models_pb2_grpc.ModelCatalogStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
    return {(m.name, m.version): m for m in reply.models}


@pytest.fixture
def fast_classifier(store: ModelStore, tmp_path: Path) -> Iterator[int]:
    """classifier_svc with the default runtime (auto) serving a seeded resnet18; its port."""
    publish_random_model(store)
    server, engine = start_classifier(store, runtime="auto", runtime_cache_dir=tmp_path / "cache")
    yield server.port
    server.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


def auto_precision() -> str:
    """What precision=auto serves a seeded resnet18 in here: bf16 where the CPU computes bf16 natively."""
    return "bf16" if native_bf16() else "fp32"


def test_the_default_runtime_is_openvino_reported_per_model_and_answers_as_torch_does(
    fast_classifier: int, store: ModelStore, bus_jpeg: bytes, zidane_jpeg: bytes
) -> None:
    info = catalog(fast_classifier)[("resnet18", "1")]
    precision = auto_precision()
    assert (info.loaded, info.runtime, info.precision, info.runtime_fallback) == (
        True,
        "openvino",
        precision,
        "",
    )
    photos = [bus_jpeg, zidane_jpeg] * 8
    with (
        grpc.insecure_channel(f"127.0.0.1:{fast_classifier}") as channel,
        ThreadPoolExecutor(8) as pool,
    ):
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        replies = list(
            pool.map(
                lambda p: stub.Classify(classifier_pb2.ClassifyRequest(image=p, top_k=10), timeout=30), photos
            )
        )
    assert max(r.timing.batch_size for r in replies) > 1  # concurrent calls still share forward passes
    # fp32: the same order and probabilities within 1e-5; bf16: each probability within the bound auto
    # checks (2e-3, the /predict target), and no class left out that torch ranks clearly higher.
    tolerance = 1e-5 if precision == "fp32" else AUTO_PROB_TOLERANCE
    for photo in (bus_jpeg, zidane_jpeg):
        expected = torch_probabilities(store, photo)
        reply = replies[photos.index(photo)]
        if precision == "fp32":
            assert [c.class_id for c in reply.classes] == expected.argsort(descending=True)[:10].tolist()
        for scored in reply.classes:
            assert abs(scored.score - float(expected[scored.class_id])) <= tolerance
        assert min(c.score for c in reply.classes) >= float(expected.topk(10).values[-1]) - 2 * tolerance


def test_the_gateways_models_shows_each_loaded_models_runtime_and_precision(fast_classifier: int) -> None:
    with (
        live_gateway(classifier_addr=f"127.0.0.1:{fast_classifier}", timeout_s=30) as live,
        httpx.Client(base_url=live.url, timeout=30) as client,
    ):
        body = client.get("/models").json()
    (model,) = body["models"]
    assert (model["runtime"], model["precision"], model["runtime_fallback"]) == (
        "openvino",
        auto_precision(),
        "",
    )


@pytest.mark.skipif(not native_bf16(), reason="precision auto is fp32 on a CPU without native bf16")
def test_auto_precision_serves_fp32_where_bf16_moves_probabilities_beyond_its_bound(
    store: ModelStore, tmp_path: Path, bus_jpeg: bytes
) -> None:
    publish_random_model(store)
    server, engine = start_classifier(
        store, runtime="auto", auto_prob_tolerance=0.0, runtime_cache_dir=tmp_path
    )
    try:
        info = catalog(server.port)[("resnet18", "1")]
        assert (info.runtime, info.precision) == ("openvino", "fp32")
        assert info.runtime_fallback.startswith("precision auto: openvino bf16 failed the parity check")
        assert "max |Δprobability|" in info.runtime_fallback
        assert info.runtime_fallback.endswith("fp32 serves this version")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(image=bus_jpeg, top_k=5), timeout=30
            )
        expected = torch_probabilities(store, bus_jpeg)
        for scored in reply.classes:  # fp32 again: torch's probabilities within 1e-5
            assert abs(scored.score - float(expected[scored.class_id])) <= 1e-5
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


def test_a_version_failing_the_parity_check_is_served_by_torch_and_the_reason_is_listed(
    store: ModelStore, tmp_path: Path, bus_jpeg: bytes
) -> None:
    publish_random_model(store)
    server, engine = start_classifier(
        store, runtime="openvino", precision="fp32", parity_tolerance=0.0, runtime_cache_dir=tmp_path
    )
    try:
        info = catalog(server.port)[("resnet18", "1")]
        assert (info.runtime, info.precision) == ("torch", "fp32")
        assert "failed the parity check" in info.runtime_fallback and "torch serves" in info.runtime_fallback
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(image=bus_jpeg), timeout=30
            )
        assert reply.classes[0].class_id == int(torch_probabilities(store, bus_jpeg).argmax())
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


def test_explain_runs_the_last_block_on_the_fast_runtime_and_other_layers_on_torch(
    store: ModelStore, tmp_path: Path, bus_jpeg: bytes
) -> None:
    publish_random_model(store)
    settings = ExplainSettings(
        port=0, model_dir=store.root, poll_interval_s=0.2, runtime="auto", runtime_cache_dir=tmp_path
    )
    server, engine = create_explain_server(settings)
    try:
        assert catalog(server.port)[("resnet18", "1")].runtime == "openvino"
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = explainer_pb2_grpc.ExplainerStub(channel)
            for method, layer in [
                (explainer_pb2.CAM_METHOD_CAM, ""),
                (explainer_pb2.CAM_METHOD_GRAD_CAM, "layer4"),
                (explainer_pb2.CAM_METHOD_GRAD_CAM, "layer3"),  # a real backward pass, in torch
            ]:
                reply = stub.Explain(
                    explainer_pb2.ExplainRequest(image=bus_jpeg, method=method, layer=layer), timeout=60
                )
                assert reply.heatmap_png.startswith(b"\x89PNG")
                assert reply.target.class_id == int(torch_probabilities(store, bus_jpeg).argmax())
    finally:
        server.stop(0).wait()
        engine.close()


def read_only_command(store: Path) -> list[str]:
    """A command prefix under which ``store`` is really read-only: a read-only bind mount in a user and mount
    namespace (root ignores file modes), else file modes."""
    if os.geteuid() != 0:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return []
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make the store read-only")
    mount = f'mount --bind {store} {store} && mount -o remount,bind,ro {store} && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", mount, "sh"]


def test_with_a_read_only_store_the_export_is_cached_in_the_cache_dir_and_the_store_is_untouched(
    store: ModelStore, tmp_path: Path, bus_jpeg: bytes
) -> None:
    version = publish_random_model(store)
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*"))
    port = free_port()
    env = {
        **os.environ,
        "VISION_MODEL_DIR": str(store.root),
        "VISION_CLASSIFIER_PORT": str(port),
        "VISION_CLASSIFIER_RUNTIME": "auto",
        "VISION_CLASSIFIER_RUNTIME_CACHE_DIR": str(tmp_path / "cache"),
        "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
    }
    prefix = read_only_command(store.root)
    service = subprocess.Popen([*prefix, sys.executable, "-m", "classifier_svc"], env=env, cwd=os.getcwd())
    try:
        assert wait_until(lambda: _loaded(port), timeout_s=60), "classifier_svc did not load its model"
        info = catalog(port)[("resnet18", "1")]
        assert (info.runtime, info.runtime_fallback) == ("openvino", "")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(image=bus_jpeg), timeout=30
            )
        assert reply.classes[0].class_id == int(torch_probabilities(store, bus_jpeg).argmax())
    finally:
        service.terminate()
        service.wait(30)
    assert (tmp_path / "cache" / "resnet18" / "1" / "openvino.xml").is_file()
    assert not (version.path / DERIVED_DIR).exists()
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*")) == before


def _loaded(port: int) -> bool:
    try:
        return catalog(port)[("resnet18", "1")].loaded
    except (grpc.RpcError, KeyError):
        return False

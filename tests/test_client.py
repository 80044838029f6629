"""vision.client against the real services on loopback: classifier, explain, detector and trainer servers
with models made here, real photos. The client's results equal what the servicers answer a bare stub; a
deadline is kept; UNAVAILABLE is retried with backoff (a classifier that starts late, and one restarted on
the same port) and INVALID_ARGUMENT never is; mutual TLS with certificates made by the security tests'
helper; the asyncio client with 16 calls at once; watch_job follows a real training job to its end across
the trainer's stream time limit."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image as PILImage

from detector_svc.checkpoints import import_yolo_checkpoint
from explain_svc.config import ExplainSettings
from explain_svc.server import create_explain_server
from tests.conftest import publish_random_model, start_classifier, ultralytics_asset
from tests.support.detector import make_yolo_checkpoint, start_detector
from tests.support.digits import digit_images, write_image_folder
from tests.support.trainer import history, running_trainer, trainer_settings
from tests.test_security_tls import Authority, Identity, free_port, set_tls_env
from vision.client import (
    AsyncVisionClient,
    Classification,
    ClientSettings,
    DeadlineExceededError,
    Detection,
    EventKind,
    Explanation,
    InvalidArgumentError,
    JobEvent,
    JobState,
    ModelList,
    NotConfiguredError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    VisionClient,
)
from vision.client.requests import Image
from vision.client.retry import RetryPolicy
from vision.errors import InvalidArgument
from vision.models.store import ModelStore
from vision.security.tls import TlsSettings
from vision.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    detector_pb2,
    detector_pb2_grpc,
    explainer_pb2,
    explainer_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

PETS = ["cat", "dog", "bird", "fish"]
BUS = ultralytics_asset("bus.jpg")
ZIDANE = ultralytics_asset("zidane.jpg")
CORRUPT = BUS.read_bytes()[:2000]  # a JPEG cut short: its header is fine, its pixels are missing


def fast_retries(**fields: Any) -> ClientSettings:
    values: dict[str, Any] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, **fields}
    return ClientSettings.model_construct().model_copy(update=values)


@dataclass(frozen=True)
class Mesh:
    classifier: str
    explain: str
    detector: str


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """classifier_svc and explain_svc over one store (a seeded SmallCNN), detector_svc with a YOLO11n."""
    root = tmp_path_factory.mktemp("client")
    store = ModelStore(root / "models")
    publish_random_model(store, name="pets", arch="smallcnn", classes=PETS, seed=1)
    detections = ModelStore(root / "detection")
    import_yolo_checkpoint(detections, make_yolo_checkpoint(root / "yolo11n.pt"), "yolo11n")
    classifier, classifier_engine = start_classifier(store)
    explain, explain_engine = create_explain_server(
        ExplainSettings(port=0, model_dir=store.root, poll_interval_s=0.2)
    )
    detector, detector_engine = start_detector(detections, runtime="torch")  # no conversion at load
    yield Mesh(*(f"127.0.0.1:{server.port}" for server in (classifier, explain, detector)))
    for server, engine in (
        (classifier, classifier_engine),
        (explain, explain_engine),
        (detector, detector_engine),
    ):
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def client(mesh: Mesh) -> Iterator[VisionClient]:
    with VisionClient(classifier=mesh.classifier, explain=mesh.explain, detector=mesh.detector) as c:
        yield c


def bare(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target)


# -- results equal the servicers' replies -------------------------------------------------------------------


def test_classify_returns_what_the_classifier_answers_a_bare_stub(client: VisionClient, mesh: Mesh) -> None:
    with bare(mesh.classifier) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        direct = stub.Classify(classifier_pb2.ClassifyRequest(image=BUS.read_bytes(), top_k=3), timeout=30)
    expected = Classification.from_proto(direct)
    for image in (BUS, BUS.read_bytes(), str(BUS)):  # a path, bytes, a path as text
        got = client.classify(image, top_k=3)
        assert [(c.id, c.label) for c in got.classes] == [(c.id, c.label) for c in expected.classes]
        assert [c.score for c in got.classes] == pytest.approx([c.score for c in expected.classes], abs=1e-6)
        assert got.model == expected.model and got.model.name == "pets"
        assert got.top == got.classes[0] and got.timing.total_ms > 0


def test_explain_returns_the_explainers_heatmap_and_overlay(client: VisionClient, mesh: Mesh) -> None:
    with bare(mesh.explain) as channel:
        request = explainer_pb2.ExplainRequest(
            image=ZIDANE.read_bytes(),
            method=explainer_pb2.CAM_METHOD_GRAD_CAM_PLUS_PLUS,
            target_label="dog",
            alpha=0.3,
            colormap=explainer_pb2.COLORMAP_VIRIDIS,
        )
        expected = Explanation.from_proto(
            explainer_pb2_grpc.ExplainerStub(channel).Explain(request, timeout=30)
        )
    got = client.explain(ZIDANE, method="gradcampp", target="dog", alpha=0.3, colormap="viridis")
    assert (got.method, got.target.label, got.layer) == ("gradcampp", "dog", "features")
    assert got.heatmap_png == expected.heatmap_png and got.overlay == expected.overlay
    assert got.heatmap_png.startswith(b"\x89PNG")
    assert (got.overlay_format, got.overlay[:2]) == ("jpeg", b"\xff\xd8")  # the service's default
    lossless = client.explain(ZIDANE, overlay_format="png", overlay_max_side=2048)
    assert lossless.overlay_format == "png"
    assert PILImage.open(io.BytesIO(lossless.overlay)).size == PILImage.open(ZIDANE).size
    assert (got.prediction, got.top_k, got.model) == (expected.prediction, expected.top_k, expected.model)


def test_detect_returns_the_detectors_boxes_in_original_pixels(client: VisionClient, mesh: Mesh) -> None:
    with bare(mesh.detector) as channel:
        request = detector_pb2.DetectRequest(image=BUS.read_bytes(), conf=0.3, max_det=20)
        expected = Detection.from_proto(detector_pb2_grpc.DetectorStub(channel).Detect(request, timeout=60))
    got = client.detect(BUS, conf=0.3, max_det=20, timeout=60)
    assert got.boxes == expected.boxes and len(got.boxes) > 0
    assert (got.image_width, got.image_height) == (810, 1080)  # bus.jpg's own size
    assert all(0 <= b.x1 < b.x2 <= 810 and 0 <= b.y1 < b.y2 <= 1080 for b in got.boxes)
    kept = client.detect(BUS, conf=0.3, classes=[got.boxes[0].class_name], annotate=True, timeout=60)
    assert {b.class_name for b in kept.boxes} == {got.boxes[0].class_name}
    assert kept.annotated_png.startswith(b"\x89PNG")


def test_models_lists_what_each_service_serves(client: VisionClient, mesh: Mesh) -> None:
    with bare(mesh.classifier) as channel:
        reply = models_pb2_grpc.ModelCatalogStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
    listed = client.models()
    assert listed == ModelList.from_proto(reply)
    assert listed.default_model == "pets"
    assert [(m.name, m.architecture, m.class_names, m.loaded) for m in listed.models] == [
        ("pets", "smallcnn", tuple(PETS), True)
    ]
    assert [m.task for m in client.models("detector").models] == ["detection"]


# -- errors, deadlines, retries -----------------------------------------------------------------------------


def test_a_corrupt_image_is_invalid_argument_with_the_servers_message_and_is_not_retried(
    client: VisionClient, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    with bare(mesh.classifier) as channel, pytest.raises(grpc.RpcError) as direct:
        classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(image=CORRUPT), timeout=10
        )
    with caplog.at_level(logging.INFO, "vision.client"), pytest.raises(InvalidArgumentError) as caught:
        client.classify(CORRUPT)
    error = caught.value
    assert error.details == direct.value.details() and "image" in error.details
    assert (error.code, error.kind, error.attempts) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_argument",
        1,
    )
    assert error.method == "Classifier/Classify" and len(error.request_id) == 32
    assert isinstance(error, InvalidArgument)  # the domain kind too
    assert not caplog.records  # no retry


def test_options_the_client_can_check_are_refused_before_anything_is_sent(client: VisionClient) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown method 'shap'; accepted: cam, gradcam") as bad:
        client.explain(BUS, method="shap")
    assert bad.value.attempts == 0
    with pytest.raises(InvalidArgumentError, match="bad option"):
        client.classify(BUS, top_k=2**40)
    with pytest.raises(NotFoundError, match="nope"):
        client.classify(BUS, model="nope")
    with pytest.raises(NotConfiguredError, match="VISION_CLIENT_TRAINER_ADDR"):
        client.get_job("x")


def test_a_call_that_outlives_its_deadline_fails_with_deadline_exceeded(client: VisionClient) -> None:
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        client.detect(BUS, timeout=0.01)
    assert caught.value.attempts == 1 and time.monotonic() - start < 2


def test_a_service_that_never_answers_is_unavailable_after_the_configured_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        VisionClient(classifier=f"127.0.0.1:{free_port()}", settings=fast_retries()) as nobody,
        caplog.at_level(logging.INFO, "vision.client"),
        pytest.raises(UnavailableError) as caught,
    ):
        nobody.classify(BUS)
    assert caught.value.attempts == 3 and len(caplog.records) == 2
    patient = fast_retries(max_attempts=50, backoff_initial_s=0.1, backoff_max_s=0.1)
    with VisionClient(classifier=f"127.0.0.1:{free_port()}", settings=patient) as nobody:
        start = time.monotonic()
        with pytest.raises(UnavailableError) as caught:
            nobody.classify(BUS, timeout=0.5)  # the deadline ends the retries long before 50 attempts
    assert time.monotonic() - start < 0.6 and 2 <= caught.value.attempts < 12


def test_calls_refused_at_the_services_limit_are_retried_as_overloaded(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    publish_random_model(store, name="pets", arch="smallcnn", classes=PETS, seed=1)
    server, engine = start_classifier(store, max_workers=1, max_batch_delay_ms=50)
    target = f"127.0.0.1:{server.port}"

    async def burst(retry_overloaded: bool) -> list[Any]:
        settings = fast_retries(max_attempts=20, retry_overloaded=retry_overloaded)
        async with AsyncVisionClient(classifier=target, settings=settings) as aio:
            return [o async for o in aio.classify_many([BUS] * 8, concurrency=8)]

    try:
        without = asyncio.run(burst(False))
        refused = [o.error for o in without if o.error is not None]
        assert refused and all(isinstance(e, ResourceExhaustedError) for e in refused)
        assert {e.kind for e in refused} == {"overloaded"} and "busy" in refused[0].details
        assert all(o.error is None for o in asyncio.run(burst(True)))
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[tuple[int, float]]:
    """(attempt number, seconds waited before it) of each retry the client logged."""
    logged: list[Any] = [r.args for r in caplog.records if r.name == "vision.client"]
    return [(int(args[3]), float(args[5])) for args in logged]


def test_unavailable_is_retried_with_backoff_until_the_classifier_starts_and_after_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ModelStore(tmp_path / "models")
    publish_random_model(store, name="pets", arch="smallcnn", classes=PETS, seed=1)
    port = free_port()
    settings = fast_retries(backoff_initial_s=0.2, backoff_max_s=0.8, max_attempts=30, deadline_s=30)
    policy = RetryPolicy.from_settings(settings)
    started: list[Any] = []

    def start_later(delay: float) -> threading.Thread:
        def start() -> None:
            time.sleep(delay)
            started.append(start_classifier(store, port=port))

        thread = threading.Thread(target=start)
        thread.start()
        return thread

    with VisionClient(classifier=f"127.0.0.1:{port}", settings=settings) as late:
        for round_ in range(2):  # first: not started yet; then: stopped and started again on the same port
            caplog.clear()
            thread = start_later(1.0)
            begun = time.monotonic()
            with caplog.at_level(logging.INFO, "vision.client"):
                assert late.classify(BUS).model.name == "pets"
            elapsed = time.monotonic() - begun
            thread.join()
            waits = retry_waits(caplog)
            assert len(waits) >= 2, f"round {round_}: {waits}"
            assert [n for n, _ in waits] == list(range(2, len(waits) + 2))
            for n, wait in waits:  # each wait within [half, all] of its nominal exponential backoff
                nominal = min(policy.max_s, policy.initial_s * policy.multiplier ** (n - 2))
                assert nominal / 2 <= wait <= nominal
            assert elapsed >= sum(w for _, w in waits) and elapsed >= 1.0
            server, engine = started.pop()
            server.stop(0).wait()
            engine.close()


# -- transport security -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: Identity  # SAN DNS localhost + IP 127.0.0.1
    client: Identity  # CN batch-runner, a client certificate from the same CA


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("pki")
    mesh = Authority("vision client test CA")
    localhost = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return Certificates(
        mesh.write(directory / "ca.crt"),
        mesh.issue(directory, "vision-classifier", localhost, ExtendedKeyUsageOID.SERVER_AUTH),
        mesh.issue(directory, "batch-runner", [], ExtendedKeyUsageOID.CLIENT_AUTH),
    )


@pytest.fixture
def mtls_classifier(tmp_path: Path, certificates: Certificates) -> Iterator[str]:
    """classifier_svc with VISION_TLS_* naming its certificate and the CA: mutual TLS."""
    store = ModelStore(tmp_path / "models")
    publish_random_model(store, name="pets", arch="smallcnn", classes=PETS, seed=1)
    with pytest.MonkeyPatch.context() as env:
        server_identity = certificates.server
        set_tls_env(
            env, cert_file=server_identity.cert, key_file=server_identity.key, ca_file=certificates.ca
        )
        server, engine = start_classifier(store)
    yield f"127.0.0.1:{server.port}"
    server.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


def test_with_mutual_tls_the_client_presents_its_certificate_and_checks_the_services(
    mtls_classifier: str, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, mine = certificates.ca, certificates.client
    tls = TlsSettings(ca_file=ca, cert_file=mine.cert, key_file=mine.key)  # explicit paths
    with VisionClient(classifier=mtls_classifier, tls=tls) as explicit:
        assert {c.label for c in explicit.classify(BUS).classes} == set(PETS)
    no_certificate = fast_retries(max_attempts=2)
    with (
        VisionClient(
            classifier=mtls_classifier, tls=TlsSettings(ca_file=ca), settings=no_certificate
        ) as refused,
        pytest.raises(UnavailableError) as caught,
    ):
        refused.classify(BUS)
    assert caught.value.attempts == 2  # the handshake is refused every time
    set_tls_env(monkeypatch, cert_file=mine.cert, key_file=mine.key, ca_file=ca)  # VISION_TLS_*
    monkeypatch.setenv("VISION_CLIENT_CLASSIFIER_ADDR", mtls_classifier)
    monkeypatch.setenv("VISION_CLIENT_DEADLINE_S", "7.5")
    with VisionClient.from_env() as from_env:
        assert from_env.settings.deadline_s == 7.5
        assert from_env.classify(BUS, top_k=1).top.label in PETS


# -- asyncio, many images -----------------------------------------------------------------------------------


def test_the_async_client_serves_16_concurrent_calls_and_many_images_with_bounded_concurrency(
    client: VisionClient, mesh: Mesh
) -> None:
    expected = client.classify(ZIDANE)

    async def run() -> tuple[list[Classification], list[Any], Any]:
        async with AsyncVisionClient(classifier=mesh.classifier, detector=mesh.detector) as aio:
            many = await asyncio.gather(*(aio.classify(ZIDANE) for _ in range(16)))
            images: list[Image] = [BUS, ZIDANE, CORRUPT, BUS.read_bytes(), ZIDANE, BUS]
            outcomes = [o async for o in aio.classify_many(images, concurrency=3, top_k=2)]
            detection = await aio.detect(BUS, conf=0.3, max_det=20, timeout=60)
            return many, outcomes, detection

    many, outcomes, detection = asyncio.run(run())
    assert all([c.label for c in r.classes] == [c.label for c in expected.classes] for r in many)
    assert all(r.classes[0].score == pytest.approx(expected.classes[0].score, abs=1e-6) for r in many)
    failed = [o for o in outcomes if o.error is not None]
    assert len(outcomes) == 6 and [o.source for o in failed] == [CORRUPT]
    assert isinstance(failed[0].error, InvalidArgumentError)
    assert all(len(o.result.classes) == 2 for o in outcomes if o.error is None)
    assert detection.boxes == client.detect(BUS, conf=0.3, max_det=20, timeout=60).boxes


def test_the_sync_client_is_shared_by_threads_in_classify_many(client: VisionClient) -> None:
    images = [BUS, ZIDANE] * 4
    outcomes = list(client.classify_many(images, concurrency=4))
    assert sorted(str(o.source) for o in outcomes) == sorted(str(i) for i in images)
    by_image = {str(i): client.classify(i).top.label for i in (BUS, ZIDANE)}
    assert all(o.result.top.label == by_image[str(o.source)] for o in outcomes)


# -- training -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A real trainer_svc whose WatchJob streams end every 0.5 s (its maximum watch time), so that
    watch_job must reopen and resume them while a job runs."""
    settings = trainer_settings(tmp_path_factory.mktemp("trainer"), watch_max_s=0.5)
    with running_trainer(settings) as (server, _, stub):
        yield f"127.0.0.1:{server.port}", stub


def test_train_uploads_a_folder_and_watch_job_follows_it_to_the_end_while_async_cancels_another(
    trainer: tuple[str, Any], tmp_path: Path
) -> None:
    target, stub = trainer
    folder = write_image_folder(tmp_path / "digits", size=32, per_class=8)
    (folder / "3" / "notes.txt").write_text("not an image: left out")
    with VisionClient(trainer=target) as client:
        job = client.train(
            folder, model_name="digits", architecture="smallcnn", epochs=2, batch_size=16,
            learning_rate=2e-3, img_size=32, horizontal_flip=False, patience=20,
        )  # fmt: skip
        assert job.class_counts == {str(d): 8 for d in range(10)}
        assert job.state in (JobState.QUEUED, JobState.RUNNING) and job.model_name == "digits"
        cancelled, async_events = asyncio.run(async_train_and_cancel(target))  # queued behind the first
        events = list(client.watch_job(job.id, timeout=120))
        final = client.get_job(job.id)
        tail = list(client.watch_job(job.id, after_seq=events[-3].seq))
        assert {j.id for j in client.list_jobs().jobs} == {job.id, cancelled.id}
    replayed = [JobEvent.from_proto(e) for e in history(stub, job.id)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # resumed without gaps or repeats
    assert events == replayed
    assert events[-1].ends_job and events[-1].state is JobState.SUCCEEDED
    assert {EventKind.STATE, EventKind.EPOCH} <= {e.kind for e in events}
    assert tail == events[-2:]
    assert final.state is JobState.SUCCEEDED and final.result is not None
    assert final.result.model.name == "digits" and len(final.result.confusion_matrix) == 10
    assert async_events[-1].ends_job and async_events[-1].state is JobState.CANCELLED


async def async_train_and_cancel(target: str) -> tuple[Any, list[JobEvent]]:
    images = [(label, data) for label, data in digit_images(32, per_class=6) if label in ("0", "1")]
    async with AsyncVisionClient(trainer=target) as aio:
        job = await aio.train(images, model_name="pair", architecture="smallcnn", epochs=500, img_size=32)
        cancelled = await aio.cancel_job(job.id)
        return cancelled, [e async for e in aio.watch_job(job.id, timeout=60)]


def test_an_upload_the_trainer_refuses_or_the_client_cannot_read_is_not_sent_again_and_creates_no_job(
    trainer: tuple[str, Any], tmp_path: Path
) -> None:
    pairs = [(label, data) for label, data in digit_images(32, per_class=6) if label in ("0", "1", "7")]
    with VisionClient(trainer=trainer[0]) as client:
        before = client.list_jobs().jobs
        with pytest.raises(InvalidArgumentError) as refused:
            client.train(pairs, model_name="digits", class_names=["0", "1"], architecture="smallcnn")
        assert "7" in refused.value.details and refused.value.attempts == 1
        missing = [*pairs[:6], ("1", tmp_path / "gone.png")]
        with pytest.raises(FileNotFoundError, match=r"gone\.png"):
            client.train(missing, model_name="digits", architecture="smallcnn")
        assert client.list_jobs().jobs == before


# -- settings and policy (no server) ------------------------------------------------------------------------


@pytest.mark.fast
def test_settings_come_from_vision_client_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_CLIENT_DETECTOR_ADDR", "dns:///detector-headless:50053")
    monkeypatch.setenv("VISION_CLIENT_MAX_ATTEMPTS", "2")
    settings = ClientSettings()
    assert settings.address("detector") == "dns:///detector-headless:50053" and settings.max_attempts == 2
    assert settings.address("trainer") == ""
    monkeypatch.setenv("VISION_CLIENT_BACKOFF_MAX_S", "0.01")
    with pytest.raises(ValueError, match="VISION_CLIENT_BACKOFF_MAX_S"):
        ClientSettings()


@pytest.mark.fast
def test_backoff_grows_exponentially_with_jitter_up_to_its_maximum() -> None:
    policy = RetryPolicy(max_attempts=10, initial_s=0.1, max_s=1.0, multiplier=2.0, retry_overloaded=True)
    for failures, nominal in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        waits = [policy.delay_s(failures) for _ in range(200)]
        assert nominal / 2 <= min(waits) and max(waits) <= nominal
        assert max(waits) - min(waits) > nominal / 4  # jittered, not one fixed value


@pytest.mark.fast
def test_a_train_val_folder_or_an_unknown_option_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "bus.jpg").write_bytes(BUS.read_bytes())
    with VisionClient(trainer=f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(InvalidArgumentError, match="the trainer splits it") as split_refused:
            client.train(tmp_path, model_name="pets")
        with pytest.raises(InvalidArgumentError, match="unknown architecture 'vgg'"):
            client.train(tmp_path / "train", model_name="pets", architecture="vgg")
        with pytest.raises(InvalidArgumentError, match="no model catalog on 'trainer'"):
            client.models("trainer")
    assert split_refused.value.attempts == 0

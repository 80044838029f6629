"""Training through the real gateway: upload labelled photos for N classes, watch the job live over SSE,
read per-class metrics and the confusion matrix, and classify with the new model seconds later through
classifier_svc, nothing restarted. Every bad upload is a 4xx that says what was wrong and leaves nothing
behind.

The dataset is scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes) upscaled to 32x32 PNG; a
from-scratch SmallCNN must reach at least 0.8 validation accuracy (it reaches about 0.9 with seed 0)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import live_gateway, start_classifier
from tests.support.digits import CLASS_NAMES, digit_images
from tests.support.trainer import running_trainer, trainer_settings
from tests.test_bad_input import assert_error
from trainer_svc.config import TrainerSettings
from vision.models.store import ModelStore

MIN_VAL_ACCURACY = 0.8
DIGITS_FORM = {
    "model_name": "digits", "arch": "smallcnn", "pretrained": "false", "epochs": "8", "batch_size": "16",
    "lr": "0.002", "img_size": "32", "hflip": "false", "seed": "0", "patience": "20",
}  # fmt: skip
Part = tuple[str, str | None, bytes]  # (field name, file name or None for a text field, content)


def multipart(parts: list[Part]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with the parts in exactly this order, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        kind = "Content-Type: image/png\r\n" if filename is not None else ""
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + content + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def form(labels: list[str], files: dict[int, list[tuple[str, bytes]]], **fields: str) -> list[Part]:
    """Fields first (label1..N and options), then files1..N: the order every HTTP client library uses."""
    parts: list[Part] = [(f"label{i}", None, label.encode()) for i, label in enumerate(labels, start=1)]
    parts += [(name, None, value.encode()) for name, value in fields.items()]
    for number, images in files.items():
        parts += [(f"files{number}", filename, data) for filename, data in images]
    return parts


def images(count: int, digit: int = 0) -> list[tuple[str, bytes]]:
    pngs = [png for name, png in digit_images(32, per_class=count) if name == str(digit)]
    return [(f"digit {digit} #{i}.png", png) for i, png in enumerate(pngs)]


class Stack:
    def __init__(self, api: httpx.Client, settings: TrainerSettings, trainer_addr: str) -> None:
        self.api, self.settings, self.trainer_addr = api, settings, trainer_addr

    def post(self, parts: list[Part]) -> httpx.Response:
        body, headers = multipart(parts)
        return self.api.post("/train", content=body, headers=headers)

    def leftovers(self) -> list[Path]:
        """Files the trainer keeps of uploads (empty once rejected uploads are cleaned up)."""
        data = self.settings.data_dir
        return [p for p in (*(data / "uploads").rglob("*"), *(data / "jobs").rglob("*"))]

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 10  # the trainer drops a cancelled stream's files as soon as it notices
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.leftovers() == []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """trainer_svc and classifier_svc on one model store, the gateway in front of both."""
    root = tmp_path_factory.mktemp("train")
    settings = trainer_settings(root)
    store = ModelStore(settings.model_dir)
    classifier, engine = start_classifier(store)
    with running_trainer(settings) as (trainer, _, _):
        addresses = {
            "classifier_addr": f"127.0.0.1:{classifier.port}",
            "trainer_addr": f"127.0.0.1:{trainer.port}",
        }
        with (
            live_gateway(**addresses, timeout_s=30) as live,
            httpx.Client(base_url=live.url, timeout=120) as api,
        ):
            yield Stack(api, settings, addresses["trainer_addr"])
    classifier.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


def read_sse(api: httpx.Client, url: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every Server-Sent Event until the server ends the stream."""
    events, name = [], ""
    with api.stream("GET", url, timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
    return events


@dataclass
class TrainedDigits:
    """One POST /train of the whole digits set, followed live to its end."""

    by_class: dict[int, list[tuple[str, bytes]]]
    created: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    job: dict[str, Any]


@pytest.fixture(scope="module")
def trained(stack: Stack) -> TrainedDigits:
    all_digits = list(digit_images(32))
    by_class = {
        d: [(f"img{i}.png", png) for i, (name, png) in enumerate(all_digits) if name == str(d)]
        for d in range(10)
    }
    reply = stack.post(form(CLASS_NAMES, {d + 1: by_class[d] for d in range(10)}, **DIGITS_FORM))
    assert reply.status_code == 202, reply.text
    created = reply.json()
    events = read_sse(stack.api, created["events_url"])
    job = stack.api.get(created["status_url"]).json()
    return TrainedDigits(by_class, created, events, job)


def test_train_answers_202_queued_with_links_to_the_job(trained: TrainedDigits) -> None:
    created = trained.created
    assert created["success"] is True and created["status"] == "queued"
    assert created["status_url"] == f"/jobs/{created['job_id']}"
    assert created["events_url"] == f"/jobs/{created['job_id']}/events"


def test_events_start_with_the_state_report_progress_and_every_epoch_and_end_succeeded(
    trained: TrainedDigits,
) -> None:
    kinds = [name for name, _ in trained.events]
    assert kinds[0] == "state" and trained.events[-1][1]["status"] == "succeeded"
    assert "progress" in kinds
    epochs = [data for name, data in trained.events if name == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(1, int(DIGITS_FORM["epochs"]) + 1))
    for epoch in epochs:
        assert {
            "train_loss",
            "val_accuracy",
            "learning_rate",
            "images_per_second",
            "eta_seconds",
        } <= epoch.keys()


def test_a_finished_job_names_its_model_and_counts_the_uploaded_images(trained: TrainedDigits) -> None:
    job = trained.job
    assert job["status"] == "succeeded" and job["model"] == {"name": "digits", "version": "1"}
    assert job["class_counts"] == {str(d): len(trained.by_class[d]) for d in range(10)}


def test_validation_metrics_reach_the_bar_per_class_with_a_confusion_matrix_over_every_image(
    trained: TrainedDigits,
) -> None:
    metrics = trained.job["metrics"]
    assert metrics["accuracy"] >= MIN_VAL_ACCURACY, metrics
    assert [c["class"] for c in metrics["per_class"]] == CLASS_NAMES
    matrix = metrics["confusion_matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert sum(map(sum, matrix)) == sum(c["support"] for c in metrics["per_class"])


def test_the_report_and_its_images_are_served_for_the_new_version(
    stack: Stack, trained: TrainedDigits
) -> None:
    job = trained.job
    for url in (job["confusion_matrix_url"], job["training_curves_url"]):
        image = stack.api.get(url)
        assert image.headers["content-type"] == "image/png" and image.content.startswith(b"\x89PNG")
    report = stack.api.get(job["report_url"]).json()
    assert report["model"] == {"name": "digits", "version": "1"} and report["job_id"] == job["job_id"]
    assert report["metrics"]["accuracy"] == job["metrics"]["accuracy"]


def test_the_classifier_serves_the_new_model_at_once_without_a_restart(
    stack: Stack, trained: TrainedDigits
) -> None:
    sample = [(str(d), png) for d, images in trained.by_class.items() for _, png in images[::60]]
    right = 0
    for label, png in sample:
        answer = stack.api.post("/predict", files={"file": ("d.png", png)}, data={"model": "digits"}).json()
        assert answer["model"] == {"name": "digits", "version": "1"}
        right += answer["prediction"]["class"] == label
    assert right / len(sample) >= MIN_VAL_ACCURACY


def test_models_lists_the_new_version_loaded_with_its_validation_accuracy(
    stack: Stack, trained: TrainedDigits
) -> None:
    listed = {m["name"]: m for m in stack.api.get("/models").json()["models"]}
    assert listed["digits"]["metrics"]["val_accuracy"] == pytest.approx(trained.job["metrics"]["accuracy"])
    assert listed["digits"]["loaded"] is True and listed["digits"]["load_error"] == ""


def test_jobs_lists_the_newest_job_first(stack: Stack, trained: TrainedDigits) -> None:
    assert stack.api.get("/jobs").json()["jobs"][0]["job_id"] == trained.created["job_id"]


TWO = ["cat", "dog"]
FIVE_EACH = {1: images(5, 0), 2: images(5, 1)}
SMALL = {"arch": "smallcnn"}


def bad(labels: list[str], files: dict[int, list[tuple[str, bytes]]], fragment: str, **fields: str) -> Any:
    """A 400 case: a small-CNN upload (no pretrained weights needed) with one thing wrong."""
    return pytest.param(
        form(labels, files, **{**SMALL, **fields}), 400, "invalid_argument", fragment, id=fragment
    )


NOT_AN_IMAGE = [*images(4), ("notes.txt", b"not an image at all")]
BAD_UPLOADS = [
    bad(["cat"], {1: images(5)}, "at least 2 classes, got 1"),
    bad(TWO, {1: images(5), 2: images(2, 1)}, "'dog' has 2"),
    bad(["cat", ""], FIVE_EACH, "is empty"),
    bad(["cat", "Cat"], FIVE_EACH, "are the same"),
    bad(["cat", "dog/../x"], FIVE_EACH, "path separator"),
    bad(["cat", ".."], FIVE_EACH, "is '.' or '..'"),
    bad(["cat", "d\x00g"], FIVE_EACH, "NUL or another control character"),
    bad(["cat", "d\x1bg"], FIVE_EACH, "another control character"),
    bad(TWO, {1: [("../../evil.png", images(1)[0][1])]}, "unacceptable name"),
    bad(TWO, {1: NOT_AN_IMAGE, 2: images(5, 1)}, "'notes.txt' (class 'cat') is not a usable image"),
    bad(TWO, {1: [("empty.png", b"")]}, "'empty.png' (class 'cat') is not a usable image"),
    bad(TWO, FIVE_EACH, "epochs must be positive", epochs="0"),
    bad(TWO, FIVE_EACH, "epochs must be between 1 and 1000", epochs="100000"),
    bad(TWO, FIVE_EACH, "batch_size must be between 1 and 1024", batch_size="5000"),
    bad(TWO, FIVE_EACH, "lr must be a number", lr="fast"),
    bad(TWO, FIVE_EACH, "lr must be positive", lr="0"),
    bad(TWO, FIVE_EACH, "lr must be in (0, 10]", lr="-1"),
    bad(TWO, FIVE_EACH, "img_size must be between 32 and 1024", img_size="8"),
    bad(TWO, FIVE_EACH, "val_split must be in (0, 0.5]", val_split="0.9"),
    bad(TWO, FIVE_EACH, "accepted: resnet18, resnet50, smallcnn", arch="vgg16"),
    bad(TWO, FIVE_EACH, "unknown optimizer 'rmsprop'; accepted: adam, sgd", optimizer="rmsprop"),
    bad(TWO, FIVE_EACH, "unknown form field 'epoch'", epoch="3"),
    bad(TWO, FIVE_EACH, "invalid model name", model_name="../x"),
    bad(TWO, {1: images(5), 3: images(5, 1)}, "files3 has no label3"),
    pytest.param(
        [*form(TWO, FIVE_EACH, **SMALL), ("epochs", None, b"3")],
        400,
        "invalid_argument",
        "came after the first file",
        id="field after the files",
    ),
    pytest.param(  # the defaults ask for ImageNet weights, which cannot be fetched here
        form(TWO, FIVE_EACH),
        409,
        "failed_precondition",
        "set pretrained=false to train from scratch",
        id="offline",
    ),
]


@pytest.mark.parametrize(("parts", "status", "code", "fragment"), BAD_UPLOADS)
def test_bad_uploads_are_refused_with_a_clear_4xx_and_leave_nothing_behind(
    stack: Stack, parts: list[Part], status: int, code: str, fragment: str
) -> None:
    jobs_before = len(stack.api.get("/jobs").json()["jobs"])
    assert_error(stack.post(parts), status, code, fragment)
    assert len(stack.api.get("/jobs").json()["jobs"]) == jobs_before
    stack.assert_nothing_left()


@pytest.mark.parametrize(
    ("limits", "files", "fragment"),
    [
        ({"train_max_files": 6}, {1: images(5), 2: images(5, 1)}, "more than 6 files"),
        ({"train_max_bytes": 4000}, {1: images(5), 2: images(5, 1)}, "more than 4000 bytes"),
    ],
)
def test_uploads_over_the_train_limits_get_413_as_they_stream(
    stack: Stack, limits: dict[str, int], files: dict[int, list[tuple[str, bytes]]], fragment: str
) -> None:
    with live_gateway(classifier_addr="127.0.0.1:1", trainer_addr=stack.trainer_addr, **limits) as live:
        body, headers = multipart(form(TWO, files, arch="smallcnn"))
        response = httpx.post(f"{live.url}/train", content=body, headers=headers, timeout=60)
    assert_error(response, 413, "payload_too_large", fragment)
    stack.assert_nothing_left()


def test_train_has_its_own_body_limit_far_above_the_image_limit(stack: Stack, bus_jpeg: bytes) -> None:
    photos = [(f"bus {i}.jpg", bus_jpeg) for i in range(5)]
    body, headers = multipart(form(TWO, {1: photos, 2: images(1, 1)}, arch="smallcnn"))
    settings = {"max_image_bytes": 200_000}
    assert len(body) > 200_000 + 64 * 1024  # over what /predict accepts
    with live_gateway(classifier_addr="127.0.0.1:1", trainer_addr=stack.trainer_addr, **settings) as live:
        train = httpx.post(f"{live.url}/train", content=body, headers=headers, timeout=60)
        predict = httpx.post(f"{live.url}/predict", content=body, headers=headers, timeout=60)
    assert_error(train, 400, "invalid_argument", "'dog' has 1")  # past the body limit, refused by the trainer
    assert_error(predict, 413, "payload_too_large", "larger than the limit")


@pytest.mark.parametrize(
    ("method", "url", "fragment"),
    [
        ("GET", "/jobs/nope", "no job 'nope'"),
        ("POST", "/jobs/nope/cancel", "no job 'nope'"),
        ("GET", "/jobs/nope/events", "no job 'nope'"),
        ("GET", "/models/nope/versions/1/confusion_matrix.png", "model"),
        ("GET", "/models/nope/versions/latest/report", "model"),
        ("GET", "/models/nope/versions/1/weights.png", "confusion_matrix.png or training_curves.png"),
    ],
)
def test_unknown_jobs_models_and_images_are_404_json(
    stack: Stack, method: str, url: str, fragment: str
) -> None:
    assert_error(stack.api.request(method, url), 404, "not_found", fragment)


def test_a_request_that_is_not_multipart_is_400(stack: Stack) -> None:
    response = stack.api.post("/train", json={"label1": "cat"})
    assert_error(response, 400, "invalid_request", "multipart/form-data")


def test_train_without_a_trainer_deployed_is_503() -> None:
    with live_gateway(classifier_addr="127.0.0.1:1") as live:
        body, headers = multipart(form(TWO, FIVE_EACH))
        response = httpx.post(f"{live.url}/train", content=body, headers=headers, timeout=30)
    assert_error(response, 503, "not_deployed", "VISION_GATEWAY_TRAINER_ADDR")

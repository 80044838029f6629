"""The Food-101 pipeline on a tiny copy in the official layout (meta/classes.txt, meta/train.txt,
meta/test.txt, images/<class>/<id>.jpg), placed in a kagglehub cache directory the way kagglehub leaves a
finished download.

The only stand-in is at the internet boundary: KAGGLE_API_ENVIRONMENT=LOCALHOST points kagglehub's API
client at http://localhost, where nothing listens, so resolving the dataset's current version fails at
once, as it does offline. Everything else is the real kagglehub reading its real cache."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.trainer import digits_spec, running_trainer, trainer_settings, wait_for
from trainer_svc.training.food101 import load_food101
from vision.errors import InvalidArgument, NotReady
from vision.models.store import ModelStore
from vision.v1 import trainer_pb2

HANDLE = "dansbecker/food-101"
CLASSES = ["apple_pie", "baklava", "ramen"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 2


@pytest.fixture(autouse=True)
def offline_kaggle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def photo(index: int) -> bytes:
    """A different 64x64 crop of scikit-image's photos for every index, as JPEG."""
    from skimage import data

    source = Image.fromarray([data.astronaut(), data.coffee(), data.chelsea()][index % 3])
    left = (index * 37) % (source.width - 64)
    buffer = io.BytesIO()
    source.crop((left, 40, left + 64, 104)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def cached_food101(cache: Path, version: int = 1) -> Path:
    """A tiny Food-101 in the kagglehub cache, marked complete (kagglehub's own cache helpers)."""
    from kagglehub.cache import Cache
    from kagglehub.config import CACHE_FOLDER_ENV_VAR_NAME
    from kagglehub.handle import parse_dataset_handle

    handle = parse_dataset_handle(f"{HANDLE}/versions/{version}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(CACHE_FOLDER_ENV_VAR_NAME, str(cache))
        root = Path(Cache().get_path(handle)) / "food-101"  # Kaggle copies nest the dataset one level down
        lists: dict[str, list[str]] = {"train": [], "test": []}
        n = 0
        for name in CLASSES:
            (root / "images" / name).mkdir(parents=True)
            for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
                for _ in range(count):
                    n += 1
                    (root / "images" / name / f"{1000 + n}.jpg").write_bytes(photo(n))
                    lists[split].append(f"{name}/{1000 + n}")
        (root / "meta").mkdir()
        (root / "meta" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        for split, entries in lists.items():
            (root / "meta" / f"{split}.txt").write_text("\n".join(entries) + "\n")
        Cache().mark_as_complete(handle)
    return root


def test_food101_is_read_from_the_kagglehub_cache_with_the_official_split(tmp_path: Path) -> None:
    root = cached_food101(tmp_path / "kagglehub")
    split = load_food101(HANDLE, tmp_path / "kagglehub")
    assert split.class_names == CLASSES
    assert (len(split.train), len(split.val)) == (3 * TRAIN_PER_CLASS, 3 * TEST_PER_CLASS)
    train_lines = (root / "meta" / "train.txt").read_text().split()
    assert [
        Path(s.path).relative_to(root / "images").with_suffix("").as_posix() for s in split.train
    ] == train_lines
    assert all(Path(s.path).is_file() and CLASSES[s.label] == Path(s.path).parent.name for s in split.val)


def test_max_images_per_class_caps_both_lists(tmp_path: Path) -> None:
    cached_food101(tmp_path / "kagglehub")
    split = load_food101(HANDLE, tmp_path / "kagglehub", max_images_per_class=1)
    assert (len(split.train), len(split.val)) == (3, 3)


def test_food101_neither_cached_nor_reachable_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(NotReady, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        load_food101(HANDLE, tmp_path / "empty-cache")


def test_a_list_entry_that_would_leave_the_images_folder_is_refused(tmp_path: Path) -> None:
    root = cached_food101(tmp_path / "kagglehub")
    (root / "meta" / "train.txt").write_text("apple_pie/../../../../etc/passwd\n")
    with pytest.raises(InvalidArgument, match="is not 'class/image_id'"):
        load_food101(HANDLE, tmp_path / "kagglehub")


def test_a_food101_job_trains_on_the_cached_copy_and_publishes_its_classes(tmp_path: Path) -> None:
    cached_food101(tmp_path / "kagglehub")
    settings = trainer_settings(tmp_path, kagglehub_cache=tmp_path / "kagglehub", min_images_per_class=2)
    spec = digits_spec(model_name="food101", epochs=1, class_names=[], food101=trainer_pb2.Food101Dataset())
    with running_trainer(settings) as (_, _, stub):
        job = stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=spec)]), timeout=30)
        done = wait_for(stub, job.id)
    assert done.state == trainer_pb2.JOB_STATE_SUCCEEDED, done.error
    assert dict(done.class_counts) == dict.fromkeys(CLASSES, TRAIN_PER_CLASS + TEST_PER_CLASS)
    assert ModelStore(settings.model_dir).get("food101").metadata.class_names == CLASSES


def test_vision_food101_trains_on_the_cached_copy_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vision.cli import main

    cached_food101(tmp_path / "kagglehub")
    models = tmp_path / "models"
    options = ["--arch", "smallcnn", "--epochs", "1", "--img-size", "32", "--workers", "0"]
    status = main(
        ["food101", "--cache-dir", str(tmp_path / "kagglehub"), "--model-dir", str(models), *options]
    )
    assert status == 0
    assert "apple_pie" in capsys.readouterr().out
    assert ModelStore(models).get("food101").metadata.class_names == CLASSES


def test_post_train_with_dataset_food101_trains_through_the_gateway_and_the_classifier_serves_it(
    tmp_path: Path,
) -> None:
    from tests.conftest import live_gateway, start_classifier
    from tests.test_bad_input import assert_error
    from tests.test_gateway_train import form, images, multipart

    cached_food101(tmp_path / "kagglehub")
    settings = trainer_settings(tmp_path, kagglehub_cache=tmp_path / "kagglehub", min_images_per_class=2)
    classifier, engine = start_classifier(ModelStore(settings.model_dir))
    options = {"dataset": "food101", "max_images_per_class": "2", "model_name": "food", "arch": "smallcnn",
               "epochs": "1", "img_size": "32", "batch_size": "4"}  # fmt: skip
    try:
        with running_trainer(settings) as (trainer, _, stub):
            addresses = {
                "trainer_addr": f"127.0.0.1:{trainer.port}",
                "classifier_addr": f"127.0.0.1:{classifier.port}",
            }
            with live_gateway(**addresses) as live, httpx.Client(base_url=live.url, timeout=60) as api:
                body, headers = multipart(form([], {}, **options))
                reply = api.post("/train", content=body, headers=headers)
                assert reply.status_code == 202, reply.text
                done = wait_for(stub, reply.json()["job_id"])
                assert done.state == trainer_pb2.JOB_STATE_SUCCEEDED, done.error
                # 2 of each class's train list and 2 of its test list: the cap applies to both splits.
                assert dict(done.class_counts) == dict.fromkeys(CLASSES, 4)
                job = api.get(reply.json()["status_url"]).json()
                assert job["status"] == "succeeded" and job["dataset"] == "food101"
                model = wait_for_model(api, "food")
                assert model["class_names"] == CLASSES
                refused = {
                    "labels": (form(["a", "b"], {}, **options), "send no label fields"),
                    "files": (
                        [("dataset", None, b"food101"), ("files1", "x.png", images(1)[0][1])],
                        "send no files",
                    ),
                    "cap on an upload": (
                        form(["a", "b"], {1: images(2), 2: images(2, 1)}, max_images_per_class="3"),
                        "dataset=food101 only",
                    ),
                    "unknown dataset": (form([], {}, dataset="imagenet"), "accepted: upload, food101"),
                }
                for what, (parts, fragment) in refused.items():
                    body, headers = multipart(parts)
                    response = api.post("/train", content=body, headers=headers)
                    assert_error(response, 400, "invalid_argument", fragment), what
    finally:
        classifier.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


def wait_for_model(api: httpx.Client, name: str, timeout: float = 30.0) -> dict[str, object]:
    """The gateway's /models entry of ``name`` once the classifier lists it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = {m["name"]: m for m in api.get("/models").json()["models"]}
        if name in listed:
            return listed[name]
        time.sleep(0.2)
    raise AssertionError(f"{name} never appeared in GET /models")

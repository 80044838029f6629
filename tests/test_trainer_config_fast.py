"""The trainer's request handling without any server or training: a JobSpec becomes the TrainConfig it
means (defaults, the pretrained rule, validation), jobs and events become the messages the contract
describes, and the job database keeps them as plain JSON. Each test runs in milliseconds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.support.trainer import trainer_settings
from trainer_svc import convert
from trainer_svc.jobs.database import DB_FILE, EventKind, JobDB, JobEvent, JobResult, JobState
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.evaluation import evaluate_predictions
from vision.choices import ARCHITECTURES
from vision.errors import InvalidArgument
from vision.v1 import trainer_pb2

pytestmark = pytest.mark.fast


def upload_spec(**fields: object) -> trainer_pb2.JobSpec:
    base: dict[str, object] = {
        "model_name": "pets",
        "class_names": ["cat", "dog"],
        "upload": trainer_pb2.UploadedDataset(),
    }
    return trainer_pb2.JobSpec(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("architecture", "pretrained"), [("resnet18", True), ("resnet50", True), ("smallcnn", False)]
)
def test_pretrained_and_frozen_default_to_whether_the_architecture_has_imagenet_weights(
    architecture: str, pretrained: bool
) -> None:
    config = TrainConfig.create("pets", architecture=architecture, epochs=None)
    assert (config.pretrained, config.freeze_backbone) == (pretrained, pretrained)
    assert config.epochs == TrainConfig.epochs  # None: not given
    assert TrainConfig.create("pets", architecture=architecture, pretrained=False).freeze_backbone is False


def test_an_empty_spec_means_the_trainconfig_defaults_and_the_services_patience(tmp_path: Path) -> None:
    settings = trainer_settings(tmp_path, default_patience=7)
    config = convert.job_spec_to_config(upload_spec(pretrained=True), settings)
    defaults = TrainConfig("pets")
    assert config.architecture == ARCHITECTURES.default
    assert (config.epochs, config.batch_size, config.lr, config.img_size, config.val_fraction) == (
        defaults.epochs,
        defaults.batch_size,
        defaults.lr,
        defaults.img_size,
        defaults.val_fraction,
    )
    assert config.patience == 7
    assert (config.pretrained, config.freeze_backbone, config.horizontal_flip) == (True, True, True)
    assert (config.dataset, config.class_names) == ("upload", ["cat", "dog"])


def test_spec_fields_map_onto_the_config(tmp_path: Path) -> None:
    spec = upload_spec(
        architecture=trainer_pb2.ARCHITECTURE_SMALLCNN,
        mode=trainer_pb2.TRAIN_MODE_FULL,
        optimizer=trainer_pb2.OPTIMIZER_SGD,
        epochs=3,
        learning_rate=0.01,
        horizontal_flip=False,
        patience=2,
    )
    config = convert.job_spec_to_config(spec, trainer_settings(tmp_path))
    assert (config.architecture, config.optimizer, config.epochs, config.lr) == ("smallcnn", "sgd", 3, 0.01)
    assert (config.pretrained, config.freeze_backbone, config.horizontal_flip, config.patience) == (
        False,
        False,
        False,
        2,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"architecture": 99}, "accepted: resnet18, resnet50, smallcnn"),
        ({"optimizer": 42}, "accepted: adam, sgd"),
        ({"mode": 9}, "unknown mode 9; accepted: frozen, full"),
        ({"epochs": 5000}, "epochs must be between 1 and 1000"),
        ({"class_names": ["cat"]}, "at least 2 classes, got 1"),
        ({"architecture": trainer_pb2.ARCHITECTURE_SMALLCNN, "pretrained": True}, "smallcnn has no ImageNet"),
        ({"mode": trainer_pb2.TRAIN_MODE_FROZEN, "architecture": trainer_pb2.ARCHITECTURE_SMALLCNN},
         "a frozen backbone needs pretrained weights"),
    ],
)  # fmt: skip
def test_a_bad_spec_is_refused_once_naming_the_field(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert.job_spec_to_config(upload_spec(**fields), trainer_settings(tmp_path))
    assert message in caught.value.message


def test_a_spec_without_a_dataset_or_with_a_folder_outside_the_root_is_refused(tmp_path: Path) -> None:
    settings = trainer_settings(tmp_path, datasets_dir=tmp_path / "datasets")
    with pytest.raises(InvalidArgument, match="names no dataset"):
        convert.job_spec_to_config(trainer_pb2.JobSpec(model_name="pets"), settings)
    outside = trainer_pb2.JobSpec(model_name="pets", image_folder=trainer_pb2.ImageFolderDataset(path="../x"))
    with pytest.raises(InvalidArgument, match="must be inside the trainer's datasets directory"):
        convert.job_spec_to_config(outside, settings)
    inside = trainer_pb2.JobSpec(model_name="pets", image_folder=trainer_pb2.ImageFolderDataset(path="a/b"))
    config = convert.job_spec_to_config(inside, settings)
    assert config.dataset_path == str((tmp_path / "datasets" / "a" / "b").resolve())
    assert config.class_names == []


def test_a_spec_survives_its_json_form_unchanged() -> None:
    spec = upload_spec(horizontal_flip=False, epochs=4, learning_rate=0.5, seed=3)
    assert convert.spec_from_json(json.loads(json.dumps(convert.spec_to_json(spec)))) == spec
    food = trainer_pb2.JobSpec(model_name="f", food101=trainer_pb2.Food101Dataset(max_images_per_class=2))
    back = convert.spec_from_json(convert.spec_to_json(food))
    assert back.WhichOneof("dataset") == "food101" and not back.HasField("horizontal_flip")


def test_every_state_and_event_kind_has_its_own_proto_value_and_publishing_shows_as_running() -> None:
    assert sorted(convert.JOB_STATES) == sorted(JobState)
    # PUBLISHING is the service's own guard against cancels (409); clients see the job still running.
    assert convert.JOB_STATES[JobState.PUBLISHING] == trainer_pb2.JOB_STATE_RUNNING
    shown = {state: value for state, value in convert.JOB_STATES.items() if state != JobState.PUBLISHING}
    assert len(set(shown.values())) == len(shown)
    assert sorted(convert.EVENT_KINDS) == sorted(EventKind)
    assert trainer_pb2.JOB_STATE_UNSPECIFIED not in convert.JOB_STATES.values()


def test_a_stored_job_becomes_the_job_message_with_its_result_progress_and_events(tmp_path: Path) -> None:
    db = JobDB(tmp_path / DB_FILE)
    spec = upload_spec(epochs=2)
    config = TrainConfig.create("pets", architecture="smallcnn", epochs=2, class_names=["cat", "dog"])
    db.insert("j1", convert.spec_to_json(spec), config, {"cat": 5, "dog": 6})
    assert db.transition("j1", (JobState.QUEUED,), JobState.RUNNING, message="running on cpu")
    assert not db.transition("j1", (JobState.QUEUED,), JobState.RUNNING)  # moves once
    db.add_event("j1", JobEvent("epoch", epoch=1, total_epochs=2, val_accuracy=0.75))
    evaluation = evaluate_predictions([0, 1, 1], [0, 1, 0], ["cat", "dog"], loss=0.4)
    result = JobResult("pets", "3", evaluation)
    assert db.transition("j1", (JobState.RUNNING,), JobState.SUCCEEDED, result=result, message="published")
    row = db.get("j1")
    assert row is not None and row.config == config

    job = convert.job_proto(row)
    assert (job.state, job.spec, job.epoch, job.total_epochs) == (trainer_pb2.JOB_STATE_SUCCEEDED, spec, 1, 2)
    assert dict(job.class_counts) == {"cat": 5, "dog": 6}
    assert (
        job.finished_at.ToNanoseconds()
        >= job.started_at.ToNanoseconds()
        >= job.created_at.ToNanoseconds()
        > 0
    )
    assert (job.result.model.name, job.result.model.version) == ("pets", "3")
    assert job.result.accuracy == pytest.approx(2 / 3)
    assert list(job.result.confusion_matrix) == [1, 0, 1, 1]
    assert [c.class_name for c in job.result.per_class] == ["cat", "dog"]
    assert (job.progress.kind, job.progress.epoch, job.progress.val_accuracy) == (
        trainer_pb2.JobEvent.KIND_EPOCH,
        1,
        0.75,
    )
    events = [convert.event_proto("j1", event) for _, event in db.events_after("j1", 0)]
    assert [(e.kind, e.state, e.message) for e in events] == [
        (trainer_pb2.JobEvent.KIND_STATE, trainer_pb2.JOB_STATE_QUEUED, "queued"),
        (trainer_pb2.JobEvent.KIND_STATE, trainer_pb2.JOB_STATE_RUNNING, "running on cpu"),
        (trainer_pb2.JobEvent.KIND_EPOCH, trainer_pb2.JOB_STATE_RUNNING, ""),
        (trainer_pb2.JobEvent.KIND_STATE, trainer_pb2.JOB_STATE_SUCCEEDED, "published"),
    ]
    assert all(e.job_id == "j1" and e.time.seconds > 0 and e.total_epochs == 2 for e in events)
    db.close()


def test_the_job_database_holds_plain_json_not_protobuf(tmp_path: Path) -> None:
    db = JobDB(tmp_path / DB_FILE)
    config = TrainConfig.create("pets", architecture="smallcnn", class_names=["cat", "dog"])
    db.insert("j1", convert.spec_to_json(upload_spec()), config, {})
    db.add_event("j1", JobEvent("progress", epoch=1, step=3, train_loss=0.5))
    db.close()
    with sqlite3.connect(tmp_path / DB_FILE) as raw:
        state, spec, stored_config, progress = raw.execute(
            "SELECT state, spec, config, progress FROM jobs"
        ).fetchone()
        kinds = [row[0] for row in raw.execute("SELECT kind FROM events ORDER BY seq")]
        details = raw.execute("SELECT details FROM events WHERE kind = 'progress'").fetchone()[0]
    assert state == "queued" and kinds == ["state", "progress"]
    assert json.loads(spec)["model_name"] == "pets"
    assert TrainConfig.from_dict(json.loads(stored_config)) == config
    assert json.loads(progress)["step"] == 3
    assert json.loads(details) == {"epoch": 1, "step": 3, "train_loss": 0.5}


def test_food101_is_refused_where_jobs_are_limited_to_fewer_classes() -> None:
    from trainer_svc.training.config import FOOD101_CLASSES

    config = TrainConfig(
        model_name="food", dataset="food101", architecture="smallcnn", pretrained=False, freeze_backbone=False
    )
    assert config.validate(max_classes=FOOD101_CLASSES) is config
    with pytest.raises(InvalidArgument, match="Food-101 has 101 classes"):
        config.validate(max_classes=50)

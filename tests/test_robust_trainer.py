"""Issue 11, trainer side: one client, one bad file or one unlucky moment must not break trainer_svc.

Each test is named after the behaviour it holds the service to; all but the unit-level ones run a real
trainer_svc on loopback (`tests.support.trainer`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.digits import digit_images, write_image_folder
from tests.support.trainer import digits_spec, running_trainer, trainer_settings, upload, wait_for
from trainer_svc import convert
from trainer_svc.jobs import records as records_module
from trainer_svc.jobs.database import JobDB, JobState
from trainer_svc.jobs.records import JobRecords
from trainer_svc.jobs.uploads import UploadLimits, UploadWriter
from trainer_svc.jobs.worker import failure_reason
from trainer_svc.training import publishing
from trainer_svc.training.config import TrainConfig, validate_class_names
from trainer_svc.training.data import load_image_folder
from vision.errors import InvalidArgument
from vision.models.store import METADATA_FILE, WEIGHTS_FILE, ModelMetadata, ModelStore
from vision.rpc.status import ERROR_KIND_KEY
from vision.v1 import trainer_pb2

ERROR_ID = re.compile(r"error id [0-9a-f]{8}\b")


def _kind(error: grpc.RpcError) -> str:
    metadata: Any = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    return next((str(value) for key, value in metadata if key == ERROR_KIND_KEY), "")


def _queued_forever(manager: Any, job_id: str = "idle0000000000ab") -> str:
    """A job recorded QUEUED but never handed to the scheduler: watchers of it wait without end."""
    config = TrainConfig.create("digits", architecture="smallcnn", class_names=["a", "b"])
    manager.db.insert(job_id, {}, config, {})
    return job_id


# -- defect 2: idle streams no longer starve the trainer -----------------------------------------------------
def test_idle_uploads_and_watchers_leave_health_and_job_calls_answering_within_a_second(
    tmp_path: Path,
) -> None:
    settings = trainer_settings(tmp_path)
    floods = 40  # of each kind: more than the trainer's 32 handler threads on their own
    release = threading.Event()

    def idle_upload() -> Iterator[trainer_pb2.CreateJobRequest]:
        release.wait(60)  # the headers went out; the body never comes
        return
        yield  # pragma: no cover -- a generator that sends nothing

    with running_trainer(settings) as (server, manager, stub):
        job_id = _queued_forever(manager)
        uploads = [stub.CreateJob.future(idle_upload(), timeout=60) for _ in range(floods)]
        watchers = [
            stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=60) for _ in range(floods)
        ]
        outcomes: list[grpc.RpcError] = []

        def read(call: Any) -> None:
            try:
                for _ in call:
                    pass
            except grpc.RpcError as exc:
                outcomes.append(exc)

        readers = [threading.Thread(target=read, args=(call,), daemon=True) for call in watchers]
        for reader in readers:
            reader.start()
        expected_refusals = 2 * floods - settings.max_concurrent_uploads - settings.max_watchers
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            refused_uploads = [f for f in uploads if f.done()]
            if len(refused_uploads) + len(outcomes) >= expected_refusals:
                break
            time.sleep(0.05)
        refused_uploads = [f.exception() for f in uploads if f.done()]
        # Every stream beyond its cap is refused. A refusal is the stream cap's, or, when the 80 calls land
        # together, the server's admission limit (held streams plus refusals in progress reach 32 for a
        # moment): both are RESOURCE_EXHAUSTED of the overloaded kind, and neither ever waits for a thread.
        assert len(refused_uploads) >= floods - settings.max_concurrent_uploads
        assert len(outcomes) >= floods - settings.max_watchers
        for refusal in [*refused_uploads, *outcomes]:
            assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
            assert _kind(refusal) == "overloaded"  # type: ignore[arg-type]
            details = refusal.details() or ""  # type: ignore[union-attr]
            assert "its limit (VISION_TRAINER_MAX_" in details or "the most it takes at once" in details

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as probe:  # as a kubelet probe would
            health = health_pb2_grpc.HealthStub(probe)
            latencies = []
            for _ in range(10):
                started = time.monotonic()
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                latencies.append(time.monotonic() - started)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert max(latencies) < 1.0
        logging.getLogger(__name__).info("health latency under the flood: max %.3f s", max(latencies))
        assert stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=1.0).state == (
            trainer_pb2.JOB_STATE_QUEUED
        )
        assert stub.ListJobs(trainer_pb2.ListJobsRequest(), timeout=1.0).jobs

        release.set()  # the idle uploads end (half-close) and the watchers go away: their slots come back
        for call in watchers:
            call.cancel()
        for reader in readers:
            reader.join(10)
        for future in uploads:
            with pytest.raises(grpc.RpcError) as ended:
                future.result(timeout=10)
            assert ended.value.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        time.sleep(1.5)  # cancelled watchers notice within WATCH_POLL_S
        spec = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path="missing"), class_names=[])
        with pytest.raises(grpc.RpcError) as checked:
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=spec)]), timeout=10)
        assert checked.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # handled, not refused as overloaded
        again = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=10)
        assert next(again).seq == 1  # a watcher slot is free again: the history replays
        again.cancel()


def test_a_watch_stream_ends_cleanly_after_its_maximum_lifetime_and_resumes_after_a_seq(
    tmp_path: Path,
) -> None:
    settings = trainer_settings(tmp_path, watch_max_s=1.0)
    with running_trainer(settings) as (_, manager, stub):
        job_id = _queued_forever(manager)
        started = time.monotonic()
        first = list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=30))  # ends with OK
        assert 0.9 < time.monotonic() - started < 5
        assert [(e.seq, e.message) for e in first] == [(1, "queued")]
        manager.records.note(job_id, "something new")
        resumed = list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id, after_seq=1), timeout=30))
        assert [(e.seq, e.message) for e in resumed] == [(2, "something new")]
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id, after_seq=-1), timeout=30))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.fast
def test_stream_caps_must_leave_threads_for_health_checks() -> None:
    from pydantic import ValidationError

    from trainer_svc.config import TrainerSettings

    with pytest.raises(ValidationError, match="must leave at least 4"):
        TrainerSettings(max_workers=16, max_concurrent_uploads=8, max_watchers=8)
    assert TrainerSettings(max_workers=16, max_concurrent_uploads=4, max_watchers=8).max_watchers == 8


# -- defect 9: cancel during publishing ---------------------------------------------------------------------
def test_a_cancel_while_the_job_publishes_answers_conflict_and_the_model_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = trainer_settings(tmp_path)
    publishing_now, go_on = threading.Event(), threading.Event()
    real_publish = records_module.publish_final

    def slow_publish(*args: Any, **kwargs: Any) -> Any:
        publishing_now.set()
        go_on.wait(60)
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(records_module, "publish_final", slow_publish)
    with running_trainer(settings) as (_, manager, stub):
        job = stub.CreateJob(upload(digits_spec(epochs=1), digit_images(32, per_class=8)), timeout=60)
        assert publishing_now.wait(120), "the job never reached publishing"
        with pytest.raises(grpc.RpcError) as refused:
            stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job.id), timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "publishing its model" in (refused.value.details() or "")
        during = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id), timeout=10)
        assert during.state == trainer_pb2.JOB_STATE_RUNNING
        assert manager.db.get(job.id).state == JobState.PUBLISHING  # type: ignore[union-attr]
        go_on.set()
        done = wait_for(stub, job.id, timeout=60)
    assert done.state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert done.result.model.version == "1"
    assert ModelStore(settings.model_dir).versions("digits") == ["1"]


def _records(tmp_path: Path) -> tuple[JobDB, JobRecords, str]:
    db = JobDB(tmp_path / "jobs.sqlite3")
    store = ModelStore(tmp_path / "models")
    records = JobRecords(db, store, tmp_path / "jobs")
    config = TrainConfig.create("digits", architecture="smallcnn", class_names=["a", "b"])
    db.insert("job1", {}, config, {})
    db.transition("job1", (JobState.QUEUED,), JobState.RUNNING)
    (tmp_path / "jobs" / "job1" / publishing.FINAL_DIR).mkdir(parents=True)
    return db, records, "job1"


@pytest.mark.fast
def test_a_job_cancelled_before_its_publisher_starts_is_cancelled_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, records, job_id = _records(tmp_path)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cancelled job was published")

    monkeypatch.setattr(records_module, "publish_final", never)
    assert db.request_cancel(job_id)
    assert records.publish(db.get(job_id)) is False  # type: ignore[arg-type]
    assert db.get(job_id).state == JobState.CANCELLED  # type: ignore[union-attr]
    db.close()


# -- defect 11: trainer parts -------------------------------------------------------------------------------
def test_a_class_folder_linked_outside_the_datasets_root_is_refused_naming_the_folder(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    write_image_folder(datasets / "ds", size=32, per_class=6)
    write_image_folder(tmp_path / "outside", size=32, per_class=6)
    (datasets / "ds" / "cat").symlink_to(tmp_path / "outside" / "3", target_is_directory=True)
    (datasets / "shared").mkdir()
    (datasets / "ds2").mkdir()
    for digit in ("1", "2"):  # a link that stays inside the datasets root is fine
        os.rename(datasets / "ds" / digit, datasets / "shared" / digit)
        (datasets / "ds2" / digit).symlink_to(datasets / "shared" / digit, target_is_directory=True)
    settings = trainer_settings(tmp_path, datasets_dir=datasets)
    with running_trainer(settings) as (_, _, stub):
        spec = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path="ds"), class_names=[])
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=spec)]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "'ds/cat' is a link to outside the trainer's datasets directory" in details
    assert str(tmp_path) not in details
    # The worker checks again with the same rule; a link that stays inside the datasets root is fine.
    split = load_image_folder(datasets / "ds2", 0.2, 0, 5, within=datasets)
    assert split.class_counts() == {"1": 6, "2": 6}
    (datasets / "ds2" / "2" / "elsewhere.png").symlink_to(tmp_path / "outside" / "4" / "00024.png")
    with pytest.raises(InvalidArgument, match=r"'ds2/2/elsewhere\.png' is a link to outside"):
        load_image_folder(datasets / "ds2", 0.2, 0, 5, within=datasets)


@pytest.mark.fast
def test_names_with_inner_dots_are_accepted_and_nfc_lookalike_labels_are_one_class(tmp_path: Path) -> None:
    validate_class_names(["...", "model..1", "v1.2", ".hidden-ish"])
    nfd = unicodedata.normalize("NFD", "café")
    spec = digits_spec(class_names=[nfd, "thé"])
    config = convert.job_spec_to_config(spec, trainer_settings(tmp_path))
    assert config.class_names == ["café", "thé"]  # stored NFC
    images = [image for label, image in digit_images(16, per_class=1) if label in ("0", "1")]
    writer = UploadWriter(tmp_path / "uploads", config.class_names, UploadLimits())
    for index, (label, data) in enumerate(zip((nfd, "thé"), images, strict=True)):
        chunk = trainer_pb2.ImageChunk(
            file_index=index, class_name=label, file_name="holiday..0.png", data=data, last=True
        )
        writer.add(chunk)  # the NFD spelling finds the NFC class; 'holiday..0.png' is a fine name
    assert writer.finish() == {0: 1, 1: 1}
    writer.abort()


@pytest.mark.fast
@pytest.mark.parametrize("name", [".", "..", "a/b", "a\\b", "x\x00y"])
def test_only_dot_names_separators_and_control_characters_are_refused_in_file_names(
    tmp_path: Path, name: str
) -> None:
    writer = UploadWriter(tmp_path / "uploads", ["a", "b"], UploadLimits())
    chunk = trainer_pb2.ImageChunk(file_index=0, class_name="a", file_name=name, data=b"x", last=True)
    with pytest.raises(InvalidArgument, match="unacceptable name"):
        writer.add(chunk)
    writer.abort()


def test_a_full_disk_while_storing_an_upload_answers_storage_full_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = trainer_settings(tmp_path)
    real_write = Path.write_bytes
    uploads_dir = (settings.data_dir / "uploads").resolve()

    def full(self: Path, data: Any) -> int:
        if self.resolve().is_relative_to(uploads_dir):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with running_trainer(settings) as (_, _, stub):
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateJob(upload(digits_spec(), digit_images(16, per_class=5)), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _kind(refused.value) == "storage_full"
        details = refused.value.details() or ""
        assert "the trainer's disk is full" in details and str(tmp_path) not in details
        assert list(uploads_dir.iterdir()) == []


def test_upload_limits_answer_limit_exceeded_so_the_gateway_says_413(tmp_path: Path) -> None:
    settings = trainer_settings(tmp_path, max_upload_files=3)
    with running_trainer(settings) as (_, _, stub), pytest.raises(grpc.RpcError) as refused:
        stub.CreateJob(upload(digits_spec(), digit_images(16, per_class=1)), timeout=60)
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert _kind(refused.value) == "limit_exceeded"
    assert "more than 3 files" in (refused.value.details() or "")


@pytest.mark.fast
def test_a_full_disk_while_publishing_fails_the_job_with_a_plain_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, records, job_id = _records(tmp_path)

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "models" / "digits"))

    monkeypatch.setattr(records_module, "publish_final", full)
    assert records.publish(db.get(job_id)) is False  # type: ignore[arg-type]
    row = db.get(job_id)
    assert row.state == JobState.FAILED  # type: ignore[union-attr]
    assert row.error == "publishing the model failed: the model store's disk is full"  # type: ignore[union-attr]
    db.close()


def test_download_errors_and_server_paths_reach_clients_only_as_an_error_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = trainer_settings(tmp_path, datasets_dir=tmp_path / "datasets")
    with running_trainer(settings) as (_, _, stub):
        pretrained = digits_spec(architecture=trainer_pb2.ARCHITECTURE_RESNET18, pretrained=True)
        with pytest.raises(grpc.RpcError) as offline:
            stub.CreateJob(upload(pretrained, []), timeout=30)
        missing = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path="nowhere"), class_names=[])
        with pytest.raises(grpc.RpcError) as absent:
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=missing)]), timeout=30)
        outside = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path="/etc"), class_names=[])
        with pytest.raises(grpc.RpcError) as escaped:
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=outside)]), timeout=30)
    message = offline.value.details() or ""
    assert offline.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "could not be downloaded" in message and ERROR_ID.search(message)
    assert "127.0.0.1" not in message and "http" not in message
    error_id = ERROR_ID.search(message).group(0).split()[-1]  # type: ignore[union-attr]
    assert any(error_id in record.getMessage() for record in caplog.records)  # the details are in the log
    for refused in (absent, escaped):
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(tmp_path) not in (refused.value.details() or "")
    assert "'nowhere' does not exist" in (absent.value.details() or "")


@pytest.mark.fast
def test_an_unexpected_training_error_reaches_job_error_as_an_error_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = TrainConfig.create("digits", architecture="smallcnn", class_names=["a", "b"])
    exc = ConnectionError("HTTPSConnectionPool(host='api.kaggle.com', port=443): /srv/data/x")
    reason = failure_reason(exc, config, "job1")
    assert ERROR_ID.search(reason) and "kaggle" not in reason and "/srv" not in reason
    disk = failure_reason(OSError(errno.ENOSPC, "No space left on device", "/srv/data/jobs/x"), config)
    assert disk == "the trainer's disk is full: the job could not write its checkpoints or model"


# -- published artifacts are durable ------------------------------------------------------------------------
@pytest.mark.fast
def test_published_artifacts_are_fsynced_before_the_version_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "final"
    final.mkdir()
    for artifact in publishing.ARTIFACTS:
        (final / artifact).write_bytes(b"{}" if artifact.endswith(".json") else b"data")
    meta = ModelMetadata(architecture="smallcnn", class_names=["a", "b"], provenance={"job_id": "job1"})
    (final / METADATA_FILE).write_text(meta.to_json())
    synced: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    renamed_after: list[set[str]] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(source: Any, target: Any) -> None:
        renamed_after.append({Path(p).name for p in synced if Path(p).parent == Path(source)})
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    version = publishing.publish_final(ModelStore(tmp_path / "models"), final, "digits", "job1")
    assert version.version == "1"
    assert set(publishing.ARTIFACTS) <= renamed_after[-1]
    assert WEIGHTS_FILE in renamed_after[-1]

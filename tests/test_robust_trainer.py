"""Issue 11, trainer side: idle streams, a cancel while publishing or a crash must not break trainer_svc or
lose a trained model. (What clients send and read back: `test_robust_trainer_inputs.py`.)

Each test is named after the behaviour it holds the service to; all but the unit-level ones run a real
trainer_svc on loopback (`tests.support.trainer`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.digits import digit_images
from tests.support.status import error_kind
from tests.support.trainer import digits_spec, running_trainer, trainer_settings, upload, wait_for
from trainer_svc.jobs import records as records_module
from trainer_svc.jobs.database import JobDB, JobState
from trainer_svc.jobs.records import JobRecords
from trainer_svc.training import publishing
from trainer_svc.training.config import TrainConfig
from vision.models.store import METADATA_FILE, WEIGHTS_FILE, ModelMetadata, ModelStore
from vision.v1 import trainer_pb2


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
            assert error_kind(refusal) == "overloaded"  # type: ignore[arg-type]
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

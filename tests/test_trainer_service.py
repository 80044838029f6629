"""trainer_svc over gRPC, with real worker processes: a killed worker and a restarted service resume the
job from its checkpoint and publish exactly once; jobs run one at a time with the rest queued; cancelled
and failed jobs publish nothing; the job list survives restarts; uploads store server-made names only."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from tests.support.digits import digit_images, write_image_folder
from tests.support.trainer import (
    digits_spec,
    history,
    running_trainer,
    trainer_settings,
    upload,
    wait_for,
)
from trainer_svc.jobs.uploads import UploadLimits, UploadWriter
from trainer_svc.training.publishing import EVALUATION_FILE
from vision.errors import InvalidArgument
from vision.models.store import ModelStore
from vision.v1 import trainer_pb2


def test_a_killed_worker_and_a_restarted_service_resume_the_job_which_publishes_one_version(
    tmp_path: Path,
) -> None:
    settings = trainer_settings(tmp_path)
    spec = digits_spec(epochs=4)
    with running_trainer(settings) as (_, manager, stub):
        job = stub.CreateJob(upload(spec, digit_images(32, per_class=50)), timeout=60)
        wait_for(stub, job.id, lambda j: j.epoch >= 1)  # epoch 1's checkpoint is on disk
        pid = manager.worker_pid(job.id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(stub, job.id, lambda j: any("SIGKILL" in e.message for e in _events_so_far(stub, j.id)), 60)
    # The service stopped mid-job (its resumed worker too): a new instance on the same data directory.
    with running_trainer(settings) as (_, _, stub):
        done = wait_for(stub, job.id)
        events = history(stub, job.id)
    assert trainer_pb2.JobState.Name(done.state) == "JOB_STATE_SUCCEEDED", done.error
    assert (done.epoch, done.total_epochs) == (4, 4)
    assert ModelStore(settings.model_dir).versions("digits") == ["1"]
    evaluation = json.loads((settings.model_dir / "digits" / "1" / EVALUATION_FILE).read_text())
    assert [h["epoch"] for h in evaluation["history"]] == [1, 2, 3, 4]
    messages = [e.message for e in events]
    assert any("was killed by SIGKILL" in m for m in messages)
    assert any(m.startswith("resumed after epoch") for m in messages)
    assert sorted({e.epoch for e in events if e.kind == trainer_pb2.JobEvent.KIND_EPOCH}) == [1, 2, 3, 4]
    assert done.result.model.version == "1" and len(done.result.per_class) == 10
    assert _job_files_removed(settings.data_dir / "jobs")  # checkpoints and images removed after the job


def _events_so_far(stub: object, job_id: str) -> list[trainer_pb2.JobEvent]:
    # WatchJob follows a running job forever; read what is stored by cancelling after the backlog.
    call = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=1)  # type: ignore[attr-defined]
    events = []
    try:
        for event in call:
            events.append(event)
    except grpc.RpcError:
        pass
    return events


def test_jobs_run_one_at_a_time_and_cancelled_jobs_publish_nothing(tmp_path: Path) -> None:
    settings = trainer_settings(tmp_path)
    images = list(digit_images(32, per_class=20))
    with running_trainer(settings) as (_, _, stub):
        first = stub.CreateJob(upload(digits_spec(epochs=200), images), timeout=60)
        second = stub.CreateJob(upload(digits_spec(epochs=1), images), timeout=60)
        wait_for(stub, first.id, lambda j: j.state == trainer_pb2.JOB_STATE_RUNNING)
        assert stub.GetJob(trainer_pb2.GetJobRequest(job_id=second.id)).state == trainer_pb2.JOB_STATE_QUEUED
        queued = stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=second.id), timeout=10)
        assert queued.state == trainer_pb2.JOB_STATE_CANCELLED
        stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=first.id), timeout=10)
        running = wait_for(stub, first.id, timeout=60)
        assert running.state == trainer_pb2.JOB_STATE_CANCELLED
        with pytest.raises(grpc.RpcError) as again:
            stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=first.id), timeout=10)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ModelStore(settings.model_dir).names() == []
    assert _job_files_removed(settings.data_dir / "jobs")


def test_a_worker_that_dies_every_time_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    settings = trainer_settings(tmp_path, max_attempts=1)
    with running_trainer(settings) as (_, manager, stub):
        job = stub.CreateJob(upload(digits_spec(epochs=200), digit_images(32, per_class=10)), timeout=60)
        wait_for(stub, job.id, lambda j: manager.worker_pid(j.id) is not None and j.HasField("progress"))
        os.kill(manager.worker_pid(job.id), signal.SIGKILL)  # type: ignore[arg-type]
        failed = wait_for(stub, job.id, timeout=30)
    assert failed.state == trainer_pb2.JOB_STATE_FAILED
    assert "the training process was killed by SIGKILL" in failed.error
    assert ModelStore(settings.model_dir).names() == []


def test_the_job_list_and_history_survive_a_restart_and_page_newest_first(tmp_path: Path) -> None:
    settings = trainer_settings(tmp_path, datasets_dir=tmp_path / "datasets")
    write_image_folder(tmp_path / "datasets" / "digits", size=32, per_class=10)
    spec = digits_spec(epochs=1, image_folder=trainer_pb2.ImageFolderDataset(path="digits"), class_names=[])
    with running_trainer(settings) as (_, _, stub):
        ids = [
            stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=spec)]), timeout=30).id for _ in range(2)
        ]
        for job_id in ids:
            assert wait_for(stub, job_id).state == trainer_pb2.JOB_STATE_SUCCEEDED
    with running_trainer(settings) as (_, _, stub):
        page = stub.ListJobs(trainer_pb2.ListJobsRequest(page_size=1), timeout=10)
        rest = stub.ListJobs(
            trainer_pb2.ListJobsRequest(page_size=1, page_token=page.next_page_token), timeout=10
        )
        assert [j.id for j in (*page.jobs, *rest.jobs)] == ids[::-1]
        assert not rest.next_page_token
        assert history(stub, ids[0])[-1].message == "published digits version 1"
    assert ModelStore(settings.model_dir).versions("digits") == ["1", "2"]


@pytest.mark.parametrize("path", ["../outside", "/etc", "digits/../../outside"])
def test_an_image_folder_outside_the_datasets_directory_is_refused(tmp_path: Path, path: str) -> None:
    settings = trainer_settings(tmp_path, datasets_dir=tmp_path / "datasets")
    spec = digits_spec(image_folder=trainer_pb2.ImageFolderDataset(path=path), class_names=[])
    with running_trainer(settings) as (_, _, stub), pytest.raises(grpc.RpcError) as refused:
        stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=spec)]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be inside the trainer's datasets directory" in (refused.value.details() or "")


def test_uploaded_files_get_server_made_names_and_a_rejected_upload_leaves_nothing(tmp_path: Path) -> None:
    images = [image for image in digit_images(16, per_class=2) if image[0] in ("0", "1")]  # 0, 1, 0, 1
    writer = UploadWriter(tmp_path / "uploads", ["0", "1"], UploadLimits())
    for index, (label, data) in enumerate(images):
        name = "../../evil.png" if index == 3 else f"IMG {index}.PNG"
        chunk = trainer_pb2.ImageChunk(
            file_index=index, class_name=label, file_name=name, data=data, last=True
        )
        if index == 3:
            with pytest.raises(InvalidArgument, match="unacceptable name"):
                writer.add(chunk)
            break
        writer.add(chunk)
    stored = sorted(str(p.relative_to(writer.dir)) for p in writer.dir.rglob("*.png"))
    assert stored == ["0/000000.png", "0/000002.png", "1/000001.png"]
    writer.abort()
    assert list((tmp_path / "uploads").iterdir()) == []


def _job_files_removed(jobs_dir: Path, timeout_s: float = 10.0) -> bool:
    """The service removes a job's files just after recording its end: allow it a moment."""
    deadline = time.monotonic() + timeout_s
    while any(jobs_dir.iterdir()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

"""Helpers shared by the trainer test files: a real trainer_svc on loopback with its own
data directory and model store, CreateJob uploads of real images, and waiting on job states."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from trainer_svc.config import TrainerSettings
from trainer_svc.jobs.manager import JobManager
from trainer_svc.server import create_trainer_server
from vision.rpc.server import GrpcServer
from vision.v1 import trainer_pb2, trainer_pb2_grpc

# Nothing listens on port 9 of the loopback: the ImageNet download fails at once, as it does offline.
OFFLINE_WEIGHTS_URL = "http://127.0.0.1:9/resnet18-f37072fd.pth"
TERMINAL = (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED)


def trainer_settings(root: Path, **overrides: object) -> TrainerSettings:
    fields: dict[str, object] = {
        "port": 0,
        "data_dir": root / "data",
        "model_dir": root / "models",
        "loader_workers": 0,
        "progress_interval_s": 0.5,
        "pretrained_url": OFFLINE_WEIGHTS_URL,
        "pretrained_timeout_s": 2.0,
        "device": "cpu",
    }
    return TrainerSettings(**{**fields, **overrides})  # type: ignore[arg-type]


@contextmanager
def running_trainer(
    settings: TrainerSettings,
) -> Iterator[tuple[GrpcServer, JobManager, trainer_pb2_grpc.TrainerStub]]:
    server, manager = create_trainer_server(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, manager, trainer_pb2_grpc.TrainerStub(channel)
    finally:
        channel.close()
        server.stop(0).wait()
        manager.close()


def digits_spec(**overrides: object) -> trainer_pb2.JobSpec:
    """A small from-scratch CNN on 32x32 digits: a job that trains in seconds on a CPU."""
    fields: dict[str, object] = {
        "model_name": "digits",
        "architecture": trainer_pb2.ARCHITECTURE_SMALLCNN,
        "class_names": [str(d) for d in range(10)],
        "epochs": 2,
        "batch_size": 16,
        "learning_rate": 2e-3,
        "img_size": 32,
        "horizontal_flip": False,
        "patience": 20,
        "upload": trainer_pb2.UploadedDataset(),
    }
    return trainer_pb2.JobSpec(**{**fields, **overrides})  # type: ignore[arg-type]


def upload(
    spec: trainer_pb2.JobSpec, images: Iterable[tuple[str, bytes]]
) -> Iterator[trainer_pb2.CreateJobRequest]:
    """The CreateJob stream: the spec, then each image in two chunks (the second marked last)."""
    yield trainer_pb2.CreateJobRequest(spec=spec)
    for index, (label, data) in enumerate(images):
        half = len(data) // 2
        for piece, last in ((data[:half], False), (data[half:], True)):
            chunk = trainer_pb2.ImageChunk(
                file_index=index, class_name=label, file_name=f"photo {index}.png", data=piece, last=last
            )
            yield trainer_pb2.CreateJobRequest(chunk=chunk)


def wait_for(
    stub: trainer_pb2_grpc.TrainerStub, job_id: str, done: object = None, timeout: float = 180.0
) -> trainer_pb2.Job:
    """Poll GetJob until ``done(job)`` (default: the job ended); fail after ``timeout`` seconds."""
    check = done if callable(done) else (lambda job: job.state in TERMINAL)
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=10)
        if check(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} still {trainer_pb2.JobState.Name(job.state)} after {timeout}s"
            )
        time.sleep(0.1)


def history(stub: trainer_pb2_grpc.TrainerStub, job_id: str) -> list[trainer_pb2.JobEvent]:
    """Every event of an ended job (WatchJob replays the history, then ends)."""
    return list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=30))

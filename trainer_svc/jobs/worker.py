"""The process one job trains in (started with multiprocessing's 'spawn' context by `jobs.supervisor`).

It loads the dataset, trains (resuming from the job's checkpoint when there is one), writes the finished
model to ``<workdir>/final`` and says so. Everything it tells the service goes through one pipe as
small dicts: ``{"type": "event", "event": TrainEvent}``, ``{"type": "dataset", "class_counts": {...}}``
and finally one of ``{"type": "done"}``, ``{"type": "failed", "reason": "..."}`` or
``{"type": "cancelled"}``. A worker that loses its parent (the service died) stops at the next step
instead of training on unsupervised.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import torch

from trainer_svc.errors import is_disk_full, logged
from trainer_svc.training import loop
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.data import DatasetSplit, load_image_folder, load_uploaded
from trainer_svc.training.events import TrainEvent
from trainer_svc.training.food101 import load_food101
from trainer_svc.training.publishing import ensure_imagenet, imagenet_state, write_final
from vision.errors import VisionError
from vision.image.decode import ImageLimits
from vision.logs import configure_logging
from vision.models.store import ModelStore

log = logging.getLogger(__name__)
LOCK_FILE = "worker.lock"
TRAIN_DIR = "train"
DATASET_DIR = "dataset"


@dataclass
class WorkerArgs:
    """Everything the worker needs, as plain picklable data."""

    job_id: str
    config: TrainConfig
    workdir: str
    model_dir: str
    device: str
    parent_pid: int
    loader_workers: int = 0
    torch_threads: int = 0
    progress_interval_s: float = 2.0
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    min_images_per_class: int = 5
    pretrained_url: str = ""
    pretrained_timeout_s: float = 10.0
    food101_handle: str = ""
    kagglehub_cache: str = ""
    datasets_root: str = ""  # image_folder files must lie inside it (symlinks resolved); "": the dataset dir
    log_level: str = "INFO"
    log_json: bool = False


class CancelRequested(Exception):
    """The job was cancelled: stop before the next step."""


class ParentGone(Exception):
    """The service that started this worker is gone: nobody would record what it does."""


class Channel:
    """The worker's side of the pipe, plus the stop checks called before every training step."""

    def __init__(self, conn: Connection, parent_pid: int, cancel: Event) -> None:
        self.conn, self.parent_pid, self.cancel = conn, parent_pid, cancel

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, OSError) as exc:
            raise ParentGone from exc

    def report(self, event: TrainEvent) -> None:
        self.send({"type": "event", "event": event})

    def check(self) -> None:
        if os.getppid() != self.parent_pid:
            raise ParentGone
        if self.cancel.is_set():
            raise CancelRequested


@contextmanager
def exclusive(workdir: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold the job's lock file: two processes never train one job (an orphan of a crashed service may
    still be finishing its current step)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / LOCK_FILE, "w") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VisionError("another process is still training this job") from None
                time.sleep(0.5)
        yield


def load_split(config: TrainConfig, args: WorkerArgs) -> DatasetSplit:
    if config.dataset == "upload":
        return load_uploaded(
            Path(args.workdir) / DATASET_DIR,
            config.class_names,
            config.val_fraction,
            config.seed,
            args.min_images_per_class,
        )
    if config.dataset == "image_folder":
        return load_image_folder(
            Path(config.dataset_path),
            config.val_fraction,
            config.seed,
            args.min_images_per_class,
            within=Path(args.datasets_root) if args.datasets_root else None,
        )
    return load_food101(
        args.food101_handle,
        Path(args.kagglehub_cache) if args.kagglehub_cache else None,
        max_images_per_class=config.max_images_per_class,
        min_per_class=args.min_images_per_class,
    )


def run_job(args: WorkerArgs, channel: Channel) -> None:
    config = args.config
    split = load_split(config, args)
    channel.send({"type": "dataset", "class_counts": split.class_counts()})
    channel.report(
        TrainEvent(
            "message",
            total_epochs=config.epochs,
            message=f"dataset: {len(split.class_names)} classes, {len(split.train)} training and "
            f"{len(split.val)} validation images; training on {args.device}",
        )
    )
    imagenet = None
    if config.pretrained:
        store = ModelStore(args.model_dir)
        version = ensure_imagenet(
            store, config.architecture, url=args.pretrained_url, timeout=args.pretrained_timeout_s
        )
        imagenet = imagenet_state(version)
    runtime = loop.Runtime(
        device=torch.device(args.device),
        loader_workers=args.loader_workers,
        progress_interval_s=args.progress_interval_s,
        image_limits=args.image_limits,
    )
    workdir = Path(args.workdir)
    evaluation, weights = loop.main(
        config,
        split,
        workdir / TRAIN_DIR,
        runtime=runtime,
        imagenet_state=imagenet,
        report=channel.report,
        check=channel.check,
    )
    channel.check()
    write_final(
        workdir, config=config, split=split, evaluation=evaluation, weights=weights, job_id=args.job_id
    )


def failure_reason(exc: BaseException, config: TrainConfig, job_id: str = "") -> str:
    """What a user reads when the job failed."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (
            f"out of GPU memory at batch_size {config.batch_size} and img_size {config.img_size}: "
            "lower one of them"
        )
    if isinstance(exc, MemoryError):
        return "out of memory: lower batch_size or img_size"
    if is_disk_full(exc):
        return "the trainer's disk is full: the job could not write its checkpoints or model"
    if isinstance(exc, VisionError):
        message = exc.message
        # Raised inside a DataLoader worker, the message carries that worker's traceback: keep the last line.
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        return message
    # Library and OS errors name server paths and hosts: the details go to the log, the client gets an id.
    return logged(log, "training failed", exc, where=f"job {job_id}" if job_id else "", traceback=True)


def main(args: WorkerArgs, conn: Connection, cancel: Event) -> None:
    """Entry point of the spawned process."""
    configure_logging(args.log_level, args.log_json, service=f"trainer-job-{args.job_id}")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    channel = Channel(conn, args.parent_pid, cancel)
    try:
        with exclusive(Path(args.workdir)):
            run_job(args, channel)
        channel.send({"type": "done"})
    except ParentGone:
        log.warning("the trainer service went away; job %s stops here", args.job_id)
        os._exit(3)
    except CancelRequested:
        channel.send({"type": "cancelled"})
    except BaseException as exc:
        try:
            channel.send({"type": "failed", "reason": failure_reason(exc, args.config, args.job_id)})
        except ParentGone:
            os._exit(3)
    finally:
        conn.close()

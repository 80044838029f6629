"""The process one job trains in: one rank of it (started with multiprocessing's 'spawn' context by
`jobs.supervisor`, one per rank; or by torchrun in a Kubernetes pod, through `jobs.rank`).

It joins the job's other ranks (`training.distributed`: its place comes from the torchrun variables), loads
the dataset, trains its shard (resuming from the job's checkpoint when there is one); rank 0 writes the
finished model to ``<workdir>/final`` while the others wait at a barrier. Everything a rank tells the
service goes through its channel (a pipe, or a JSON-lines file: `jobs.eventfile`) as small dicts:
``{"type": "event", "event": TrainEvent}`` and ``{"type": "dataset", "class_counts": {...}}`` (rank 0
only), and finally one of ``{"type": "done"}``, ``{"type": "failed", "reason": "..."}``,
``{"type": "cancelled"}`` or ``{"type": "lost"}`` (a collective failed because another rank went away: the
job is to be resumed, not failed). A worker that loses its parent (the service died) stops at the next
step instead of training on unsupervised.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import torch

from trainer_svc.errors import is_disk_full, logged
from trainer_svc.training import distributed, loop
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.data import DatasetSplit, load_image_folder, load_uploaded
from trainer_svc.training.distributed import LaunchEnv, World
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
    device: str  # this rank's: 'cpu', 'cuda:N', or 'cuda' (the GPU of its LOCAL_RANK, in a pod)
    parent_pid: int  # 0: no parent to watch (torchrun's agent in a pod starts the rank)
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
    dist_backend: str = "auto"
    dist_timeout_s: float = 1800.0
    launch: dict[str, str] = field(default_factory=dict)  # torchrun's variables, for a rank started by hand

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (the launch file of a Kubernetes job's pods)."""
        return {**asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerArgs:
        return cls(
            **{
                **data,
                "config": TrainConfig.from_dict(data["config"]),
                "image_limits": ImageLimits(**data["image_limits"]),
            }
        )


class CancelRequested(Exception):
    """The job was cancelled: stop before the next step."""


class ParentGone(Exception):
    """The service that started this worker is gone: nobody would record what it does."""


class Channel:
    """The worker's side of the pipe (or of its event file), plus the stop checks called before every
    training step."""

    def __init__(self, sink: Callable[[dict[str, Any]], None], parent_pid: int, cancel: Event | None) -> None:
        self.sink, self.parent_pid, self.cancel = sink, parent_pid, cancel

    @classmethod
    def pipe(cls, conn: Connection, parent_pid: int, cancel: Event) -> Channel:
        return cls(conn.send, parent_pid, cancel)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sink(message)
        except (BrokenPipeError, OSError) as exc:
            raise ParentGone from exc

    def report(self, event: TrainEvent) -> None:
        self.send({"type": "event", "event": event})

    def check(self) -> None:
        if self.parent_pid and os.getppid() != self.parent_pid:
            raise ParentGone
        if self.cancel is not None and self.cancel.is_set():
            raise CancelRequested


@contextmanager
def exclusive(workdir: Path, rank: int = 0, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold the lock file of the job's rank: two processes never train one rank of a job (an orphan of a
    crashed service may still be finishing its current step)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / (LOCK_FILE if rank == 0 else f"rank-{rank}.{LOCK_FILE}"), "w") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VisionError("another process is still training this job") from None
                time.sleep(0.5)
            except OSError as exc:  # a shared volume without file locks (some NFS and SMB mounts)
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise
                log.warning("the job directory's volume has no file locks: training %s unlocked", workdir)
                break
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


def _where(device: torch.device, world: World) -> str:
    if not world.distributed:
        return str(device)
    return f"{world.size} processes ({device.type}, {torch.distributed.get_backend()})"


def _imagenet(args: WorkerArgs, world: World) -> dict[str, torch.Tensor] | None:
    """The ImageNet weights: fetched into the store by rank 0 (if they are not there yet) while the
    others wait, then read by every rank."""
    config = args.config
    if not config.pretrained:
        return None
    store = ModelStore(args.model_dir)
    fetch = lambda: ensure_imagenet(  # noqa: E731
        store, config.architecture, url=args.pretrained_url, timeout=args.pretrained_timeout_s
    )
    if world.is_main:
        fetch()
    world.barrier()
    return imagenet_state(fetch())


def run_job(args: WorkerArgs, channel: Channel, world: World, device: torch.device) -> None:
    config = args.config
    split = load_split(config, args)
    if world.is_main:
        channel.send({"type": "dataset", "class_counts": split.class_counts()})
        channel.report(
            TrainEvent(
                "message",
                total_epochs=config.epochs,
                message=f"dataset: {len(split.class_names)} classes, {len(split.train)} training and "
                f"{len(split.val)} validation images; training on {_where(device, world)}",
            )
        )
    imagenet = _imagenet(args, world)
    runtime = loop.Runtime(
        device=device,
        loader_workers=args.loader_workers,
        progress_interval_s=args.progress_interval_s,
        image_limits=args.image_limits,
        world=world,
    )
    workdir = Path(args.workdir)
    trained = loop.main(
        config,
        split,
        workdir / TRAIN_DIR,
        runtime=runtime,
        imagenet_state=imagenet,
        report=channel.report if world.is_main else None,
        check=channel.check,
    )
    channel.check()
    if trained is not None:  # rank 0
        evaluation, weights = trained
        write_final(
            workdir, config=config, split=split, evaluation=evaluation, weights=weights, job_id=args.job_id
        )
    world.barrier()  # the others end once the model is written


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
    """Entry point of a process spawned by the supervisor (one rank; ``args.launch`` says which)."""
    try:
        run_rank(args, Channel.pipe(conn, args.parent_pid, cancel))
    finally:
        conn.close()


def run_rank(args: WorkerArgs, channel: Channel) -> None:
    """Be one rank of the job until it ends; the rank's last word goes to ``channel``."""
    os.environ.update(args.launch)  # before anything reads them: as if torchrun had started this process
    env = LaunchEnv()
    suffix = f"-rank{env.rank}" if env.world_size > 1 else ""
    configure_logging(args.log_level, args.log_json, service=f"trainer-job-{args.job_id}{suffix}")
    device = distributed.rank_device(torch.device(args.device), env)
    if args.torch_threads or device.type == "cpu":  # torch's default: the node's cores, not the pod's limit
        torch.set_num_threads(args.torch_threads or distributed.cpu_threads(env))
    world = World()
    try:
        with exclusive(Path(args.workdir), env.rank):
            backend = distributed.resolve_backend(args.dist_backend, device)
            world = distributed.join(env, backend, args.dist_timeout_s, device)
            run_job(args, channel, world, device)
        channel.send({"type": "done"})
    except ParentGone:
        log.warning("the trainer service went away; job %s stops here", args.job_id)
        os._exit(3)
    except CancelRequested:
        channel.send({"type": "cancelled"})
    except BaseException as exc:
        try:
            if env.world_size > 1 and distributed.is_peer_failure(exc):
                log.warning("job %s rank %d: another rank went away (%s)", args.job_id, env.rank, exc)
                channel.send({"type": "lost"})
            else:
                channel.send({"type": "failed", "reason": failure_reason(exc, args.config, args.job_id)})
        except ParentGone:
            os._exit(3)
    finally:
        distributed.leave(world)

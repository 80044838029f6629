"""Where jobs train: the device slots of the trainer, how many a job takes, and which process counts a job
may ask for.

Local backend: one slot per GPU ('auto' with GPUs, or 'cuda'), else the one device named ('cpu', 'cuda:N').
A job of ``nproc_per_node`` ranks takes that many GPU slots (one rank per GPU: one job per GPU at a time),
and the single CPU slot on CPU (its ranks share the cores, gloo). Kubernetes backend: jobs train in pods,
not on the trainer's devices; a slot is one job running at once (``kubernetes_max_jobs``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from trainer_svc.config import TrainerSettings
from trainer_svc.training.config import MAX_NNODES, MAX_NPROC_PER_NODE, TrainConfig
from vision.errors import InvalidArgument
from vision.models.devices import resolve_device


def device_slots(spec: str) -> list[str]:
    """One slot per GPU for 'auto' (with GPUs) or 'cuda'; just that device for 'cuda:N' or 'cpu'."""
    device = resolve_device(spec)
    if device.type == "cuda" and spec in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(device)]


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def backend_slots(settings: TrainerSettings) -> list[str]:
    """The slots jobs are scheduled onto under ``settings.backend``."""
    if settings.backend == "kubernetes":
        return [f"kubernetes-{i}" for i in range(settings.kubernetes_max_jobs)]
    return device_slots(settings.device)


class SlotPool:
    """The free slots. Not thread-safe: the manager holds its lock around every call."""

    def __init__(self, slots: list[str]) -> None:
        self.slots = list(slots)
        self._free = list(self.slots)

    @property
    def gpus(self) -> bool:
        return self.slots[0].startswith("cuda")

    def needed(self, config: TrainConfig) -> int:
        """Slots a job takes: one GPU per rank; one CPU slot or Kubernetes slot whatever its ranks."""
        return config.nproc_per_node if self.gpus else 1

    def take(self, count: int) -> list[str] | None:
        """``count`` free slots, lowest first (None while fewer are free: the job waits at the head of
        the queue, so a large job is never starved by small ones behind it)."""
        if len(self._free) < count:
            return None
        taken = sorted(self._free, key=self.slots.index)[:count]
        for slot in taken:
            self._free.remove(slot)
        return taken

    def give(self, slots: list[str]) -> None:
        self._free.extend(slots)


@dataclass(frozen=True)
class Placement:
    """The process counts this trainer can give a job, and the default for 0."""

    backend: str = "local"
    gpus: int = 0  # local: the GPUs of the trainer's device set; kubernetes: of one job pod
    cpu_cores: int = 1
    max_nodes: int = 1
    owner: str = "the trainer's"  # whose GPUs and cores messages name

    @classmethod
    def of(cls, settings: TrainerSettings, slots: list[str] | None = None) -> Placement:
        if settings.backend == "kubernetes":
            return cls(
                "kubernetes",
                settings.kubernetes_gpus_per_pod,
                MAX_NPROC_PER_NODE,
                settings.kubernetes_max_nodes,
            )
        slots = slots if slots is not None else device_slots(settings.device)
        gpus = len(slots) if slots[0].startswith("cuda") else 0
        return cls("local", gpus, cpu_cores(), 1)

    def resolve(self, nproc_per_node: int, nnodes: int) -> tuple[int, int]:
        """(nproc_per_node, nnodes) for a job that asked for these (0: the default); `InvalidArgument`
        saying what is possible when they cannot be had."""
        nnodes = nnodes or 1
        if not 1 <= nnodes <= MAX_NNODES:
            raise InvalidArgument(f"nnodes must be between 1 and {MAX_NNODES}, got {nnodes}")
        if nnodes > self.max_nodes:
            if self.backend == "local":
                raise InvalidArgument(
                    f"nnodes={nnodes} needs the trainer's Kubernetes backend (VISION_TRAINER_BACKEND="
                    "kubernetes); this trainer trains on its own devices only: leave nnodes at 1"
                )
            raise InvalidArgument(
                f"nnodes={nnodes} is more than the {self.max_nodes} pods a job may take "
                "(VISION_TRAINER_KUBERNETES_MAX_NODES)"
            )
        if not 0 <= nproc_per_node <= MAX_NPROC_PER_NODE:
            raise InvalidArgument(
                f"nproc_per_node must be between 0 (the default) and {MAX_NPROC_PER_NODE}, "
                f"got {nproc_per_node}"
            )
        nproc = nproc_per_node or max(self.gpus, 1)
        if self.gpus and nproc > self.gpus:
            where = (
                "GPUs"
                if self.backend == "local"
                else "GPUs of a job pod (VISION_TRAINER_KUBERNETES_GPUS_PER_POD)"
            )
            raise InvalidArgument(
                f"nproc_per_node={nproc} is more than {self.owner} {self.gpus} {where}: ask for at most "
                f"{self.gpus} (one process per GPU), or 0 for all of them"
            )
        if not self.gpus and nproc > self.cpu_cores:
            raise InvalidArgument(
                f"nproc_per_node={nproc} is more than {self.owner} {self.cpu_cores} CPU cores (it trains "
                f"on CPU, gloo): ask for at most {self.cpu_cores}"
            )
        return nproc, nnodes

"""Data parallelism across processes (torch.distributed), launched the torchrun way.

A run with ``world_size`` > 1 is that many processes (ranks). Each trains on its own shard of the training
set (`DistributedSampler` with the run's seed, ``set_epoch`` every epoch) with its gradients averaged by
`DistributedDataParallel`, and validates its own slice of the validation set. The per-epoch sums (loss,
correct, images) are all-reduced, so every rank reports and decides (best epoch, early stopping) on the
same global figures. Rank 0 alone writes the checkpoint and the best weights, evaluates the best weights at
the end and writes the model; the others wait for it at a barrier.

Each rank finds its place in the environment as torchrun sets it (`LaunchEnv`: RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so the same code runs under
``python -m torch.distributed.run``, in a Kubernetes pod, or as the ranks trainer_svc spawns itself.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

from vision.errors import InvalidArgument
from vision.settings import cpu_cores

BACKENDS = ("auto", "nccl", "gloo")
# Where the errors of a collective whose peer went away come from: a lost peer, not a bad job.
_PEER_ERROR_MARKS = ("gloo", "NCCL", "ProcessGroup", "TCPStore", "Connection reset", "Connection closed")


class LaunchEnv(BaseSettings):
    """This process's place in the run, from the variables torchrun sets (unset: a run of one)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    rank: int = Field(0, ge=0)
    world_size: int = Field(1, ge=1)
    local_rank: int = Field(0, ge=0)
    local_world_size: int = Field(1, ge=1)
    master_addr: str = "127.0.0.1"
    master_port: int = Field(29500, ge=0, le=65535)

    def variables(self) -> dict[str, str]:
        """The same place as environment variables, for a process started by hand (trainer_svc's ranks)."""
        return {name.upper(): str(value) for name, value in self.model_dump().items()}


@dataclass(frozen=True)
class World:
    """The ranks of a run, seen from one of them. ``World()`` is a run of one: every method a no-op."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over every rank (float64, so image counts stay exact)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (picklable values: RNG states)."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) on every rank: each rank then validates the model rank 0
        checkpoints. Parameters need no sync: DDP keeps them equal."""
        if self.distributed:
            with torch.no_grad():
                for buffer in model.buffers():
                    dist.broadcast(buffer, 0)

    def sampler(self, dataset: Dataset[Any], seed: int) -> DistributedSampler[Any] | None:
        """This rank's shuffled shard of ``dataset`` (every rank gets as many samples: the shortest shards
        repeat a few, so every rank takes the same number of steps); None for a run of one."""
        if not self.distributed:
            return None
        return DistributedSampler(dataset, num_replicas=self.size, rank=self.rank, shuffle=True, seed=seed)

    def shard(self, dataset: Dataset[Any]) -> Dataset[Any]:
        """Every ``size``-th sample from ``rank`` on: disjoint slices that together are ``dataset`` once
        (validation must count each image once)."""
        if not self.distributed:
            return dataset
        return Subset(dataset, range(self.rank, len(dataset), self.size))  # type: ignore[arg-type]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` for training: under DDP (gradients averaged across ranks) when distributed."""
        if not self.distributed:
            return model
        device_ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (its state dict has no ``module.`` prefix)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    assert isinstance(inner, nn.Module)
    return inner


def resolve_backend(setting: str, device: torch.device) -> str:
    """'auto': nccl on CUDA, gloo on CPU; `InvalidArgument` for nccl without CUDA."""
    if setting not in BACKENDS:
        raise InvalidArgument(
            f"unknown torch.distributed backend {setting!r}; accepted: {', '.join(BACKENDS)}"
        )
    if setting == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if setting == "nccl" and device.type != "cuda":
        raise InvalidArgument("the nccl backend needs CUDA devices: use gloo (or auto) on CPU")
    return setting


def rank_device(device: torch.device, env: LaunchEnv) -> torch.device:
    """A rank's device: the one it was given, else (plain 'cuda') the GPU of its LOCAL_RANK, as torchrun's
    ranks choose theirs."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", env.local_rank)
    return device


def cpu_threads(env: LaunchEnv) -> int:
    """intra-op threads of a CPU rank: the cores this process may use (capped by the container's CPU limit)
    shared out among the node's ranks (torchrun: OMP 1)."""
    return max(1, cpu_cores() // env.local_world_size)


def join(env: LaunchEnv, backend: str, timeout_s: float, device: torch.device) -> World:
    """Join the run's process group (rendezvous at MASTER_ADDR:MASTER_PORT, env://); a run of one joins
    nothing. Every collective afterwards waits at most ``timeout_s`` seconds for the other ranks."""
    if env.world_size == 1:
        return World()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return World(env.rank, env.world_size, env.local_rank)


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away (killed, its node lost) or
    timed out: the run is to be resumed, not failed for a reason of its own."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc) for mark in _PEER_ERROR_MARKS)

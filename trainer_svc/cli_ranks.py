"""`vision train --nproc-per-node N`: the command's processes as the ranks of one run, the torchrun way.

Started by hand with N > 1, the command runs itself again under ``python -m torch.distributed.run
--nproc-per-node N --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:<free port>`` and waits for it: each rank
is ``python -m trainer_svc.cli_ranks <work dir>/command.json``, the same options (and a shared
``--work-dir``) written down as JSON. Started by torchrun (by itself, or by a user on one node or several),
each process reads its place from the environment (`LaunchEnv`), joins the others (nccl on CUDA, each rank
on the GPU of its LOCAL_RANK; gloo on CPU) and trains its shard.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from trainer_svc.jobs.slots import Placement, cpu_cores
from trainer_svc.jobs.supervisor import free_port
from trainer_svc.training import distributed
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.distributed import LaunchEnv, World
from vision.models.devices import resolve_device

DIST_TIMEOUT_S = 1800.0
COMMAND_FILE = "command.json"


def world_shape(nproc_per_node: int, device: str) -> tuple[int, int]:
    """(nproc_per_node, nnodes): torchrun's when it started this process, else what was asked for (0: one
    per GPU of ``device``, 1 on CPU), within the GPUs or cores there are."""
    env = LaunchEnv()
    if env.world_size > 1:
        return env.local_world_size, env.world_size // env.local_world_size
    gpus = torch.cuda.device_count() if resolve_device(device).type == "cuda" else 0
    return Placement("local", gpus, cpu_cores(), 1, "this machine's").resolve(nproc_per_node, 1)


def relaunched(config: TrainConfig, args: argparse.Namespace) -> int | None:
    """Run the command as ``config.nproc_per_node`` ranks under torchrun and return its exit status; None
    when this process is to train itself (one process, or a rank already)."""
    if config.world_size == 1 or LaunchEnv().world_size > 1:
        return None
    workdir = args.work_dir or Path(tempfile.mkdtemp(prefix="vision-train-"))
    workdir.mkdir(parents=True, exist_ok=True)
    options = {**vars(args), "work_dir": workdir}
    command_file = workdir / COMMAND_FILE
    command_file.write_text(
        json.dumps(
            {
                "command": options.pop("func").__name__,
                "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
                "paths": sorted(k for k, v in options.items() if isinstance(v, Path)),
            }
        )
    )
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={config.nproc_per_node}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=0",
        "-m", "trainer_svc.cli_ranks", str(command_file),
    ]  # fmt: skip
    status = subprocess.call(command)
    if args.work_dir is None and status == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


@contextmanager
def joined(device_setting: str) -> Iterator[tuple[World, torch.device]]:
    """This process's world and device: a run of one on ``device_setting``, or its rank's place."""
    env = LaunchEnv()
    device = resolve_device(device_setting)
    if env.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    if env.world_size > 1 and device.type == "cpu":
        torch.set_num_threads(distributed.cpu_threads(env))
    backend = distributed.resolve_backend("auto", device)
    world = distributed.join(env, backend, DIST_TIMEOUT_S, device)
    try:
        yield world, device
    finally:
        distributed.leave(world)


def main(argv: list[str]) -> int:
    """One rank of a relaunched command: ``python -m trainer_svc.cli_ranks COMMAND_FILE``."""
    from trainer_svc import cli
    from vision.errors import VisionError

    spec = json.loads(Path(argv[0]).read_text())
    options = {k: Path(v) if k in spec["paths"] else v for k, v in spec["options"].items()}
    command = {"cmd_train": cli.cmd_train, "cmd_food101": cli.cmd_food101}[spec["command"]]
    try:
        return command(argparse.Namespace(**options))
    except VisionError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

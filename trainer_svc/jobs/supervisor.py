"""A job's running worker processes, seen from the service: spawn them, relay what they say, notice how
they ended.

A job of one process is one worker; a job of ``nproc_per_node`` > 1 is that many ranks, each a worker
given its place as torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
127.0.0.1 and a free MASTER_PORT: `trainer_svc.training.distributed.LaunchEnv`) and its own device slot.
Each is started with the 'spawn' context (a fresh interpreter: no inherited threads, locks or CUDA state)
and talks through a one-way pipe of its own; rank 0's events are relayed, every rank's last word kept. A
thread per rank reads its pipe until it closes, then reaps the process. When one rank ends without
finishing, the others are stopped after `PEER_GRACE_S` (they would wait for it in their next collective).
Once all have ended, ``on_exit(outcome, how)`` is called with the job's outcome (`combine`): {"type":
"done" | "failed" | "cancelled"} or None when a rank died without one (killed, out of memory, crashed, or
lost its peers), and ``how`` in words ("the training process was killed by SIGKILL").
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_svc.config import TrainerSettings
from trainer_svc.jobs import worker
from trainer_svc.jobs.worker import WorkerArgs
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.distributed import LaunchEnv

log = logging.getLogger(__name__)
SPAWN = multiprocessing.get_context("spawn")

OnMessage = Callable[[dict[str, Any]], None]
OnExit = Callable[[dict[str, Any] | None, str], None]
PEER_GRACE_S = 5.0
OUTCOMES = ("done", "failed", "cancelled", "lost")


def describe_exit(exitcode: int | None) -> str:
    """A process exit status in words ("killed by SIGKILL (out of memory?)", "exited with status 1")."""
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the system may have run out of memory)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode}"


@dataclass
class RankEnd:
    """How one rank ended: its last word (None: it said nothing) and its exit status (None: unknown, as
    for a pod)."""

    rank: int
    outcome: dict[str, Any] | None
    exitcode: int | None = None

    @property
    def kind(self) -> str | None:
        return (self.outcome or {}).get("type")


def combine(ends: list[RankEnd], world_size: int) -> tuple[dict[str, Any] | None, str]:
    """The job's outcome from its ranks' ends, and how it ended in words.

    Rank 0 done: done (the model is written). Else a cancel, else a rank's own failure (the lowest rank's
    reason): that. Else the job crashed (None): a rank died without a word, or lost its peers (a collective
    failed because another rank went away); it is resumed from its checkpoint like a killed worker.
    """
    ends = sorted(ends, key=lambda e: e.rank)
    main = ends[0] if ends and ends[0].rank == 0 else RankEnd(0, None)
    if main.kind == "done":
        return main.outcome, "the training processes finished"
    for kind in ("cancelled", "failed"):
        chosen = next((e for e in ends if e.kind == kind), None)
        if chosen is not None:
            return chosen.outcome, f"{_who(chosen.rank, world_size)} {kind}"
    said = {e.rank for e in ends if e.outcome is not None}
    silent = next((e for e in ends if e.outcome is None), None)
    if silent is None:
        silent = next((RankEnd(r, None) for r in range(world_size) if r not in said), None)
    if silent is not None:
        return None, f"{_who(silent.rank, world_size)} {describe_exit(silent.exitcode)}"
    return None, f"{_who(0, world_size)} lost its connection to the other ranks"


def _who(rank: int, world_size: int) -> str:
    return (
        "the training process"
        if world_size == 1
        else f"the training process of rank {rank} (of {world_size})"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now, for rank 0's rendezvous store (taken by then: the job crashes
    and is resumed on another)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def worker_args(
    s: TrainerSettings,
    job_id: str,
    config: TrainConfig,
    workdir: Path,
    device: str,
    *,
    launch: dict[str, str] | None = None,
    parent_pid: int | None = None,
) -> WorkerArgs:
    """What one worker of ``job_id`` on ``device`` needs, from the service's settings (``launch``: its
    torchrun variables; ``parent_pid`` 0: no parent to watch)."""
    return WorkerArgs(
        job_id=job_id,
        config=config,
        workdir=str(workdir),
        model_dir=str(s.model_dir.resolve()),
        device=device,
        parent_pid=os.getpid() if parent_pid is None else parent_pid,
        loader_workers=s.loader_workers,
        torch_threads=s.torch_threads,
        progress_interval_s=s.progress_interval_s,
        image_limits=s.image_limits,
        min_images_per_class=s.min_images_per_class,
        pretrained_url=s.pretrained_url,
        pretrained_timeout_s=s.pretrained_timeout_s,
        food101_handle=s.food101_handle,
        kagglehub_cache=str(s.kagglehub_cache or ""),
        datasets_root=str(s.image_folder_root.resolve()),
        log_level=s.log_level,
        log_json=s.log_json,
        dist_backend=s.dist_backend,
        dist_timeout_s=s.dist_timeout_s,
        launch=launch or {},
    )


def rank_args(
    s: TrainerSettings, job_id: str, config: TrainConfig, workdir: Path, slots: list[str]
) -> list[WorkerArgs]:
    """One WorkerArgs per process of ``config.nproc_per_node``, each with its torchrun variables and its
    own slot (a GPU each; all on the one 'cpu' slot without GPUs)."""
    ranks = config.nproc_per_node
    if ranks == 1:
        return [worker_args(s, job_id, config, workdir, slots[0])]
    port = free_port()
    return [
        worker_args(
            s,
            job_id,
            config,
            workdir,
            slots[rank] if len(slots) == ranks else slots[0],
            launch=LaunchEnv(
                rank=rank, world_size=ranks, local_rank=rank, local_world_size=ranks, master_port=port
            ).variables(),
        )
        for rank in range(ranks)
    ]


class _Rank:
    """One rank's process and the read end of its pipe."""

    def __init__(self, args: WorkerArgs, cancel: Any) -> None:
        receiver, sender = SPAWN.Pipe(duplex=False)
        self.conn = receiver
        rank = int(args.launch.get("RANK", 0))
        self.rank = rank
        self.process = SPAWN.Process(
            target=worker.main,
            args=(args, sender, cancel),
            name=f"trainer-job-{args.job_id}" + (f"-rank{rank}" if args.launch else ""),
            daemon=False,  # a daemonic process may not start DataLoader workers
        )
        self.process.start()
        sender.close()  # the worker holds the only writer: the pipe closes when it exits


class WorkerHandle:
    def __init__(self, ranks: list[WorkerArgs], on_message: OnMessage, on_exit: OnExit) -> None:
        self.args = ranks[0]
        self._on_message, self._on_exit = on_message, on_exit
        self._cancel = SPAWN.Event()
        self._lock = threading.Lock()
        self._ends: list[RankEnd] = []
        self._peers_stopping = False
        self._ranks = [_Rank(args, self._cancel) for args in ranks]
        self._readers = [
            threading.Thread(
                target=self._read, args=(r,), name=f"job-{self.args.job_id}-{r.rank}", daemon=True
            )
            for r in self._ranks
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int | None:
        """Rank 0's process id."""
        return self._ranks[0].process.pid

    @property
    def pids(self) -> list[int | None]:
        """Every rank's process id, in rank order."""
        return [r.process.pid for r in self._ranks]

    def _read(self, rank: _Rank) -> None:
        outcome: dict[str, Any] | None = None
        while True:
            try:
                message = rank.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a message cut short by a kill cannot be unpickled: the worker is gone
                log.warning("job %s: unreadable message from rank %d", self.args.job_id, rank.rank)
                break
            if message.get("type") in OUTCOMES:
                outcome = message
            elif rank.rank == 0:
                try:
                    self._on_message(message)
                except Exception:
                    log.exception("job %s: could not record a worker message", self.args.job_id)
        rank.process.join()
        rank.conn.close()
        self._ended(RankEnd(rank.rank, outcome, rank.process.exitcode))

    def _ended(self, end: RankEnd) -> None:
        with self._lock:
            self._ends.append(end)
            done = len(self._ends) == len(self._ranks)
            stop_peers = not done and end.kind != "done" and not self._peers_stopping
            self._peers_stopping |= stop_peers
        if stop_peers:
            log.warning(
                "job %s: rank %d ended (%s); stopping the other ranks",
                self.args.job_id,
                end.rank,
                end.kind or describe_exit(end.exitcode),
            )
            self._after(PEER_GRACE_S, self.kill)
        if done:
            outcome, how = combine(self._ends, len(self._ranks))
            self._on_exit(outcome, how)

    @staticmethod
    def _after(seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        timer.start()

    def cancel(self, grace_s: float) -> None:
        """Ask every rank to stop at its next step; kill them if they have not within ``grace_s`` seconds."""
        self._cancel.set()
        self._after(grace_s, self.kill)

    def kill(self) -> None:
        for rank in self._ranks:
            if rank.process.is_alive():
                rank.process.kill()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the ranks (service shutdown) and wait for the readers to see them go."""
        for rank in self._ranks:
            if rank.process.is_alive():
                rank.process.terminate()
        for rank in self._ranks:
            rank.process.join(timeout_s)
        self.kill()
        for reader in self._readers:
            reader.join(timeout_s)

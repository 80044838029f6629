"""One running worker process, seen from the service: spawn it, relay what it says, notice how it ended.

The worker is started with the 'spawn' context (a fresh interpreter: no inherited threads, locks or CUDA
state) and talks through a one-way pipe. A thread reads the pipe until it closes, then reaps the process
and calls ``on_exit(outcome, exitcode)``: ``outcome`` is the worker's last word ({"type": "done" |
"failed" | "cancelled"}) or None when it died without one (killed, out of memory, crashed).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer_svc.config import TrainerSettings
from trainer_svc.jobs import worker
from trainer_svc.jobs.worker import WorkerArgs
from trainer_svc.training.config import TrainConfig

log = logging.getLogger(__name__)
SPAWN = multiprocessing.get_context("spawn")

OnMessage = Callable[[dict[str, Any]], None]
OnExit = Callable[[dict[str, Any] | None, int | None], None]


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


def worker_args(s: TrainerSettings, job_id: str, config: TrainConfig, workdir: Path, slot: str) -> WorkerArgs:
    """What the worker of ``job_id`` on device ``slot`` needs, from the service's settings."""
    return WorkerArgs(
        job_id=job_id,
        config=config,
        workdir=str(workdir),
        model_dir=str(s.model_dir.resolve()),
        device=slot,
        parent_pid=os.getpid(),
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
    )


class WorkerHandle:
    def __init__(self, args: WorkerArgs, on_message: OnMessage, on_exit: OnExit) -> None:
        self.args = args
        self._on_message, self._on_exit = on_message, on_exit
        self._cancel = SPAWN.Event()
        receiver, sender = SPAWN.Pipe(duplex=False)
        self._conn = receiver
        self.process = SPAWN.Process(
            target=worker.main,
            args=(args, sender, self._cancel),
            name=f"trainer-job-{args.job_id}",
            daemon=False,  # a daemonic process may not start DataLoader workers
        )
        self.process.start()
        sender.close()  # the worker holds the only writer: the pipe closes when it exits
        self._reader = threading.Thread(target=self._read, name=f"job-{args.job_id}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def _read(self) -> None:
        outcome: dict[str, Any] | None = None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a message cut short by a kill cannot be unpickled: the worker is gone
                log.warning("job %s: unreadable message from the worker", self.args.job_id)
                break
            if message.get("type") in ("done", "failed", "cancelled"):
                outcome = message
            else:
                try:
                    self._on_message(message)
                except Exception:
                    log.exception("job %s: could not record a worker message", self.args.job_id)
        self.process.join()
        self._conn.close()
        self._on_exit(outcome, self.process.exitcode)

    def cancel(self, grace_s: float) -> None:
        """Ask the worker to stop at its next step; kill it if it has not within ``grace_s`` seconds."""
        self._cancel.set()
        timer = threading.Timer(grace_s, self.kill)
        timer.daemon = True
        timer.start()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the worker (service shutdown) and wait for the reader to see it go."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
        self._reader.join(timeout_s)

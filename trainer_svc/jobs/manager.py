"""Jobs: accepted, queued, run one per device in a worker process, recorded, resumed, cancelled.

One scheduler thread hands queued jobs, in order, to free device slots (`jobs.slots`: one per GPU, a job
of N processes taking N of them; one CPU slot without GPUs; with the Kubernetes backend, one per job
running as a Kubernetes Job). A job's ranks run as local worker processes (`jobs.supervisor`) or as the
pods of a Kubernetes Job (`jobs.cluster`); either way its events come back to `JobRecords`. Every
transition goes through the job database's conditional updates, so a job is started, finished or
published once. On start, jobs the database says were RUNNING (the service stopped or crashed under them)
are queued first and resume from their last epoch checkpoint; a worker that dies (killed, out of memory)
is resumed the same way, up to ``max_attempts`` starts, then the job fails with the reason.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import uuid
from collections import deque
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from trainer_svc.config import TrainerSettings
from trainer_svc.errors import logged
from trainer_svc.jobs.database import DB_FILE, JobDB, JobRow, JobState
from trainer_svc.jobs.records import JobRecords
from trainer_svc.jobs.slots import Placement, SlotPool, backend_slots
from trainer_svc.jobs.supervisor import OnExit, OnMessage, WorkerHandle, rank_args
from trainer_svc.jobs.uploads import UploadLimits, UploadWriter
from trainer_svc.jobs.worker import DATASET_DIR
from trainer_svc.telemetry import TrainerTelemetry
from trainer_svc.training.config import TrainConfig
from vision.errors import Conflict, NotFound, QuotaExceeded
from vision.models.store import ModelStore

log = logging.getLogger(__name__)
RUNNING, QUEUED = JobState.RUNNING, JobState.QUEUED
OLD_DB_FILE = "trainer.sqlite3"  # the protobuf-blob format before jobs.sqlite3: not read any more


class JobNotFound(NotFound):
    """No job with that id."""


class JobConflict(Conflict):
    """The job has already ended."""


class ActiveJobsLimit(QuotaExceeded):
    """The owner has as many unfinished jobs as its quota allows."""

    @classmethod
    def of(cls, owner: str, limit: int) -> ActiveJobsLimit:
        return cls(
            f"{owner} has {limit} queued or running jobs, its limit: wait for one to end or cancel one"
        )


class JobPublishing(JobConflict):
    """The job finished training and is publishing its model: too late to cancel it."""


class Run(Protocol):
    """A job's running ranks, local processes or a Kubernetes Job: how the manager stops them."""

    @property
    def pids(self) -> list[int | None]: ...

    def cancel(self, grace_s: float) -> None: ...

    def stop(self) -> None: ...


class Cluster(Protocol):
    """Starts jobs as Kubernetes Jobs (`trainer_svc.jobs.cluster.Cluster`)."""

    def run(
        self,
        job_id: str,
        config: TrainConfig,
        workdir: Any,
        attempt: int,
        on_message: OnMessage,
        on_exit: OnExit,
    ) -> Run: ...

    def delete_all(self) -> None: ...


class JobManager:
    def __init__(self, settings: TrainerSettings, cluster: Cluster | None = None) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.jobs_dir = self.data_dir / "jobs"
        self.uploads_dir = self.data_dir / "uploads"
        self.store = ModelStore(settings.model_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.data_dir / "trainer.lock", "w")  # noqa: SIM115 -- held for our lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(
                f"another trainer_svc already uses the data directory {self.data_dir}"
            ) from None
        if (self.data_dir / OLD_DB_FILE).exists() and not (self.data_dir / DB_FILE).exists():
            log.warning(
                "%s is an older job database format: its job history is not carried over to %s",
                self.data_dir / OLD_DB_FILE,
                DB_FILE,
            )
        self.db = JobDB(self.data_dir / DB_FILE)
        self.metrics_registry = CollectorRegistry()  # served with the server's on the metrics port
        self.telemetry = TrainerTelemetry(self.metrics_registry, self.db.count_by_state)
        self.records = JobRecords(
            self.db,
            self.store,
            self.jobs_dir,
            keep_job_files=settings.keep_job_files,
            telemetry=self.telemetry,
        )
        self.slots = backend_slots(settings)
        self._pool = SlotPool(self.slots)
        self.placement = Placement.of(settings, self.slots if settings.backend == "local" else None)
        if settings.backend == "kubernetes" and cluster is None:
            from trainer_svc.jobs.cluster import Cluster as KubernetesCluster  # the kubernetes client

            cluster = KubernetesCluster(settings)
        self._cluster = cluster
        self._queue: deque[str] = deque()
        self._needs: dict[str, int] = {}
        self._running: dict[str, Run] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._schedule, name="job-scheduler", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Clean what crashed uploads left, queue unfinished jobs (interrupted ones first), schedule."""
        shutil.rmtree(self.uploads_dir, ignore_errors=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        if self._cluster is not None:  # pods of a trainer that stopped or crashed: the jobs resume anew
            self._cluster.delete_all()
        unfinished = self.db.unfinished()
        known = {row.id for row in unfinished}
        if self.jobs_dir.is_dir():
            for path in self.jobs_dir.iterdir():
                if path.name not in known and not self.settings.keep_job_files:
                    shutil.rmtree(path, ignore_errors=True)
        for row in sorted(unfinished, key=lambda r: (r.state != RUNNING, r.seq)):
            if row.state == RUNNING and row.cancel_requested:
                self.records.finish(row.id, JobState.CANCELLED, message="cancelled")
                continue
            if row.state == RUNNING:
                log.info("job %s was interrupted: it resumes from its last checkpoint", row.id)
            self._queue.append(row.id)
        self._thread.start()

    def close(self) -> None:
        """Stop scheduling and stop running workers; their jobs stay RUNNING and resume on next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            running = list(self._running.items())
        for job_id, handle in running:
            handle.stop()
            row = self.db.get(job_id)
            if row is not None:  # stopped by us, not crashed: this start does not count towards max_attempts
                self.db.set_attempts(row.id, max(0, row.attempts - 1))
        self._thread.join(5)
        self.db.close()
        self._lock_file.close()

    # -- requests ----------------------------------------------------------------------------------------
    def new_upload(self, class_names: list[str], max_bytes: int | None = None) -> UploadWriter:
        """A writer for one upload, within the upload limits (and ``max_bytes``, a caller's quota)."""
        limit = (
            self.settings.max_upload_bytes
            if max_bytes is None
            else min(max_bytes, self.settings.max_upload_bytes)
        )
        limits = UploadLimits(self.settings.max_upload_files, limit, self.settings.image_limits)
        return UploadWriter(self.uploads_dir, class_names, limits)

    def submit(
        self,
        spec: dict[str, Any],
        config: TrainConfig,
        class_counts: dict[str, int],
        upload: UploadWriter | None,
        *,
        owner: str = "",
        max_active: int = 0,
    ) -> JobRow:
        """Record a QUEUED job of ``owner`` (its uploaded images moved under the job first) and wake the
        scheduler; `ActiveJobsLimit` when ``owner`` has ``max_active`` unfinished jobs already (0: no limit).

        ``spec`` is the request as sent (kept to show it back), ``config`` the validated run it asks for.
        """
        job_id = uuid.uuid4().hex[:16]
        if upload is not None:
            upload.commit(self.jobs_dir / job_id / DATASET_DIR)
        if not self.db.insert(job_id, spec, config, class_counts, owner=owner, max_active=max_active):
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            raise ActiveJobsLimit.of(owner, max_active)
        with self._cond:
            self._queue.append(job_id)
            self._cond.notify_all()
        self.records.notify()
        return self.get(job_id)

    def get(self, job_id: str) -> JobRow:
        row = self.db.get(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return row

    def cancel(self, job_id: str) -> JobRow:
        """Queued: cancelled at once. Running: asked to stop at its next step (killed after a grace).
        Publishing (or ended): `JobConflict`, nothing changes."""
        with self._cond:
            if not self.db.request_cancel(job_id):  # one transaction against the publisher's
                row = self.get(job_id)
                if row.state == JobState.PUBLISHING:
                    raise JobPublishing(
                        f"job {job_id} has finished training and is publishing its model: it can no longer "
                        "be cancelled"
                    )
                raise JobConflict(f"job {job_id} already {row.state.value}: nothing to cancel")
            handle = self._running.get(job_id)
            if handle is None:
                row = self.get(job_id)
                if job_id in self._queue:
                    self._queue.remove(job_id)
                note = "cancelled before it started" if row.state == QUEUED else "cancelled"
                self.records.finish(job_id, JobState.CANCELLED, message=note)
        if handle is not None:
            handle.cancel(self.settings.cancel_grace_s)
        return self.get(job_id)

    def worker_pid(self, job_id: str) -> int | None:
        """The process id of the job's rank 0, while it runs locally."""
        pids = self.worker_pids(job_id)
        return pids[0] if pids else None

    def worker_pids(self, job_id: str) -> list[int | None]:
        """The process ids of the job's ranks in rank order, while it runs locally ([] otherwise)."""
        with self._cond:
            handle = self._running.get(job_id)
        return handle.pids if handle is not None else []

    # -- scheduling --------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (taken := self._next()) is None:
                    self._cond.wait()
                if self._stopping:
                    return
                assert taken is not None
                job_id, slots = taken
            try:
                started = self._launch(job_id, slots)
            except Exception as exc:
                error = logged(log, "the job could not start", exc, where=f"job {job_id}", traceback=True)
                self.records.finish(job_id, JobState.FAILED, error=error)
                started = False
            if not started:
                self._release(slots)

    def _next(self) -> tuple[str, list[str]] | None:
        """The job at the head of the queue with the slots it takes, if they are free (lock held)."""
        if not self._queue:
            return None
        job_id = self._queue[0]
        if job_id not in self._needs:
            row = self.db.get(job_id)
            self._needs[job_id] = self._pool.needed(row.config) if row is not None else 1
        slots = self._pool.take(min(self._needs[job_id], len(self.slots)))
        if slots is None:
            return None
        self._queue.popleft()
        return job_id, slots

    def _release(self, slots: list[str]) -> None:
        with self._cond:
            self._pool.give(slots)
            self._cond.notify_all()

    def _where(self, config: TrainConfig, slots: list[str]) -> str:
        if self.settings.backend == "kubernetes":
            return f"Kubernetes ({config.nnodes} pod(s) of {config.nproc_per_node} process(es))"
        ranks = f" ({config.nproc_per_node} processes)" if config.nproc_per_node > 1 else ""
        return ", ".join(slots) + ranks

    def _launch(self, job_id: str, slots: list[str]) -> bool:
        """Start ``job_id`` on ``slots``; False when there was nothing to run (finished, cancelled)."""
        row = self.db.get(job_id)
        self._needs.pop(job_id, None)
        if row is None or row.terminal:
            return False
        workdir = self.jobs_dir / job_id
        if self.records.already_trained(row):
            self.records.publish(row)  # trained before a restart: publish, never train again
            return False
        if row.attempts >= self.settings.max_attempts:
            self.records.finish(
                job_id,
                JobState.FAILED,
                error=f"gave up after {row.attempts} start(s) without finishing",
            )
            return False
        if len(slots) < self._pool.needed(row.config):
            self.records.finish(
                job_id,
                JobState.FAILED,
                error=f"the job asks for {row.config.nproc_per_node} GPUs and this trainer has "
                f"{len(self.slots)}",
            )
            return False
        where = self._where(row.config, slots)
        with self._cond:  # serialised with cancel(): a job is either cancelled here or handed to a worker
            current = self.db.get(job_id)
            if self._stopping or current is None or current.terminal or current.cancel_requested:
                if current is not None and current.cancel_requested:
                    self.records.finish(job_id, JobState.CANCELLED, message="cancelled")
                return False
            attempt = row.attempts + 1
            self.db.set_attempts(job_id, attempt)
            if row.state == QUEUED:
                self.db.transition(job_id, (QUEUED,), RUNNING, message=f"running on {where}")
            else:
                self.records.note(job_id, f"resuming on {where} from the last checkpoint (start {attempt})")
            self.telemetry.job_started(job_id)
            on_message: OnMessage = lambda message: self.records.worker_message(job_id, message)  # noqa: E731
            on_exit: OnExit = lambda outcome, how: self._on_exit(job_id, slots, outcome, how)  # noqa: E731
            if self._cluster is not None:
                run = self._cluster.run(job_id, row.config, workdir, attempt, on_message, on_exit)
            else:
                ranks = rank_args(self.settings, job_id, row.config, workdir, slots)
                run = WorkerHandle(ranks, on_message=on_message, on_exit=on_exit)
            self._running[job_id] = run
        return True

    # -- how workers end ----------------------------------------------------------------------------
    def _on_exit(self, job_id: str, slots: list[str], outcome: dict[str, Any] | None, how: str) -> None:
        with self._cond:
            self._running.pop(job_id, None)
            stopping = self._stopping
        try:
            if not stopping:
                self._settle(job_id, outcome, how)
        except Exception:
            log.exception("job %s: could not record how it ended", job_id)
        finally:
            self._release(slots)

    def _settle(self, job_id: str, outcome: dict[str, Any] | None, how: str) -> None:
        """Record how the job's run ended: ``outcome`` is its last word (None: it crashed, ``how``)."""
        row = self.get(job_id)
        kind = (outcome or {}).get("type")
        if kind == "done":
            self.records.publish(row)
        elif row.cancel_requested or kind == "cancelled":
            self.records.finish(job_id, JobState.CANCELLED, message="cancelled")
        elif kind == "failed":
            self.records.finish(job_id, JobState.FAILED, error=str(outcome["reason"]))  # type: ignore[index]
        else:
            reason = how
            if row.attempts >= self.settings.max_attempts:
                self.records.finish(
                    job_id, JobState.FAILED, error=f"{reason}; gave up after {row.attempts} start(s)"
                )
                return
            self.records.note(job_id, f"{reason}; resuming from the last checkpoint")
            with self._cond:
                self._queue.appendleft(job_id)
                self._cond.notify_all()

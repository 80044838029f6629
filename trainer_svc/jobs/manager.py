"""Jobs: accepted, queued, run one per device in a worker process, recorded, resumed, cancelled.

One scheduler thread hands queued jobs to free device slots (one per GPU; one CPU slot without GPUs). Every
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
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from trainer_svc.config import TrainerSettings
from trainer_svc.errors import logged
from trainer_svc.jobs.database import DB_FILE, JobDB, JobRow, JobState
from trainer_svc.jobs.records import JobRecords
from trainer_svc.jobs.supervisor import WorkerHandle, describe_exit, worker_args
from trainer_svc.jobs.uploads import UploadLimits, UploadWriter
from trainer_svc.jobs.worker import DATASET_DIR
from trainer_svc.telemetry import TrainerTelemetry
from trainer_svc.training.config import TrainConfig
from vision.errors import Conflict, NotFound, QuotaExceeded
from vision.models.devices import resolve_device
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


def device_slots(spec: str) -> list[str]:
    """One slot per GPU for 'auto' (with GPUs) or 'cuda'; just that device for 'cuda:N' or 'cpu'."""
    device = resolve_device(spec)
    if device.type == "cuda" and spec in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(device)]


class JobManager:
    def __init__(self, settings: TrainerSettings) -> None:
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
        self.slots = device_slots(settings.device)
        self._free = list(reversed(self.slots))
        self._queue: deque[str] = deque()
        self._running: dict[str, WorkerHandle] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._schedule, name="job-scheduler", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Clean what crashed uploads left, queue unfinished jobs (interrupted ones first), schedule."""
        shutil.rmtree(self.uploads_dir, ignore_errors=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
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
            running = list(self._running.values())
        for handle in running:
            handle.stop()
            row = self.db.get(handle.args.job_id)
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
        with self._cond:
            handle = self._running.get(job_id)
        return handle.pid if handle is not None else None

    # -- scheduling --------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (self._queue and self._free):
                    self._cond.wait()
                if self._stopping:
                    return
                job_id, slot = self._queue.popleft(), self._free.pop()
            try:
                started = self._launch(job_id, slot)
            except Exception as exc:
                error = logged(log, "the job could not start", exc, where=f"job {job_id}", traceback=True)
                self.records.finish(job_id, JobState.FAILED, error=error)
                started = False
            if not started:
                self._release(slot)

    def _release(self, slot: str) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def _launch(self, job_id: str, slot: str) -> bool:
        """Start ``job_id`` on ``slot``; False when there was nothing to run (finished, cancelled)."""
        row = self.db.get(job_id)
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
        with self._cond:  # serialised with cancel(): a job is either cancelled here or handed to a worker
            current = self.db.get(job_id)
            if self._stopping or current is None or current.terminal or current.cancel_requested:
                if current is not None and current.cancel_requested:
                    self.records.finish(job_id, JobState.CANCELLED, message="cancelled")
                return False
            self.db.set_attempts(job_id, row.attempts + 1)
            if row.state == QUEUED:
                self.db.transition(job_id, (QUEUED,), RUNNING, message=f"running on {slot}")
            else:
                self.records.note(
                    job_id, f"resuming on {slot} from the last checkpoint (start {row.attempts + 1})"
                )
            self.telemetry.job_started(job_id)
            self._running[job_id] = WorkerHandle(
                worker_args(self.settings, job_id, row.config, workdir, slot),
                on_message=lambda message: self.records.worker_message(job_id, message),
                on_exit=lambda outcome, code: self._on_exit(job_id, slot, outcome, code),
            )
        return True

    # -- how workers end ----------------------------------------------------------------------------
    def _on_exit(self, job_id: str, slot: str, outcome: dict[str, Any] | None, exitcode: int | None) -> None:
        with self._cond:
            self._running.pop(job_id, None)
            stopping = self._stopping
        try:
            if not stopping:
                self._settle(job_id, outcome, exitcode)
        except Exception:
            log.exception("job %s: could not record how it ended", job_id)
        finally:
            self._release(slot)

    def _settle(self, job_id: str, outcome: dict[str, Any] | None, exitcode: int | None) -> None:
        row = self.get(job_id)
        kind = (outcome or {}).get("type")
        if kind == "done":
            self.records.publish(row)
        elif row.cancel_requested or kind == "cancelled":
            self.records.finish(job_id, JobState.CANCELLED, message="cancelled")
        elif kind == "failed":
            self.records.finish(job_id, JobState.FAILED, error=str(outcome["reason"]))  # type: ignore[index]
        else:
            reason = f"the training process {describe_exit(exitcode)}"
            if row.attempts >= self.settings.max_attempts:
                self.records.finish(
                    job_id, JobState.FAILED, error=f"{reason}; gave up after {row.attempts} start(s)"
                )
                return
            self.records.note(job_id, f"{reason}; resuming from the last checkpoint")
            with self._cond:
                self._queue.appendleft(job_id)
                self._cond.notify_all()

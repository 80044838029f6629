"""What happens to jobs, written down: final states, published models, events, and a signal for watchers.

Every ending goes through `finish` (one conditional state change in the job database, so a job ends once
whoever tries) and `publish` (idempotent: a job whose version is in the store is never published again).
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainer_svc.errors import is_disk_full, logged
from trainer_svc.jobs.database import (
    CANCELLABLE,
    UNFINISHED,
    EventKind,
    JobDB,
    JobEvent,
    JobResult,
    JobRow,
    JobState,
)
from trainer_svc.telemetry import TrainerTelemetry
from trainer_svc.training.events import TrainEvent
from trainer_svc.training.publishing import FINAL_DIR, find_published, publish_final, read_report
from vision.models.store import ModelStore

log = logging.getLogger(__name__)


class JobRecords:
    def __init__(
        self,
        db: JobDB,
        store: ModelStore,
        jobs_dir: Path,
        *,
        keep_job_files: bool = False,
        telemetry: TrainerTelemetry | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.db, self.store, self.jobs_dir = db, store, jobs_dir
        self.keep_job_files = keep_job_files
        self._changed = threading.Condition()

    def wait_for_change(self, timeout: float) -> None:
        """Block until any job records something (or ``timeout`` seconds pass): for watchers."""
        with self._changed:
            self._changed.wait(timeout)

    def notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def worker_message(self, job_id: str, message: dict[str, Any]) -> None:
        """A worker's event or dataset summary (the pipe protocol of `trainer_svc.jobs.worker`)."""
        if message["type"] == "dataset":
            self.dataset_loaded(job_id, message["class_counts"])
        elif message["type"] == "event":
            self.train_event(job_id, message["event"])

    def train_event(self, job_id: str, event: TrainEvent) -> None:
        """A running job's progress, epoch results or note, from its worker."""
        self.db.add_event(job_id, JobEvent(**asdict(event), state=JobState.RUNNING))
        if event.kind == "epoch" and self.telemetry is not None:
            self.telemetry.epoch_done(job_id, event.images_per_second)
        self.notify()

    def dataset_loaded(self, job_id: str, class_counts: dict[str, int]) -> None:
        """The worker counted the job's images per class."""
        self.db.set_class_counts(job_id, class_counts)
        self.notify()

    def note(self, job_id: str, text: str) -> None:
        """A message event on a running job (resumed, worker died ...)."""
        self.db.add_event(job_id, JobEvent(EventKind.MESSAGE, message=text, state=JobState.RUNNING))
        self.notify()

    def already_trained(self, row: JobRow) -> bool:
        """The job's model is published or fully written out: it only needs (re)publishing."""
        published = find_published(self.store, row.config.model_name, row.id)
        return published is not None or (self.jobs_dir / row.id / FINAL_DIR).is_dir()

    def publish(self, row: JobRow) -> bool:
        """Publish the job's finished model (unless it already is) and mark the job SUCCEEDED.

        One guarded step: the job first moves to PUBLISHING, only if nobody asked to cancel it (the same
        transaction a cancel would need, so a cancel then answers 409); from there only this publisher ends
        it. A job whose cancel came first is cancelled instead and nothing is published. False: not
        published (cancelled, or failed with the reason).
        """
        started = self.db.transition(
            row.id,
            (JobState.RUNNING, JobState.PUBLISHING),  # PUBLISHING: the service stopped mid-publish
            JobState.PUBLISHING,
            message="publishing the model",
            unless_cancel_requested=True,
        )
        self.notify()
        if not started:
            current = self.db.get(row.id)
            if current is not None and current.cancel_requested:
                self.finish(row.id, JobState.CANCELLED, message="cancelled")
            return False
        name = row.config.model_name
        try:
            version = find_published(self.store, name, row.id) or publish_final(
                self.store, self.jobs_dir / row.id / FINAL_DIR, name, row.id, principal=row.owner
            )
            result = JobResult(version.name, version.version, read_report(version).evaluation)
        except Exception as exc:
            if is_disk_full(exc):
                log.error("job %s: the model store is full: %s", row.id, exc)
                error = "publishing the model failed: the model store's disk is full"
            else:
                error = logged(log, "publishing the model failed", exc, where=f"job {row.id}", traceback=True)
            self.finish(row.id, JobState.FAILED, error=error)
            return False
        return self.finish(
            row.id,
            JobState.SUCCEEDED,
            result=result,
            message=f"published {version.name} version {version.version}",
        )

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        message: str = "",
        error: str | None = None,
        result: JobResult | None = None,
    ) -> bool:
        """End an unfinished job in ``state`` and remove its files; False if it had already ended (or, for
        CANCELLED, if it is publishing: only its publisher ends it then)."""
        from_states = CANCELLABLE if state == JobState.CANCELLED else UNFINISHED
        moved = self.db.transition(job_id, from_states, state, message=message, error=error, result=result)
        if moved:
            if not self.keep_job_files:
                shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            log.info("job %s %s %s", job_id, state.value, error or message)
            if self.telemetry is not None:
                self.telemetry.job_finished(job_id, state)
        self.notify()
        return moved

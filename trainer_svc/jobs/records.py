"""What happens to jobs, written down: final states, published models, events, and a signal for watchers.

Every ending goes through `finish` (one conditional state change in the job database, so a job ends once
whoever tries) and `publish` (idempotent: a job whose version is in the store is never published again).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from trainer_svc.jobdb import JobDB, JobRow
from trainer_svc.publishing import FINAL_DIR, find_published, publish_final
from trainer_svc.results import job_result, train_event_proto
from trainer_svc.train_config import TrainConfig
from vision.errors import VisionError
from vision.models.store import ModelStore
from vision.v1 import trainer_pb2

log = logging.getLogger(__name__)
S = trainer_pb2
UNFINISHED = (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING)


class JobRecords:
    def __init__(self, db: JobDB, store: ModelStore, jobs_dir: Path, *, keep_job_files: bool = False) -> None:
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
        """A worker's event or dataset summary (trainer_svc.worker's pipe protocol)."""
        if message["type"] == "dataset":
            self.db.update(job_id, class_counts=json.dumps(message["class_counts"]))
        elif message["type"] == "event":
            self.db.add_event(train_event_proto(job_id, message))
        self.notify()

    def note(self, job_id: str, text: str) -> None:
        """A message event on a running job (resumed, worker died ...)."""
        event = trainer_pb2.JobEvent(
            job_id=job_id, kind=S.JobEvent.KIND_MESSAGE, state=S.JOB_STATE_RUNNING, message=text
        )
        self.db.add_event(event)
        self.notify()

    def already_trained(self, row: JobRow, config: TrainConfig) -> bool:
        """The job's model is published or fully written out: it only needs (re)publishing."""
        published = find_published(self.store, config.model_name, row.id)
        return published is not None or (self.jobs_dir / row.id / FINAL_DIR).is_dir()

    def publish(self, row: JobRow, config: TrainConfig) -> None:
        """Publish the job's finished model (unless it already is) and mark the job SUCCEEDED."""
        try:
            version = find_published(self.store, config.model_name, row.id) or publish_final(
                self.store, self.jobs_dir / row.id / FINAL_DIR, config.model_name, row.id
            )
            result = job_result(version)
        except (OSError, VisionError, ValueError, KeyError) as exc:
            self.finish(row.id, S.JOB_STATE_FAILED, error=f"publishing the model failed: {exc}")
            return
        self.finish(
            row.id,
            S.JOB_STATE_SUCCEEDED,
            result=result.SerializeToString(),
            message=f"published {version.name} version {version.version}",
        )

    def finish(
        self,
        job_id: str,
        state: int,
        *,
        message: str = "",
        error: str | None = None,
        result: bytes | None = None,
    ) -> bool:
        """End an unfinished job in ``state`` and remove its files; False if it had already ended."""
        moved = self.db.transition(job_id, UNFINISHED, state, message=message, error=error, result=result)
        if moved:
            if not self.keep_job_files:
                shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            name = S.JobState.Name(state)[len("JOB_STATE_") :].lower()  # type: ignore[arg-type]
            log.info("job %s %s %s", job_id, name, error or message)
        self.notify()
        return moved

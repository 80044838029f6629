"""The job database (SQLite under the data directory): jobs and every event they emitted.

State changes are conditional updates (``UPDATE ... WHERE state IN (...)``), each in one transaction with
the STATE event that announces it: a job moves from one state to the next exactly once, whoever asks, and
a watcher that sees the new state also finds its event. One connection, guarded by a lock, serves every
thread of the service.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from vision.v1 import trainer_pb2

S = trainer_pb2
TERMINAL = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
UNFINISHED = (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state INTEGER NOT NULL,
    spec BLOB NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    epoch INTEGER NOT NULL DEFAULT 0,
    total_epochs INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    class_counts TEXT NOT NULL DEFAULT '{}',
    result BLOB,
    progress BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""


def timestamp(seconds: float | None) -> Timestamp:
    stamp = Timestamp()
    if seconds:
        stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


@dataclass
class JobRow:
    id: str
    seq: int
    state: int
    spec: bytes
    config: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    epoch: int
    total_epochs: int
    error: str
    class_counts: str
    result: bytes | None
    progress: bytes | None
    attempts: int
    cancel_requested: int

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_proto(self) -> trainer_pb2.Job:
        job = trainer_pb2.Job(
            id=self.id,
            state=self.state,  # type: ignore[arg-type]
            spec=trainer_pb2.JobSpec.FromString(self.spec),
            created_at=timestamp(self.created_at),
            started_at=timestamp(self.started_at),
            finished_at=timestamp(self.finished_at),
            epoch=self.epoch,
            total_epochs=self.total_epochs,
            error=self.error,
            class_counts=json.loads(self.class_counts),
        )
        if self.result:
            job.result.ParseFromString(self.result)
        if self.progress:
            job.progress.ParseFromString(self.progress)
        return job


class JobDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, sql: str, args: Iterable[object] = ()) -> list[JobRow]:
        with self._lock:
            cursor = self._conn.execute(sql, tuple(args))
            return [JobRow(*row) for row in cursor.fetchall()]

    def insert(
        self, job_id: str, spec: bytes, config: str, total_epochs: int, class_counts: dict[str, int]
    ) -> None:
        """A new QUEUED job, with its first STATE event."""
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            seq = self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._conn.execute(
                "INSERT INTO jobs (id, seq, state, spec, config, created_at, total_epochs, class_counts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, S.JOB_STATE_QUEUED, spec, config, now, total_epochs, json.dumps(class_counts)),
            )
            self._add_event(job_id, _state_event(job_id, S.JOB_STATE_QUEUED, total_epochs, "queued"))

    def get(self, job_id: str) -> JobRow | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def page(self, limit: int, before_seq: int = 0) -> list[JobRow]:
        """Newest first, ``limit`` jobs created before ``before_seq`` (0: from the newest)."""
        if before_seq:
            return self._rows(
                "SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?", (before_seq, limit)
            )
        return self._rows("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))

    def unfinished(self) -> list[JobRow]:
        return self._rows("SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY seq", UNFINISHED)

    def transition(
        self,
        job_id: str,
        from_states: tuple[int, ...],
        to_state: int,
        *,
        message: str = "",
        error: str | None = None,
        result: bytes | None = None,
    ) -> bool:
        """Move ``job_id`` to ``to_state`` if it is in one of ``from_states``; True if it moved."""
        now = time.time()
        sets = ["state = ?"]
        args: list[object] = [to_state]
        if to_state == S.JOB_STATE_RUNNING:
            sets.append("started_at = COALESCE(started_at, ?)")
            args.append(now)
        if to_state in TERMINAL:
            sets.append("finished_at = ?")
            args.append(now)
        if error is not None:
            sets.append("error = ?")
            args.append(error)
        if result is not None:
            sets.append("result = ?")
            args.append(result)
        marks = ",".join("?" * len(from_states))
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cursor = self._conn.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state IN ({marks})",
                (*args, job_id, *from_states),
            )
            if cursor.rowcount != 1:
                return False
            total = self._conn.execute("SELECT total_epochs FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            self._add_event(job_id, _state_event(job_id, to_state, total, message or error or ""))
            return True

    def update(self, job_id: str, **fields: object) -> None:
        """Set plain columns (attempts, cancel_requested, error, class_counts ...)."""
        names = ", ".join(f"{name} = ?" for name in fields)
        with self._lock, self._conn:
            self._conn.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))

    def add_event(self, event: trainer_pb2.JobEvent) -> None:
        """Append an event; progress and epoch events also become the job's current progress."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._add_event(event.job_id, event)
            if event.kind in (S.JobEvent.KIND_PROGRESS, S.JobEvent.KIND_EPOCH):
                completed = event.epoch if event.kind == S.JobEvent.KIND_EPOCH else event.epoch - 1
                self._conn.execute(
                    "UPDATE jobs SET progress = ?, epoch = MAX(epoch, ?) WHERE id = ?",
                    (event.SerializeToString(), completed, event.job_id),
                )

    def _add_event(self, job_id: str, event: trainer_pb2.JobEvent) -> None:
        if not event.HasField("time"):
            event.time.GetCurrentTime()
        seq = self._conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
        self._conn.execute("INSERT INTO events VALUES (?, ?, ?)", (job_id, seq, event.SerializeToString()))

    def events_after(self, job_id: str, seq: int) -> list[tuple[int, trainer_pb2.JobEvent]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
            ).fetchall()
        return [(s, trainer_pb2.JobEvent.FromString(blob)) for s, blob in rows]


def _state_event(job_id: str, state: int, total_epochs: int, message: str) -> trainer_pb2.JobEvent:
    return trainer_pb2.JobEvent(
        job_id=job_id,
        kind=S.JobEvent.KIND_STATE,
        state=state,  # type: ignore[arg-type]
        total_epochs=total_epochs,
        message=message,
    )

"""The job database (SQLite under the data directory, ``jobs.sqlite3``): jobs and every event they emitted.

Everything is stored as plain columns and JSON, readable with the ``sqlite3`` shell: states and event kinds
as words, the job's `TrainConfig` and result as JSON, the JobSpec as sent as its proto3 JSON form. No
protobuf blobs: `trainer_svc.convert` turns rows and events into messages.

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
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from trainer_svc.training.config import TrainConfig
from trainer_svc.training.evaluation import Evaluation
from trainer_svc.training.events import TrainEvent

DB_FILE = "jobs.sqlite3"
SCHEMA_VERSION = 2  # 2: jobs.owner and the uploads table (version 1 databases are upgraded in place)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PUBLISHING = "publishing"  # trained; its model is being published: no longer cancellable
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
UNFINISHED = (JobState.QUEUED, JobState.RUNNING, JobState.PUBLISHING)
CANCELLABLE = (JobState.QUEUED, JobState.RUNNING)


class EventKind(StrEnum):
    STATE = "state"  # the job changed state
    PROGRESS = "progress"  # periodic, within an epoch
    EPOCH = "epoch"  # end of an epoch, with validation metrics
    MESSAGE = "message"  # a note: dataset summary, resumed, early stop, worker died


@dataclass
class JobEvent(TrainEvent):
    """A `TrainEvent` as the job recorded it: with the job's state and the time it was recorded."""

    state: JobState = JobState.RUNNING
    time: float = 0.0


_TRAIN_FIELDS = tuple(f.name for f in fields(TrainEvent) if f.name != "kind")


@dataclass
class JobResult:
    """What a succeeded job published: the model version and its validation evaluation."""

    model_name: str
    model_version: str
    evaluation: Evaluation


@dataclass
class JobRow:
    id: str
    seq: int
    state: JobState
    spec: dict[str, Any]  # the JobSpec as sent, proto3 JSON form (trainer_svc.convert)
    config: TrainConfig
    created_at: float
    started_at: float | None
    finished_at: float | None
    epoch: int
    total_epochs: int
    error: str
    class_counts: dict[str, int]
    result: JobResult | None
    progress: JobEvent | None  # the newest progress or epoch event
    attempts: int
    cancel_requested: bool
    owner: str = ""  # the principal that created the job ('' before ownership was recorded)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    epoch INTEGER NOT NULL DEFAULT 0,
    total_epochs INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    class_counts TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    progress TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs (seq);
CREATE TABLE IF NOT EXISTS uploads (
    owner TEXT NOT NULL,
    day TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (owner, day)
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    details TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""
_COLUMNS = (
    "id, seq, state, spec, config, created_at, started_at, finished_at, epoch, total_epochs, error, "
    "class_counts, result, progress, attempts, cancel_requested, owner"
)


def event_to_json(event: JobEvent) -> str:
    return json.dumps(asdict(event))


def event_from_json(text: str) -> JobEvent:
    data = json.loads(text)
    return JobEvent(**{**data, "state": JobState(data["state"])})


def _details(event: JobEvent) -> str:
    """The event's numbers and message, only those that are set."""
    defaults = JobEvent("")
    return json.dumps(
        {k: getattr(event, k) for k in _TRAIN_FIELDS if getattr(event, k) != getattr(defaults, k)}
    )


def _result_to_json(result: JobResult) -> str:
    return json.dumps({**asdict(result), "evaluation": result.evaluation.to_dict()})


def _result_from_json(text: str) -> JobResult:
    data = json.loads(text)
    return JobResult(data["model_name"], data["model_version"], Evaluation.from_dict(data["evaluation"]))


def _row(values: tuple[Any, ...]) -> JobRow:
    (job_id, seq, state, spec, config, created, started, finished, epoch, total, error, counts, result,
     progress, attempts, cancel, owner) = values  # fmt: skip
    return JobRow(
        id=job_id,
        seq=seq,
        state=JobState(state),
        spec=json.loads(spec),
        config=TrainConfig.from_dict(json.loads(config)),
        created_at=created,
        started_at=started,
        finished_at=finished,
        epoch=epoch,
        total_epochs=total,
        error=error,
        class_counts=json.loads(counts),
        result=_result_from_json(result) if result else None,
        progress=event_from_json(progress) if progress else None,
        attempts=attempts,
        cancel_requested=bool(cancel),
        owner=owner,
    )


class JobDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            self._conn.close()
            raise RuntimeError(
                f"{path} has job database format {version}; this trainer reads {SCHEMA_VERSION}"
            )
        if version == 1:
            self._conn.execute("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        self._conn.executescript(_SCHEMA)
        self._conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, state)")
        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, where: str, args: Iterable[object] = ()) -> list[JobRow]:
        with self._lock:
            cursor = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs {where}", tuple(args))
            return [_row(values) for values in cursor.fetchall()]

    def insert(
        self,
        job_id: str,
        spec: dict[str, Any],
        config: TrainConfig,
        class_counts: dict[str, int],
        *,
        owner: str = "",
        max_active: int = 0,
    ) -> bool:
        """A new QUEUED job, with its first STATE event; False (nothing inserted) when ``owner`` already
        has ``max_active`` unfinished jobs (0: no limit), checked in the same transaction."""
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            if max_active and self._count_active(owner) >= max_active:
                return False
            seq = self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._conn.execute(
                "INSERT INTO jobs (id, seq, state, spec, config, created_at, total_epochs, class_counts, "
                "owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    seq,
                    JobState.QUEUED.value,
                    json.dumps(spec),
                    json.dumps(config.to_dict()),
                    now,
                    config.epochs,
                    json.dumps(class_counts),
                    owner,
                ),
            )
            self._add_event(job_id, _state_event(JobState.QUEUED, config.epochs, "queued"))
            return True

    def _count_active(self, owner: str) -> int:
        marks = ",".join("?" * len(UNFINISHED))
        return int(
            self._conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN ({marks})",
                (owner, *(s.value for s in UNFINISHED)),
            ).fetchone()[0]
        )

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (states without jobs left out)."""
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def count_active(self, owner: str) -> int:
        """Queued, running and publishing jobs of ``owner``."""
        with self._lock:
            return self._count_active(owner)

    def uploaded_bytes(self, owner: str, day: str) -> int:
        """Bytes ``owner`` uploaded on ``day`` (``YYYY-MM-DD``, UTC)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT bytes FROM uploads WHERE owner = ? AND day = ?", (owner, day)
            ).fetchone()
        return int(row[0]) if row else 0

    def add_uploaded_bytes(self, owner: str, day: str, count: int) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO uploads (owner, day, bytes) VALUES (?, ?, ?) "
                "ON CONFLICT (owner, day) DO UPDATE SET bytes = bytes + excluded.bytes",
                (owner, day, count),
            )

    def get(self, job_id: str) -> JobRow | None:
        rows = self._rows("WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def page(self, limit: int, before_seq: int = 0, owner: str | None = None) -> list[JobRow]:
        """Newest first, ``limit`` jobs created before ``before_seq`` (0: from the newest), only those of
        ``owner`` unless it is None."""
        where: list[str] = []
        args: list[object] = []
        if before_seq:
            where.append("seq < ?")
            args.append(before_seq)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self._rows(f"{clause}ORDER BY seq DESC LIMIT ?", (*args, limit))

    def unfinished(self) -> list[JobRow]:
        marks = ",".join("?" * len(UNFINISHED))
        return self._rows(f"WHERE state IN ({marks}) ORDER BY seq", UNFINISHED)

    def transition(
        self,
        job_id: str,
        from_states: tuple[JobState, ...],
        to_state: JobState,
        *,
        message: str = "",
        error: str | None = None,
        result: JobResult | None = None,
        unless_cancel_requested: bool = False,
    ) -> bool:
        """Move ``job_id`` to ``to_state`` if it is in one of ``from_states`` (and, with
        ``unless_cancel_requested``, nobody asked to cancel it); True if it moved."""
        now = time.time()
        sets = ["state = ?"]
        args: list[object] = [to_state.value]
        if to_state == JobState.RUNNING:
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
            args.append(_result_to_json(result))
        marks = ",".join("?" * len(from_states))
        guard = " AND cancel_requested = 0" if unless_cancel_requested else ""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cursor = self._conn.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state IN ({marks}){guard}",
                (*args, job_id, *(s.value for s in from_states)),
            )
            if cursor.rowcount != 1:
                return False
            total = self._conn.execute("SELECT total_epochs FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            self._add_event(job_id, _state_event(to_state, total, message or error or ""))
            return True

    def set_class_counts(self, job_id: str, counts: dict[str, int]) -> None:
        self._update(job_id, class_counts=json.dumps(counts))

    def set_attempts(self, job_id: str, attempts: int) -> None:
        self._update(job_id, attempts=attempts)

    def request_cancel(self, job_id: str) -> bool:
        """Mark a queued or running job to be cancelled; False if it is in any other state (publishing,
        ended): one transaction, so a job is either cancelled or published, never both."""
        marks = ",".join("?" * len(CANCELLABLE))
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cursor = self._conn.execute(
                f"UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state IN ({marks})",
                (job_id, *(s.value for s in CANCELLABLE)),
            )
            return cursor.rowcount == 1

    def _update(self, job_id: str, **columns: object) -> None:
        names = ", ".join(f"{name} = ?" for name in columns)
        with self._lock, self._conn:
            self._conn.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*columns.values(), job_id))

    def add_event(self, job_id: str, event: JobEvent) -> None:
        """Append an event; progress and epoch events also become the job's current progress."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            event = self._add_event(job_id, event)
            if event.kind in (EventKind.PROGRESS, EventKind.EPOCH):
                completed = event.epoch if event.kind == EventKind.EPOCH else event.epoch - 1
                self._conn.execute(
                    "UPDATE jobs SET progress = ?, epoch = MAX(epoch, ?) WHERE id = ?",
                    (event_to_json(event), completed, job_id),
                )

    def _add_event(self, job_id: str, event: JobEvent) -> JobEvent:
        if not event.time:
            event.time = time.time()
        seq = self._conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
        self._conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, seq, event.time, event.kind, event.state.value, _details(event)),
        )
        return event

    def events_after(self, job_id: str, seq: int) -> list[tuple[int, JobEvent]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, time, kind, state, details FROM events "
                "WHERE job_id = ? AND seq > ? ORDER BY seq",
                (job_id, seq),
            ).fetchall()
        return [
            (number, JobEvent(kind, state=JobState(state), time=at, **json.loads(details)))
            for number, at, kind, state, details in rows
        ]


def _state_event(state: JobState, total_epochs: int, message: str) -> JobEvent:
    return JobEvent(EventKind.STATE, total_epochs=total_epochs, message=message, state=state)

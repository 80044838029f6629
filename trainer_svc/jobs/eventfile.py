"""A rank's messages as a JSON-lines file: how the ranks of a job in Kubernetes pods talk to the trainer.

The messages are those of the local pipe protocol (`trainer_svc.jobs.worker`), one JSON object a line:
``{"type": "event", "event": {<TrainEvent fields>}}``, ``{"type": "dataset", "class_counts": {...}}`` and a
last word, ``{"type": "done" | "failed" | "cancelled" | "lost", ...}``. Each rank appends to its own file in
the job's directory on the shared data volume, ``<job dir>/ranks-<attempt>/rank-<N>.jsonl`` (rank 0 writes
every event, the others only their last word); the trainer reads rank 0's file as it grows
(`EventTail`) and every rank's last word when the Kubernetes Job has ended. A line is flushed as it is
written and the last word fsynced, so a reader that opens the file after the writer closed it sees
everything (close-to-open consistency, which NFS gives too); a line cut short by a kill is skipped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

from trainer_svc.training.events import TrainEvent

log = logging.getLogger(__name__)
OUTCOMES = ("done", "failed", "cancelled", "lost")
_EVENT_FIELDS = {f.name for f in fields(TrainEvent)}


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank}.jsonl"


def encode(message: dict[str, Any]) -> str:
    """One line for ``message`` (its TrainEvent as a plain object)."""
    event = message.get("event")
    if is_dataclass(event) and not isinstance(event, type):
        message = {**message, "event": asdict(event)}
    return json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n"


def decode(line: str) -> dict[str, Any] | None:
    """The message of one line (its event a `TrainEvent` again), or None for a line that is not one."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    if message["type"] == "event":
        event = message.get("event")
        if not isinstance(event, dict) or "kind" not in event:
            return None
        message["event"] = TrainEvent(**{k: v for k, v in event.items() if k in _EVENT_FIELDS})
    return message


class EventWriter:
    """The writing end (one rank): append, flush each line, fsync the last word."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- open for the rank's lifetime

    def send(self, message: dict[str, Any]) -> None:
        self._file.write(encode(message))
        self._file.flush()
        if message.get("type") in OUTCOMES:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class EventTail:
    """The reading end: the complete lines added since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self._offset += end
        messages = []
        for raw in data[:end].splitlines():
            message = decode(raw.decode("utf-8", errors="replace"))
            if message is None:
                log.warning("%s: skipped a line that is not a message", self.path.name)
            else:
                messages.append(message)
        return messages


def last_word(path: Path) -> dict[str, Any] | None:
    """The outcome a rank wrote last in its file, or None (it never got that far: killed, node lost)."""
    outcome = None
    for message in EventTail(path).read():
        if message["type"] in OUTCOMES:
            outcome = message
    return outcome

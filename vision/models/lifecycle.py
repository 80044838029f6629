"""What admins decided about the store's models, kept in the store so every process that reads it agrees:
the *pinned* version of a model (what requests naming no version get, in place of the newest), the default
model of each task, and the numbers of deleted versions (never given to a new version).

Layout::

    <root>/.lifecycle/<name>.json       {"pinned": "3", "pinned_by": ..., "pinned_at": ..., "deleted": ["4"]}
    <root>/.lifecycle/_defaults.json    {"classification": {"name": "flowers", "set_by": ..., "set_at": ...}}
    <root>/.lifecycle/.lock             writers take it (flock): one change at a time, across processes

Model names start with a letter or digit, so ``_defaults.json`` is never a model's file. Each file is written
whole to a temporary file, fsynced and renamed over the old one (and the directory fsynced), so a reader sees
the old or the new state, never half of one. Only processes with the store read-write write here (the
`vision models` commands, trainer_svc's ModelAdmin); the model services read it on every poll. A file that
cannot be parsed reads as empty (nothing pinned, no default) and is logged: the services keep serving the
newest versions rather than stopping. The operations that validate and change this state are in
`vision.models.admin`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vision.errors import Conflict
from vision.models.durable import replace_durably

log = logging.getLogger(__name__)

LIFECYCLE_DIR = ".lifecycle"
DEFAULTS_FILE = "_defaults.json"
LOCK_FILE = ".lock"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LifecycleDamaged(Conflict):
    """A model's lifecycle file cannot be read: changing or publishing the model would lose its record."""


class LifecycleFiles:
    """Reads and writes the lifecycle files of the store at ``store_root`` (callers validate names)."""

    def __init__(self, store_root: Path | str) -> None:
        self.dir = Path(store_root) / LIFECYCLE_DIR

    # -- reads (any process; a missing file is empty; a damaged one is empty for the services' reads, and
    # refused for writers and publishers: its deleted numbers must not be forgotten and then reused) ------
    def _read(self, path: Path, strict: bool = False) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("deleted", []), list):
                raise ValueError("not a JSON object with a list of deleted versions")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            if strict:
                raise LifecycleDamaged(
                    f"the model lifecycle file {path} is damaged ({exc}): restore it (or delete it, which "
                    "forgets the pin and which version numbers were deleted) before changing this model"
                ) from exc
            log.warning("ignoring the damaged model lifecycle file %s: %s", path, exc)
            return {}
        return data

    def model(self, name: str, strict: bool = False) -> dict[str, Any]:
        """The state recorded for ``name``: ``pinned`` (a version, or absent), ``deleted`` (versions).
        ``strict``: a damaged file raises `LifecycleDamaged` instead of reading as empty."""
        return self._read(self.dir / f"{name}.json", strict)

    def pinned(self, name: str) -> str:
        """The pinned version of ``name``; '' when none."""
        return str(self.model(name).get("pinned") or "")

    def pins(self) -> dict[str, str]:
        """{name: pinned version} of every pinned model (one small file read per model with a state)."""
        found = {}
        with contextlib.suppress(OSError):
            for path in self.dir.glob("*.json"):
                if path.name != DEFAULTS_FILE and (version := self._read(path).get("pinned")):
                    found[path.stem] = str(version)
        return found

    def deleted(self, name: str, strict: bool = False) -> list[str]:
        """Versions of ``name`` deleted by `vision models delete`: their numbers are never reused."""
        found = [str(v) for v in self.model(name, strict).get("deleted", []) if isinstance(v, str | int)]
        return [v for v in found if v.isascii() and v.isdigit()]

    def defaults(self) -> dict[str, str]:
        """{task: default model name} as set with `vision models set-default`."""
        data = self._read(self.dir / DEFAULTS_FILE)
        return {
            task: str(entry["name"])
            for task, entry in data.items()
            if isinstance(entry, dict) and entry.get("name")
        }

    # -- writes (callers hold `locked()`) ----------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across threads and processes on this host (and NFSv4 / most network filesystems)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def write_model(self, name: str, state: dict[str, Any]) -> None:
        self._write(self.dir / f"{name}.json", state)

    def write_defaults(self, entries: dict[str, dict[str, str]]) -> None:
        self._write(self.dir / DEFAULTS_FILE, entries)

    def raw_defaults(self) -> dict[str, Any]:
        return self._read(self.dir / DEFAULTS_FILE)

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        replace_durably(path, json.dumps(data, indent=2, sort_keys=True).encode())

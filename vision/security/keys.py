"""API keys: made by ``vision keys create``, stored only as SHA-256 hashes in one JSON file, looked up by
the gateway on each request and re-read within seconds when the file changes (no restart).

A key is ``vk_`` + 43 URL-safe characters (256 random bits), so a plain SHA-256 is the right hash: nobody
can guess such a key, and a fast hash keeps each lookup cheap (slow password hashes exist for low-entropy
secrets). The file holds no secret: it may be a mounted Kubernetes Secret or ConfigMap all the same.

File format::

    {"format": 1, "keys": [{"name": "ci", "role": "trainer", "sha256": "...", "hint": "vk_AbC",
                            "created_at": "2026-12-06T18:00:00+00:00", "limits": {"rate": 5.0}}]}
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vision.errors import Conflict, InvalidArgument, NotFound
from vision.security.principal import KEY_PRINCIPAL_PREFIX
from vision.security.roles import LIMIT_FIELDS, Limits, Role

log = logging.getLogger(__name__)

KEY_PREFIX = "vk_"
KEY_RE = re.compile(r"^vk_[A-Za-z0-9_-]{43}$")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
FORMAT = 1
HINT_CHARS = 7  # "vk_" and 4 more: enough to tell keys apart in `vision keys list`, useless to an attacker


class KeyNameTaken(Conflict):
    """A key of that name exists already."""


class KeyNotFound(NotFound):
    """No key of that name."""


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_key(token: str) -> bool:
    """Whether a bearer token is one of our API keys (not a JWT)."""
    return token.startswith(KEY_PREFIX)


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: its name (the principal is ``key:<name>``), role, hash and own limits (only those
    set: the others are the role's defaults)."""

    name: str
    role: Role
    sha256: str
    hint: str = ""
    created_at: str = ""
    limits: dict[str, float] = field(default_factory=dict)

    @property
    def principal_name(self) -> str:
        return KEY_PRINCIPAL_PREFIX + self.name

    def effective_limits(self, role_defaults: Limits) -> Limits:
        return role_defaults.with_overrides(**self.limits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.label,
            "sha256": self.sha256,
            "hint": self.hint,
            "created_at": self.created_at,
            "limits": dict(self.limits),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKey:
        limits = {k: v for k, v in dict(data.get("limits") or {}).items() if k in LIMIT_FIELDS}
        return cls(
            name=str(data["name"]),
            role=Role.parse(str(data["role"])),
            sha256=str(data["sha256"]),
            hint=str(data.get("hint", "")),
            created_at=str(data.get("created_at", "")),
            limits={k: float(v) if k == "rate" else int(v) for k, v in limits.items()},
        )


def read_keys(path: Path) -> list[ApiKey]:
    """Every key in ``path`` (none if it does not exist); ValueError when it is not a key file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown key file format {data.get('format')!r}")
        return [ApiKey.from_dict(item) for item in data["keys"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid API-key file: {exc}") from exc


def _write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new one, whole), fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"format": FORMAT, "keys": [k.to_dict() for k in keys]}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (two `vision keys create` at once both keep their key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def validate_key_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid key name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
            "or digit"
        )
    return name


def create_key(
    path: Path, name: str, role: Role, limits: dict[str, float] | None = None
) -> tuple[ApiKey, str]:
    """Add a key named ``name`` to the file; the stored record and the secret (shown once, never stored)."""
    validate_key_name(name)
    for limit, value in (limits or {}).items():
        if limit not in LIMIT_FIELDS or value < 0:
            raise InvalidArgument(f"bad limit {limit}={value}: one of {', '.join(LIMIT_FIELDS)}, >= 0")
    secret = generate_key()
    record = ApiKey(
        name=name,
        role=role,
        sha256=hash_key(secret),
        hint=secret[:HINT_CHARS],
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        limits=dict(limits or {}),
    )
    with _locked(path):
        keys = read_keys(path)
        if any(k.name == name for k in keys):
            raise KeyNameTaken(f"a key named {name!r} exists already: revoke it first or pick another name")
        _write_keys(path, [*keys, record])
    return record, secret


def revoke_key(path: Path, name: str) -> ApiKey:
    """Remove the key named ``name``; running gateways stop accepting it within their reload interval."""
    with _locked(path):
        keys = read_keys(path)
        found = [k for k in keys if k.name == name]
        if not found:
            raise KeyNotFound(f"no key named {name!r} in {path}")
        _write_keys(path, [k for k in keys if k.name != name])
    return found[0]


class KeyRing:
    """The keys of one file, for lookups on every request: re-read when the file changes (checked at most
    every ``reload_s`` seconds by a stat), kept as they were when a new version cannot be read."""

    def __init__(self, path: Path, reload_s: float = 2.0, *, warn_missing: bool = True) -> None:
        self.path, self.reload_s, self.warn_missing = path, reload_s, warn_missing
        self._by_hash: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._loaded = False
        self._lock = threading.Lock()
        self._reload()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()  # follows symlinks: a Secret volume swaps its ..data link
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self) -> None:
        stamp = self._file_stamp()
        self._checked = time.monotonic()
        if self._loaded and stamp == self._stamp:
            return
        try:
            keys = read_keys(self.path)
        except (ValueError, OSError) as exc:
            log.error("API keys not reloaded, the previous ones stay in use: %s", exc)
            return
        if stamp is None and self.warn_missing and not self._loaded:
            log.warning("no API-key file at %s: `vision keys create` makes one", self.path)
        elif self._loaded:
            log.info("API keys reloaded from %s: %d key(s)", self.path, len(keys))
        self._by_hash = {k.sha256: k for k in keys}
        self._stamp, self._loaded = stamp, True

    def lookup(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None."""
        if time.monotonic() - self._checked >= self.reload_s:
            with self._lock:
                if time.monotonic() - self._checked >= self.reload_s:
                    self._reload()
        if not KEY_RE.fullmatch(secret):
            return None
        digest = hash_key(secret)
        found = self._by_hash.get(digest)
        # The dict lookup is by hash, so timing reveals nothing of the secret; compare_digest anyway.
        return found if found is not None and hmac.compare_digest(found.sha256, digest) else None

    def __len__(self) -> int:
        return len(self._by_hash)

"""The model store: a directory (``VISION_MODEL_DIR``) of named, versioned models.

Layout::

    <root>/<name>/<version>/metadata.json     # ModelMetadata
    <root>/<name>/<version>/model.safetensors # the weights (classification models)

Versions are integers counting up from 1. A version is written into a hidden temporary directory beside
its final place and renamed into place in one step, so a reader (in any process) sees either nothing or a
complete version. Every file and directory of a version is fsynced before that rename and the model's
directory after it, so a version that is visible survives a crash or power loss whole. A full disk raises
`StorageFull` and leaves nothing behind. This module does not import torch; `vision.models.weights` reads and
writes tensors.

Retention: the publisher prunes. After each successful publish of ``<name>``, versions of ``<name>`` older
than the newest ``keep_versions`` (``VISION_MODEL_KEEP_VERSIONS``, default 5; 0 keeps all) are deleted,
except those *held*: a model service that has a version loaded (its default model, a version asked for by
number, one it is serving) keeps a hold file ``<root>/.holds/<name>@<version>@<holder>`` fresh (renewed every
few minutes, dropped when it unloads the version; one older than `HOLD_TTL_S` counts for nothing). Where
the store is mounted read-only for the services (Kubernetes) no hold can be taken: a service keeps serving
a pruned version it has in memory, and a request naming a pruned version it does not have gets NOT_FOUND
listing the versions that exist. A version is deleted by renaming it to a hidden name first, so readers see
it whole or not at all.

Lifecycle (`vision.models.lifecycle`, changed by `vision.models.admin`): a model's *pinned* version is what
requests naming no version get (`served_version`) and is never pruned; a version deleted by an admin keeps
its number taken, so a later publish never reuses it (a service holding the old one in memory would take the
new one for it).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from vision.errors import (
    InvalidCheckpoint,
    ModelNotFound,
    NoModelAvailable,
    StorageFull,
    VisionError,
)
from vision.models.durable import fsync_dir, fsync_tree, write_synced
from vision.models.lifecycle import LifecycleFiles
from vision.models.metadata import (
    METADATA_FILE,
    MODEL_NAME_PATTERN,
    VERSION_PATTERN,
    WEIGHTS_FILE,
    ModelMetadata,
    ModelVersion,
    is_model_name,
    sha256_file,
    validate_model_name,
    validate_version,
)

__all__ = [  # the metadata types and name checks are re-exported: callers import them from the store
    "METADATA_FILE",
    "MODEL_NAME_PATTERN",
    "VERSION_PATTERN",
    "WEIGHTS_FILE",
    "ModelMetadata",
    "ModelStore",
    "ModelVersion",
    "PublishFailed",
    "sha256_file",
    "validate_model_name",
    "validate_version",
    "verify_weights",
]

log = logging.getLogger(__name__)

HOLDS_DIR = ".holds"
HOLD_TTL_S = 15 * 60.0  # a hold not renewed for this long (its holder died) protects nothing
MAX_PUBLISH_ATTEMPTS = 100  # version numbers tried when concurrent publishers keep taking the next one
STALE_TEMP_S = 6 * 3600.0  # hidden leftovers of a crashed publisher or pruner older than this are removed
_TMP_PREFIX = ".tmp-"
_DELETING_PREFIX = ".del-"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class PublishFailed(VisionError):
    """The store could not take a new version (permissions, I/O error, endless contention)."""


def verify_weights(version: ModelVersion) -> None:
    """Raise `InvalidCheckpoint` when the weights file is missing or differs from the sha256 in metadata."""
    meta = version.metadata
    try:
        matches = not meta.weights_sha256 or sha256_file(version.weights_path) == meta.weights_sha256
    except OSError as exc:
        raise InvalidCheckpoint(
            f"{meta.weights_file} cannot be read ({exc.strerror}): the store is damaged"
        ) from exc
    if not matches:
        raise InvalidCheckpoint(
            f"{meta.weights_file} does not match the sha256 in its metadata: the store is damaged"
        )


def default_keep_versions() -> int:
    """``VISION_MODEL_KEEP_VERSIONS`` (read by `vision.settings`): the retention of a store given none."""
    from vision.settings import StoreSettings

    return StoreSettings().keep_versions


class ModelStore:
    """Reads and publishes model versions under ``root``. Safe to share between threads and processes.

    ``keep_versions``: after a publish, keep this many newest versions of the model (plus held ones);
    0 keeps all; None reads ``VISION_MODEL_KEEP_VERSIONS``.
    """

    def __init__(self, root: Path | str, keep_versions: int | None = None) -> None:
        self.root = Path(root)
        self.keep_versions = default_keep_versions() if keep_versions is None else keep_versions
        self.lifecycle = LifecycleFiles(self.root)
        if self.keep_versions < 0:
            raise ValueError(f"keep_versions must be >= 0, not {self.keep_versions}")

    def check_writable(self) -> None:
        """Fail with what to fix when this process cannot create files in the store (the trainer publishes
        there): typically a volume owned by another uid/gid than the pod's (README, Deploy: the store)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-check-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            try:
                owner = self.root.stat()
                owned = f"owned by uid {owner.st_uid} gid {owner.st_gid}, mode {owner.st_mode & 0o7777:o}"
            except OSError:
                owned = "not readable either"
            raise RuntimeError(
                f"the model store {self.root} is not writable by this process (uid {os.getuid()}, gid "
                f"{os.getgid()}): {exc.strerror or exc}; it is {owned}. Give the volume to that uid/gid (an "
                "fsGroup, an NFS export or EFS access point with that uid, Azure Files mount options "
                "uid=/gid=; README, Deploy: the model store)"
            ) from exc

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_model_name(p.name))

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first."""
        model_dir = self.root / name
        if not is_model_name(name) or not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if p.name.isdigit() and (p / METADATA_FILE).is_file()]
        return sorted(found, key=int)

    def snapshot(self) -> dict[str, str]:
        """{name: newest version} for every model: a cheap way to notice what changed."""
        latest = {}
        for name in self.names():
            versions = self.versions(name)
            if versions:
                latest[name] = versions[-1]
        return latest

    def served_version(self, name: str, versions: builtins.list[str] | None = None) -> str:
        """The version of ``name`` a request naming no version gets: the pinned one while it exists, else the
        newest ('' when there is none). ``versions``: `versions(name)`, when the caller has it."""
        versions = self.versions(name) if versions is None else versions
        pinned = self.lifecycle.pinned(name) if versions else ""
        return pinned if pinned in versions else (versions[-1] if versions else "")

    def served_snapshot(self) -> dict[str, str]:
        """{name: `served_version`} for every model: what each service should be serving now."""
        pins = self.lifecycle.pins()
        served = {}
        for name in self.names():
            versions = self.versions(name)
            if versions:
                served[name] = pins[name] if pins.get(name) in versions else versions[-1]
        return served

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The requested version (newest when ``version`` is empty); raises `ModelNotFound`."""
        versions = self.versions(name)
        if not versions:
            available = self.names()
            if not available:
                raise NoModelAvailable(
                    "no model in the model store: import one with `vision models import` or train one"
                )
            raise ModelNotFound(f"model {name!r} not found; available: {', '.join(available)}")
        chosen = version or versions[-1]
        if chosen not in versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; available versions: {', '.join(versions)}"
            )
        path = self.root / name / chosen
        return ModelVersion(name, chosen, path, self._read_metadata(path))

    def list(self) -> list[ModelVersion]:
        """Every complete version of every model."""
        return [self.get(name, v) for name in self.names() for v in self.versions(name)]

    @staticmethod
    def _read_metadata(path: Path) -> ModelMetadata:
        return ModelMetadata.from_json((path / METADATA_FILE).read_text())

    def publish(
        self,
        name: str,
        metadata: ModelMetadata,
        write_files: Callable[[Path], Mapping[str, str]],
    ) -> ModelVersion:
        """Write a new version of ``name`` atomically and durably, prune older ones, and return it.

        ``write_files(tmp_dir)`` writes the version's files into ``tmp_dir`` and returns metadata fields
        to set (e.g. ``weights_sha256``). The version number is the next free one, even with concurrent
        publishers. Every file written is fsynced before the version appears. Raises `StorageFull` when
        the disk is full and `PublishFailed` when the store refuses the version otherwise; either way no
        part of it is left behind.
        """
        validate_model_name(name)
        model_dir = self.root / name
        try:
            new_dir = not model_dir.is_dir()
            model_dir.mkdir(parents=True, exist_ok=True)
            if new_dir:
                fsync_dir(model_dir.parent)
            tmp = model_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            tmp.mkdir()
        except OSError as exc:
            raise _publish_error(name, exc) from exc
        try:
            try:
                updates = write_files(tmp)
            except Exception as exc:
                if _is_disk_full(exc):  # the writer's other errors are its own: they pass unchanged
                    raise _publish_error(name, exc) from exc
                raise
            for key, value in updates.items():
                setattr(metadata, key, value)
            metadata.name = name
            metadata.created_at = metadata.created_at or datetime.now(timezone.utc).isoformat()
            try:
                fsync_tree(tmp)  # the weights and artifacts; metadata.json is synced as it is written
                version = self._rename_into_place(name, metadata, tmp)
            except OSError as exc:
                raise _publish_error(name, exc) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.prune(name)
        except OSError:  # the version is published; pruning is retried after the next publish
            log.warning("could not prune old versions of model %r", name, exc_info=True)
        return version

    def _rename_into_place(self, name: str, metadata: ModelMetadata, tmp: Path) -> ModelVersion:
        """Take the next free version number: retried only while another publisher took it, boundedly."""
        model_dir = self.root / name
        for _ in range(MAX_PUBLISH_ATTEMPTS):
            existing = self.versions(name) + [p.name for p in model_dir.iterdir() if p.name.isdigit()]
            existing += self.lifecycle.deleted(name, strict=True)  # after the listing: see `delete_version`
            metadata.version = str(max((int(v) for v in existing), default=0) + 1)
            write_synced(tmp / METADATA_FILE, metadata.to_json().encode())
            fsync_dir(tmp)
            target = model_dir / metadata.version
            try:
                os.rename(tmp, target)
            except OSError:
                if target.exists():
                    continue  # another publisher took this number: take the next one
                raise
            fsync_dir(model_dir)
            return self.get(name, metadata.version)
        raise PublishFailed(
            f"could not publish a version of model {name!r}: {MAX_PUBLISH_ATTEMPTS} version numbers in a "
            "row were taken by concurrent publishers; try again"
        )

    # -- retention ---------------------------------------------------------------------------------------
    def prune(self, name: str, keep: int | None = None) -> builtins.list[str]:
        """Delete versions of ``name`` older than the newest ``keep`` (default: ``keep_versions``), except
        held ones; also clears leftovers of crashed publishers and expired holds. Returns the deleted."""
        keep = self.keep_versions if keep is None else keep
        model_dir = self.root / name
        if not is_model_name(name) or not model_dir.is_dir():
            return []
        self._remove_leftovers(model_dir)
        self._remove_expired_holds()
        if keep <= 0:
            return []
        with self.lifecycle.locked():  # no pin may land between reading the pinned version and removing
            versions = self.versions(name)
            kept = self.held_versions(name) | {self.lifecycle.pinned(name)}
            doomed = [v for v in versions[:-keep] if v not in kept]
            removed = self._remove_versions(name, doomed)
        if removed:
            log.info(
                "pruned model %r versions %s (keeping the newest %d, the pinned and held ones)",
                name,
                removed,
                keep,
            )
        return removed

    def delete_version(self, name: str, version: str) -> bool:
        """Remove one version (False: it was not there). Readers see it whole or not at all; a service that
        has it in memory keeps serving it until it swaps. The caller (`vision.models.admin`) records the
        number in the lifecycle file *before* this, so a publisher that no longer lists the version directory
        reads the record (it lists first, then reads) and never takes the number again."""
        return bool(self._remove_versions(validate_model_name(name), [validate_version(version)]))

    def _remove_versions(self, name: str, versions: builtins.list[str]) -> builtins.list[str]:
        model_dir = self.root / name
        moved = {}
        for version in versions:
            hidden = model_dir / f"{_DELETING_PREFIX}{version}-{uuid.uuid4().hex}"
            try:
                os.rename(model_dir / version, hidden)  # gone for readers at once, whole until then
            except FileNotFoundError:
                continue  # removed concurrently
            moved[version] = hidden
        if moved:
            fsync_dir(model_dir)
        for hidden in moved.values():
            shutil.rmtree(hidden, ignore_errors=True)
        return list(moved)

    def _remove_leftovers(self, model_dir: Path) -> None:
        cutoff = time.time() - STALE_TEMP_S
        for path in model_dir.iterdir():
            if not path.name.startswith((_TMP_PREFIX, _DELETING_PREFIX)):
                continue
            with contextlib.suppress(OSError):
                if path.name.startswith(_DELETING_PREFIX) or path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)

    # -- holds: versions a running service has loaded, which pruning leaves alone ------------------------
    def _hold_path(self, name: str, version: str, holder: str) -> Path:
        return self.root / HOLDS_DIR / f"{name}@{version}@{holder}"

    def hold(self, name: str, version: str, holder: str) -> bool:
        """Create or renew ``holder``'s hold on a version; False where the store is read-only here."""
        path = self._hold_path(name, version, holder)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path)
        except OSError:
            return False
        return True

    def release(self, name: str, version: str, holder: str) -> None:
        with contextlib.suppress(OSError):
            self._hold_path(name, version, holder).unlink()

    def held_versions(self, name: str) -> set[str]:
        """Versions of ``name`` with a hold renewed within `HOLD_TTL_S`."""
        holds = self.root / HOLDS_DIR
        cutoff = time.time() - HOLD_TTL_S
        held = set()
        with contextlib.suppress(OSError):
            for path in holds.glob(f"{name}@*@*"):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime >= cutoff:
                        held.add(path.name.split("@")[1])
        return held

    def _remove_expired_holds(self) -> None:
        cutoff = time.time() - HOLD_TTL_S
        with contextlib.suppress(OSError):
            for path in (self.root / HOLDS_DIR).iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()


def _is_disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk or quota, or a library's error that wraps one (safetensors' Rust I/O)."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL
    text = str(exc)
    return any(f"(os error {code})" in text for code in _DISK_FULL)


def _publish_error(name: str, exc: BaseException) -> VisionError:
    if _is_disk_full(exc):
        return StorageFull(
            f"the model store's disk is full: model {name!r} was not published and nothing of it was kept; "
            "free space (or lower VISION_MODEL_KEEP_VERSIONS) and try again"
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return PublishFailed(
        f"could not publish a version of model {name!r}: the model store refused it ({reason})"
    )

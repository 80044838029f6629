"""What an admin does to the served versions: pin a version, unpin, roll back, delete a version, set or
unset the default model of a task. Used by `vision models ...` and trainer_svc's ModelAdmin service (the
processes with the store read-write); every model service sees the result at its next poll
(``VISION_<SVC>_POLL_INTERVAL_S``) and swaps the way it does for a new publish: load first, then swap, so
in-flight requests finish on the version they started on.

Rules: a pinned version cannot be deleted (unpin or pin another first), nor the last version of a model;
deleting the newest makes the one before it the newest; a deleted version's number is never reused. The
state lives in the store (`vision.models.lifecycle`); changes are serialised by its lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vision.errors import Conflict, ModelNotFound
from vision.models.lifecycle import now_iso
from vision.models.store import ModelStore, validate_model_name, validate_version

log = logging.getLogger(__name__)


class VersionPinned(Conflict):
    """The version is pinned: it is what requests naming no version get."""


class LastVersion(Conflict):
    """A model keeps at least one version."""


class NothingToRollBack(Conflict):
    """No version older than the served one is left."""


@dataclass(frozen=True)
class ModelState:
    """One model as an admin sees it: its versions (oldest first), the pinned one ('' none), the one
    requests naming no version get (``served``), and whether it is its task's default model in the store."""

    name: str
    task: str
    versions: list[str]
    pinned: str
    served: str
    is_default: bool


class ModelAdmin:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.files = store.lifecycle

    def state(self, name: str) -> ModelState:
        """``name``'s state; `ModelNotFound` when it has no version."""
        validate_model_name(name)
        versions = self.store.versions(name)
        if not versions:
            self.store.get(name)  # raises ModelNotFound, naming the models there are
        served = self.store.served_version(name, versions)
        task = self.store.get(name, served).metadata.task
        pinned = self.files.pinned(name)
        return ModelState(
            name=name,
            task=task,
            versions=versions,
            pinned=pinned if pinned in versions else "",
            served=served,
            is_default=self.files.defaults().get(task) == name,
        )

    def _existing(self, name: str, version: str) -> ModelState:
        validate_version(version)
        state = self.state(name)
        if version not in state.versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; available versions: {', '.join(state.versions)}"
            )
        return state

    def pin(self, name: str, version: str, by: str = "") -> ModelState:
        """Serve ``version`` to requests naming no version, in every service, until `unpin`."""
        with self.files.locked():
            self._existing(name, version)
            record = self.files.model(name, strict=True)
            record.update(pinned=version, pinned_by=by, pinned_at=now_iso())
            self.files.write_model(name, record)
        log.info("%s pinned model %r to version %s", by or "an admin", name, version)
        return self.state(name)

    def unpin(self, name: str, by: str = "") -> ModelState:
        """Serve the newest version again (a no-op when nothing is pinned)."""
        with self.files.locked():
            self.state(name)
            record = self.files.model(name, strict=True)
            if record.pop("pinned", None) is not None:
                record.update(unpinned_by=by, unpinned_at=now_iso())
                record.pop("pinned_by", None)
                record.pop("pinned_at", None)
                self.files.write_model(name, record)
                log.info("%s unpinned model %r", by or "an admin", name)
        return self.state(name)

    def rollback(self, name: str, by: str = "") -> ModelState:
        """Pin the newest version older than the one served now (each roll back goes one further)."""
        with self.files.locked():
            state = self.state(name)
            older = [v for v in state.versions if int(v) < int(state.served)]
            if not older:
                raise NothingToRollBack(
                    f"model {name!r} serves version {state.served}, its oldest: there is no version to roll "
                    "back to"
                )
            record = self.files.model(name, strict=True)
            record.update(pinned=older[-1], pinned_by=by, pinned_at=now_iso())
            self.files.write_model(name, record)
        log.info("%s rolled model %r back to version %s", by or "an admin", name, older[-1])
        return self.state(name)

    def delete(self, name: str, version: str, by: str = "") -> ModelState:
        """Delete one version. Refused for the pinned version and for a model's last one. Services keep
        serving it from memory until they swap (within their poll interval); after that a request naming it
        gets NOT_FOUND."""
        with self.files.locked():
            state = self._existing(name, version)
            if version == state.pinned:
                raise VersionPinned(
                    f"version {version} of model {name!r} is pinned (requests naming no version get it): "
                    f"unpin it (`vision models unpin {name}`) or pin another version first"
                )
            if len(state.versions) == 1:
                raise LastVersion(
                    f"version {version} is the only version of model {name!r}: a model keeps at least one"
                )
            record = self.files.model(name, strict=True)
            record["deleted"] = sorted({*self.files.deleted(name, strict=True), version}, key=int)
            record.update(deleted_by=by, deleted_at=now_iso())
            self.files.write_model(name, record)  # first: the number stays taken (`delete_version`)
            self.store.delete_version(name, version)
        log.info("%s deleted version %s of model %r", by or "an admin", version, name)
        return self.state(name)

    def set_default(self, name: str, by: str = "") -> ModelState:
        """Make ``name`` the default model of its task: what requests naming no model get, in every service
        of that task. It takes precedence over ``VISION_<SVC>_DEFAULT_MODEL``."""
        with self.files.locked():
            state = self.state(name)
            entries = self.files.raw_defaults()
            entries[state.task] = {"name": name, "set_by": by, "set_at": now_iso()}
            self.files.write_defaults(entries)
        log.info("%s made %r the default %s model", by or "an admin", name, state.task)
        return self.state(name)

    def unset_default(self, name: str, by: str = "") -> ModelState:
        """Stop ``name`` being its task's default (a no-op when it is not): services fall back to
        ``VISION_<SVC>_DEFAULT_MODEL``, else their automatic choice."""
        with self.files.locked():
            state = self.state(name)
            entries = self.files.raw_defaults()
            if state.is_default:
                del entries[state.task]
                self.files.write_defaults(entries)
                log.info("%s unset %r as the default %s model", by or "an admin", name, state.task)
        return self.state(name)

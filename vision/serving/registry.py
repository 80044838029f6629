"""Lazily loaded, memory-bounded, hot-reloading set of models, shared by the model services.

What is loaded:

* At start only the *default model* (the store's default for the task, set with `vision models set-default`;
  else the configured ``default_model``; else the preferred one if stored, else the newest admin model) is
  loaded and warmed up, so a request that names no model never waits for a load. Every
  other model is loaded on its first request.
* Loaded models are kept within a budget: at most ``max_loaded_models`` versions and ``max_memory_mb``
  MiB (estimated from the size of their weights files); 0 means no limit. Beyond it the least recently used
  version is unloaded. The default model's served version is never unloaded. Unloading only drops
  the registry's reference, so a request that already holds the model finishes on it.
* Older versions asked for by number are loaded on demand too, and also kept in a small LRU of their own
  (``max_pinned``; "pinned" in this module's names means that LRU, not an admin's pin).

Hot reload: a background thread polls the store (cheap directory listings). When the *served* version of a
loaded model changes (a newer version published, or an admin pinned, unpinned or deleted one: the served
version is the pinned one, else the newest; `vision.models.admin`) it is loaded beside the old one and swapped
in with one reference assignment, so no request ever fails because of a swap. A newer version of a model
that is not loaded is only noted; it is what the model's next first request loads. Its weights file is
checked against the sha256 in its metadata (read, not loaded), so a damaged version is reported before
anyone asks for it. A version asked for by number that an admin deleted is forgotten at the next poll
(requests naming it then get NOT_FOUND); one pruned by a publisher keeps serving from memory.

A version that fails to load is recorded with the reason (`load_errors`, shown per model by ModelCatalog) and
not retried until a newer version is published; the other models keep serving, and an older version of the
same model keeps serving if one was loaded.

While a version is loaded the registry holds it in the store (`ModelStore.hold`), so a publisher's pruning
leaves it alone; where the store is read-only no hold is taken and a pruned version keeps serving from memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from vision.errors import ModelLoadFailed, ModelNotFound, NoModelAvailable
from vision.models.owners import ModelOwners
from vision.models.store import HOLD_TTL_S, ModelStore, ModelVersion, verify_weights

log = logging.getLogger(__name__)

M = TypeVar("M")
Key = tuple[str, str]  # (name, version)

# The model a request gets when it names none and no default is configured: ImageNet ResNet18 if present.
PREFERRED_DEFAULT = "resnet18"
EMPTY_STORE_MESSAGE = "no model in the model store: import one with `vision models import` or train one"
MIB = 1024 * 1024
# Where the default model comes from: `vision models set-default` (the store), VISION_<SVC>_DEFAULT_MODEL, or
# the registry's own choice (the preferred model, else the newest admin model).
DEFAULT_SOURCES = ("store", "setting", "automatic")


def resident_size(model: object, estimate: int) -> int:
    """Bytes ``model`` holds once loaded: its own ``resident_bytes`` (a model that knows, e.g. weights plus
    a converted runtime's copy of them) when larger than the ``estimate`` made from its files."""
    return max(estimate, int(getattr(model, "resident_bytes", 0) or 0))


def estimated_size(version: ModelVersion) -> int:
    """Bytes a loaded version takes, estimated from its weights file (else all its files) before loading."""
    try:
        return version.weights_path.stat().st_size
    except OSError:
        with contextlib.suppress(OSError):
            return sum(p.stat().st_size for p in version.path.iterdir() if p.is_file())
    return 0


class ModelRegistry(Generic[M]):
    """Loaded models by (name, version). ``loader`` builds and warms up a model from a stored version."""

    def __init__(
        self,
        store: ModelStore,
        loader: Callable[[ModelVersion], M],
        *,
        default_model: str = "",
        poll_interval_s: float = 2.0,
        max_pinned: int = 4,
        max_loaded_models: int = 0,
        max_memory_mb: float = 0.0,
        task: str = "classification",
        preferred_default: str = PREFERRED_DEFAULT,
        empty_message: str = EMPTY_STORE_MESSAGE,
        on_load_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self._on_load_failure = on_load_failure
        self._owners = ModelOwners(store.root)
        self._loader = loader
        self._default = default_model
        self._poll_interval = poll_interval_s
        self._max_pinned = max_pinned
        self._max_loaded = max_loaded_models
        self._max_bytes = int(max_memory_mb * MIB)
        self._task = task
        self._preferred = preferred_default
        self._empty_message = empty_message
        self._latest: dict[str, tuple[str, M]] = {}  # name -> (version, model); replaced, never mutated
        self._pinned: OrderedDict[Key, M] = OrderedDict()  # older versions asked for by number
        self._recent: OrderedDict[Key, int] = OrderedDict()  # every loaded key -> size, least recent first
        self._noted: dict[str, str] = {}  # served version of each model of this task, last poll
        self._default_name = ""  # the default model as of the last poll: its served version is never evicted
        self._default_source = ""  # where it came from: DEFAULT_SOURCES
        self._failed: dict[Key, str] = {}  # (name, version) -> why it could not be loaded
        self._checked: set[Key] = set()  # versions whose files were checked without loading them
        self._lock = threading.Lock()  # guards the references above
        self._load_lock = threading.Lock()  # one load at a time: no model is loaded twice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._holder = f"{socket.gethostname().replace('@', '_')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._holds_renewed = 0.0
        self._holds_work = True
        self._over_budget_logged = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the default model now (blocking), then watch the store in the background."""
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="model-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            held = list(self._recent)
        for key in held:
            self.store.release(*key, self._holder)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.refresh()
            except Exception:  # a bad version must not stop the watcher; it is retried next poll
                log.exception("model store refresh failed")

    def refresh(self) -> None:
        """Load the default model and newer versions of loaded models; note the rest; forget deleted ones."""
        snapshot = self._task_snapshot()
        default, source = self._default_from(snapshot)
        for name, served in snapshot.items():
            if name not in self._latest and name != default:
                self._check(name, served)
        with self._lock:
            self._noted = snapshot
            self._default_name, self._default_source = default, source
        wanted = set(self._latest) | ({default} if default else set())
        for name in sorted(wanted):
            version = snapshot.get(name)
            current = self._latest.get(name)
            if version is None or (name, version) in self._failed:
                continue
            if current is None or current[0] != version:
                with contextlib.suppress(ModelLoadFailed):  # recorded and logged; the rest still loads
                    self._load_latest(name, version)
        with self._lock:
            by_number = list(self._pinned)
        # Deleted by an admin (a pruned version in memory keeps serving: the store may be read-only here).
        removed = {name: set(self.store.lifecycle.deleted(name)) for name, _ in by_number}
        deleted = {key for key in by_number if key[1] in removed[key[0]]}
        with self._lock:
            gone = [key for key in self._recent if key[0] not in snapshot or key in deleted]
            self._latest = {n: v for n, v in self._latest.items() if n in snapshot}
            for key in gone:
                self._forget(key)
            self._failed = {k: why for k, why in self._failed.items() if k[0] in snapshot}
            self._checked = {k for k in self._checked if k[0] in snapshot}
        for key in gone:
            self.store.release(*key, self._holder)
        self._evict()
        self._renew_holds()

    def _task_snapshot(self) -> dict[str, str]:
        """{name: served version} of the store's models of this registry's task (others are ignored)."""
        return {
            name: version
            for name, version in self.store.served_snapshot().items()
            if self.store.get(name, version).metadata.task == self._task
        }

    def _default_from(self, snapshot: dict[str, str]) -> tuple[str, str]:
        """The model a request naming none gets, given the store's models of this task ('' if none), and
        where that choice comes from (`DEFAULT_SOURCES`): the store's default first, so that an admin's
        `vision models set-default` reaches every service of the task whatever its settings say."""
        chosen = self.store.lifecycle.defaults().get(self._task, "")
        if chosen in snapshot:
            return chosen, "store"
        if self._default:
            return self._default, "setting"
        # Only the admins' models (imported, or trained by an admin) become the default unasked: a model a
        # trainer published never takes over the requests that name no model.
        admins = {n: v for n, v in snapshot.items() if self._owners.admin_owned(n)}
        if not admins:
            return "", ""
        if self._preferred in admins:
            return self._preferred, "automatic"
        latest = [self.store.get(n, v) for n, v in admins.items()]
        return max(latest, key=lambda v: v.metadata.created_at).name, "automatic"

    def _load_latest(self, name: str, version: str, replace: bool = True) -> tuple[str, M]:
        """Load ``version`` and make it what requests naming no version get; (version, model) served after.
        ``replace=False`` (a request's first load): whatever a concurrent poll loaded meanwhile stays."""
        with self._load_lock:
            current = self._latest.get(name)
            if current is not None and (current[0] == version or not replace):
                self._touch((name, current[0]))
                return current
            stored = self.store.get(name, version)
            with self._lock:
                model: M | None = self._pinned.get(stored.key)  # loaded by number already: shared
            size = self._recent.get(stored.key, 0) if model is not None else estimated_size(stored)
            if model is None:
                self._evict(adding=size, replacing=(name, current[0]) if current else None)
                model = self._load(stored)
                size = resident_size(model, size)
            replaced = current is not None and (name, current[0]) not in self._pinned
            with self._lock:
                self._latest = {**self._latest, name: (version, model)}
                if current is not None and replaced:
                    self._recent.pop((name, current[0]), None)
                self._recent[stored.key] = size
            self._hold(stored.key)
            if current is not None and replaced:
                self.store.release(name, current[0], self._holder)
            log.info(
                "serving %s version %s%s",
                name,
                version,
                f" (replacing version {current[0]})" if current else "",
            )
        self._evict(keep=stored.key)
        return version, model

    def _load(self, stored: ModelVersion) -> M:
        """The loader's model, or `ModelLoadFailed` (recorded) saying why it could not be loaded."""
        key = stored.key
        if key in self._failed:
            raise ModelLoadFailed(self._failed[key])
        try:
            return self._loader(stored)
        except Exception as exc:
            raise ModelLoadFailed(self._record_failure(stored, exc)) from exc

    def _record_failure(self, stored: ModelVersion, exc: Exception) -> str:
        why = f"model {stored.name!r} version {stored.version} could not be loaded: {exc}"
        log.error("%s", why, exc_info=exc)
        with self._lock:
            self._failed[stored.key] = why
        if self._on_load_failure is not None:
            self._on_load_failure(stored.name, stored.version)
        return why

    def _check(self, name: str, version: str) -> None:
        """Note a version that is not loaded, once: log it, and record it as failed if its files are damaged
        (checked against the sha256 in its metadata, without loading it)."""
        key = (name, version)
        if key in self._checked or key in self._failed:
            return
        try:
            stored = self.store.get(name, version)
        except ModelNotFound:
            return  # deleted meanwhile
        try:
            verify_weights(stored)
        except Exception as exc:
            self._record_failure(stored, exc)
        else:
            log.info("model %s version %s is available (loaded on its first request)", name, version)
        with self._lock:
            self._checked.add(key)

    # -- the memory budget -----------------------------------------------------------------------------
    def _touch(self, key: Key) -> None:
        with self._lock:
            if key in self._recent:
                self._recent.move_to_end(key)

    def _protected(self) -> Key | None:
        """The default model's served version: never evicted."""
        name = self._default_name or self._default
        current = self._latest.get(name)
        return (name, current[0]) if current else None

    def _over_budget(self, adding: int | None, replacing: Key | None) -> bool:
        sizes = {key: size for key, size in self._recent.items() if key != replacing}
        count = len(sizes) + (adding is not None)
        total = sum(sizes.values()) + (adding or 0)
        return bool(
            (self._max_loaded and count > self._max_loaded) or (self._max_bytes and total > self._max_bytes)
        )

    def _evict(
        self, adding: int | None = None, replacing: Key | None = None, keep: Key | None = None
    ) -> None:
        """Unload least recently used versions until the loaded ones fit the budget, counting a version of
        ``adding`` bytes about to be loaded (in place of ``replacing``, which stays loaded until the swap).
        The default model's newest version is never unloaded, nor ``keep`` (the version just loaded)."""
        evicted = []
        with self._lock:
            protected = {self._protected(), replacing, keep}
            while self._over_budget(adding, replacing):
                victim = next((key for key in self._recent if key not in protected), None)
                if victim is None:
                    if not self._over_budget_logged:
                        log.warning(
                            "loaded models exceed the budget (%d versions, %.0f MiB); none can be unloaded",
                            len(self._recent),
                            sum(self._recent.values()) / MIB,
                        )
                        self._over_budget_logged = True
                    break
                self._forget(victim)
                evicted.append(victim)
        for name, version in evicted:
            self.store.release(name, version, self._holder)
            log.info(
                "unloaded %s version %s (least recently used; over the loaded-model budget)", name, version
            )

    def _forget(self, key: Key) -> None:
        """Drop every reference the registry has to ``key`` (caller holds ``_lock``)."""
        self._recent.pop(key, None)
        self._pinned.pop(key, None)
        current = self._latest.get(key[0])
        if current is not None and current[0] == key[1]:
            self._latest = {n: v for n, v in self._latest.items() if n != key[0]}

    # -- holds: what pruning must leave alone ------------------------------------------------------------
    def _hold(self, key: Key) -> None:
        if self._holds_work and not self.store.hold(*key, self._holder):
            self._holds_work = False
            log.info(
                "the model store is read-only here: versions this service has loaded are not held against "
                "pruning (they keep serving from memory)"
            )

    def _renew_holds(self) -> None:
        now = time.monotonic()
        if not self._holds_work or now - self._holds_renewed < HOLD_TTL_S / 3:
            return
        self._holds_renewed = now
        with self._lock:
            keys = list(self._recent)
        for key in keys:
            self._hold(key)

    # -- lookups ---------------------------------------------------------------------------------------
    def resolve_name(self, name: str) -> str:
        """The model name a request means: its own, else the configured default, else a sensible one."""
        if name:
            return name
        if self._default_name:  # as of the last poll: no store reads per request (O(models) files each)
            return self._default_name
        if self._default:
            return self._default
        snapshot = self._task_snapshot()  # the store was empty at the last poll
        default, _ = self._default_from(snapshot)
        if not default and snapshot:
            raise NoModelAvailable(
                "no default model: the stored models were all published by trainers, and only an admin's "
                f"model is the default unasked; name one ({', '.join(sorted(snapshot)[:5])}) or configure a "
                "default model"
            )
        if not default:
            raise NoModelAvailable(self._empty_message)
        return default

    def get(self, name: str = "", version: str = "") -> tuple[str, str, M]:
        """(name, version, model) for a request; raises `ModelNotFound` with what is available."""
        name = self.resolve_name(name)
        current = self._latest.get(name)
        if current is not None and (not version or version == current[0]):
            self._touch((name, current[0]))
            return name, current[0], current[1]
        if not version:
            # Not loaded yet (or published after the last poll): load it now.
            stored = self.store.get(name, self.store.served_version(name))
            if stored.metadata.task != self._task:
                raise ModelNotFound(f"model {name!r} is a {stored.metadata.task} model, not {self._task}")
            return name, *self._load_latest(name, stored.version, replace=False)
        return name, version, self._get_pinned(name, version)

    def _get_pinned(self, name: str, version: str) -> M:
        key = (name, version)
        with self._lock:
            if key in self._pinned:
                self._pinned.move_to_end(key)
                self._recent.move_to_end(key)
                return self._pinned[key]
        stored = self.store.get(name, version)
        if stored.metadata.task != self._task:
            raise ModelNotFound(f"model {name!r} is a {stored.metadata.task} model, not {self._task}")
        if self._latest.get(name) is None and version == self.store.served_version(name):
            served, model = self._load_latest(name, version, replace=False)  # loaded as the served one
            if served == version:
                return model
        with self._load_lock:
            with self._lock:
                if key in self._pinned:  # loaded by a concurrent request meanwhile
                    return self._pinned[key]
            size = estimated_size(stored)
            self._evict(adding=size)
            model = self._load(stored)
            size = resident_size(model, size)
            with self._lock:
                self._pinned[key] = model
                self._recent[key] = size
                dropped = []
                while len(self._pinned) > self._max_pinned:
                    old, _ = self._pinned.popitem(last=False)
                    self._forget(old)
                    dropped.append(old)
            self._hold(key)
            for old in dropped:
                self.store.release(*old, self._holder)
        self._evict(keep=key)
        return model

    def default_source(self) -> str:
        """Where the default model comes from (`DEFAULT_SOURCES`), as of the last poll."""
        return self._default_source

    def load_errors(self) -> dict[Key, str]:
        """Why each (name, version) that failed to load could not be loaded."""
        with self._lock:
            return dict(self._failed)

    def loaded(self) -> set[Key]:
        """(name, version) of every model in memory."""
        return set(self.loaded_models())

    def loaded_models(self) -> dict[Key, M]:
        """Every model in memory by (name, version)."""
        with self._lock:
            return {**{(n, v): m for n, (v, m) in self._latest.items()}, **self._pinned}

"""Hot-reloading set of loaded models, shared by the model services.

The newest version of every model in the store is kept loaded and warmed up. A background thread polls the
store (cheap directory listings) and loads new versions *beside* the old ones; the swap is one reference
assignment, so a request that already holds the old model finishes on it and no request ever fails because
of a swap. Older versions asked for explicitly are loaded on demand and kept in a small LRU cache.

A version that fails to load is recorded with the reason (`load_errors`, shown per model by ModelCatalog) and
not retried until a newer version is published; the other models keep serving, and an older version of the
same model keeps serving if one was loaded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from vision.errors import ModelLoadFailed, ModelNotFound, NoModelAvailable
from vision.models.store import ModelStore, ModelVersion

log = logging.getLogger(__name__)

M = TypeVar("M")

# The model a request gets when it names none and no default is configured: ImageNet ResNet18 if present.
PREFERRED_DEFAULT = "resnet18"
EMPTY_STORE_MESSAGE = "no model in the model store: import one with `vision models import` or train one"


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
        task: str = "classification",
        preferred_default: str = PREFERRED_DEFAULT,
        empty_message: str = EMPTY_STORE_MESSAGE,
    ) -> None:
        self.store = store
        self._loader = loader
        self._default = default_model
        self._poll_interval = poll_interval_s
        self._max_pinned = max_pinned
        self._task = task
        self._preferred = preferred_default
        self._empty_message = empty_message
        self._latest: dict[str, tuple[str, M]] = {}  # name -> (version, model); replaced, never mutated
        self._pinned: OrderedDict[tuple[str, str], M] = OrderedDict()
        self._failed: dict[tuple[str, str], str] = {}  # (name, version) -> why it could not be loaded
        self._lock = threading.Lock()  # guards the references above
        self._load_lock = threading.Lock()  # one load at a time: no model is loaded twice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load what the store holds now (blocking), then watch it in the background."""
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="model-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self.refresh()
            except Exception:  # a bad version must not stop the watcher; it is retried next poll
                log.exception("model store refresh failed")

    def refresh(self) -> None:
        """Load new versions that appeared in the store; forget models that were deleted."""
        snapshot = self._task_snapshot()
        for name, version in snapshot.items():
            current = self._latest.get(name)
            if (current is None or int(current[0]) < int(version)) and (name, version) not in self._failed:
                with contextlib.suppress(ModelLoadFailed):  # recorded and logged; the rest still loads
                    self._load_latest(name, version)
        with self._lock:
            self._latest = {n: v for n, v in self._latest.items() if n in snapshot}
            self._failed = {k: why for k, why in self._failed.items() if k[0] in snapshot}

    def _task_snapshot(self) -> dict[str, str]:
        """{name: newest version} of the store's models of this registry's task (others are ignored)."""
        return {
            name: version
            for name, version in self.store.snapshot().items()
            if self.store.get(name, version).metadata.task == self._task
        }

    def _load_latest(self, name: str, version: str) -> M:
        with self._load_lock:
            current = self._latest.get(name)
            if current is not None and int(current[0]) >= int(version):
                return current[1]
            model = self._load(self.store.get(name, version))
            with self._lock:
                self._latest = {**self._latest, name: (version, model)}
            log.info(
                "serving %s version %s%s",
                name,
                version,
                f" (replacing version {current[0]})" if current else "",
            )
            return model

    def _load(self, stored: ModelVersion) -> M:
        """The loader's model, or `ModelLoadFailed` (recorded) saying why it could not be loaded."""
        key = stored.key
        if key in self._failed:
            raise ModelLoadFailed(self._failed[key])
        try:
            return self._loader(stored)
        except Exception as exc:
            why = f"model {stored.name!r} version {stored.version} could not be loaded: {exc}"
            log.error("%s", why, exc_info=exc)
            with self._lock:
                self._failed[key] = why
            raise ModelLoadFailed(why) from exc

    # -- lookups ---------------------------------------------------------------------------------------
    def resolve_name(self, name: str) -> str:
        """The model name a request means: its own, else the configured default, else a sensible one."""
        if name:
            return name
        if self._default:
            return self._default
        names = list(self._task_snapshot())
        if not names:
            raise NoModelAvailable(self._empty_message)
        if self._preferred in names:
            return self._preferred
        latest = [self.store.get(n) for n in names]
        return max(latest, key=lambda v: v.metadata.created_at).name

    def get(self, name: str = "", version: str = "") -> tuple[str, str, M]:
        """(name, version, model) for a request; raises `ModelNotFound` with what is available."""
        name = self.resolve_name(name)
        current = self._latest.get(name)
        if current is not None and (not version or version == current[0]):
            return name, current[0], current[1]
        if not version:
            # Published after the last poll: load it now rather than answer "not found".
            stored = self.store.get(name)
            if stored.metadata.task != self._task:
                raise ModelNotFound(f"model {name!r} is a {stored.metadata.task} model, not {self._task}")
            return name, stored.version, self._load_latest(name, stored.version)
        return name, version, self._get_pinned(name, version)

    def _get_pinned(self, name: str, version: str) -> M:
        key = (name, version)
        with self._lock:
            if key in self._pinned:
                self._pinned.move_to_end(key)
                return self._pinned[key]
        stored = self.store.get(name, version)
        if stored.metadata.task != self._task:
            raise ModelNotFound(f"model {name!r} is a {stored.metadata.task} model, not {self._task}")
        with self._load_lock:
            model = self._load(stored)
        with self._lock:
            self._pinned[key] = model
            while len(self._pinned) > self._max_pinned:
                self._pinned.popitem(last=False)
        return model

    def load_errors(self) -> dict[tuple[str, str], str]:
        """Why each (name, version) that failed to load could not be loaded."""
        with self._lock:
            return dict(self._failed)

    def loaded(self) -> set[tuple[str, str]]:
        """(name, version) of every model in memory."""
        with self._lock:
            return {(n, v) for n, (v, _) in self._latest.items()} | set(self._pinned)

"""The model registry over a real (temporary) model store: which version a request gets, when new versions are
picked up, how a request without a model name is resolved, the LRU of pinned versions, task filtering, and
what happens when a version cannot be loaded. The loader is trivial (it records what it was asked to load),
except in the one test that checks the served model really has the published weights."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vision.errors import ModelLoadFailed, ModelNotFound, NoModelAvailable, NotReady
from vision.models.architectures import build_model
from vision.models.store import ModelMetadata, ModelStore, ModelVersion
from vision.models.weights import load_classifier, publish_state_dict
from vision.serving.registry import EMPTY_STORE_MESSAGE, ModelRegistry

pytestmark = pytest.mark.fast


def publish(
    store: ModelStore, name: str, *, seed: int = 0, task: str = "classification", created_at: str = ""
) -> ModelVersion:
    """A seeded smallcnn published through the real store."""
    torch.manual_seed(seed)
    model = build_model("smallcnn", 2)
    metadata = ModelMetadata(
        "smallcnn", ["a", "b"], task=task, provenance={"seed": seed}, created_at=created_at
    )
    return publish_state_dict(store, name, model.state_dict(), metadata)


@dataclass(frozen=True)
class Loaded:
    name: str
    version: str
    seed: int


class Loader:
    """Records every load; fails for versions published with a seed in ``broken``."""

    def __init__(self, broken: tuple[int, ...] = ()) -> None:
        self.loads: list[tuple[str, str]] = []
        self.broken = broken
        self._lock = threading.Lock()

    def __call__(self, version: ModelVersion) -> Loaded:
        with self._lock:
            self.loads.append(version.key)
        seed = int(version.metadata.provenance["seed"])
        if seed in self.broken:
            raise RuntimeError(f"weights of seed {seed} are damaged")
        return Loaded(version.name, version.version, seed)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def registry(store: ModelStore, loader: Loader, **options: object) -> ModelRegistry[Loaded]:
    return ModelRegistry(store, loader, **options)  # type: ignore[arg-type]


# -- which version ------------------------------------------------------------------------------------------
def test_the_newest_version_is_served_and_only_it_is_loaded(store: ModelStore) -> None:
    for seed in (1, 2, 3):
        publish(store, "cats", seed=seed)
    loader = Loader()
    reg = registry(store, loader)
    reg.refresh()
    assert reg.get("cats") == ("cats", "3", Loaded("cats", "3", 3))
    assert loader.loads == [("cats", "3")]
    assert reg.loaded() == {("cats", "3")}


def test_the_served_model_has_the_published_weights(store: ModelStore) -> None:
    publish(store, "cats", seed=1)
    published = publish(store, "cats", seed=2)
    reg: ModelRegistry[torch.nn.Module] = ModelRegistry(store, load_classifier)
    reg.refresh()
    _, version, model = reg.get("cats")
    torch.manual_seed(2)
    expected = build_model("smallcnn", 2).state_dict()
    assert version == published.version == "2"
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    assert not model.training


def test_a_new_version_is_picked_up_by_refresh_and_the_old_model_stays_usable(store: ModelStore) -> None:
    publish(store, "cats", seed=1)
    loader = Loader()
    reg = registry(store, loader)
    reg.refresh()
    *_, before = reg.get("cats")
    publish(store, "cats", seed=2)
    assert reg.get("cats")[1] == "1"  # nothing changes between polls
    reg.refresh()
    assert reg.get("cats") == ("cats", "2", Loaded("cats", "2", 2))
    assert before == Loaded("cats", "1", 1)  # a request holding the old model finishes on it
    assert loader.loads == [("cats", "1"), ("cats", "2")]
    reg.refresh()
    assert len(loader.loads) == 2  # nothing new: nothing reloaded


def test_a_model_published_after_the_last_poll_is_loaded_on_first_request(store: ModelStore) -> None:
    reg = registry(store, Loader())
    reg.refresh()
    publish(store, "dogs", seed=5)
    assert reg.get("dogs") == ("dogs", "1", Loaded("dogs", "1", 5))


def test_a_deleted_model_is_forgotten_on_refresh(store: ModelStore) -> None:
    publish(store, "cats")
    publish(store, "dogs")
    reg = registry(store, Loader())
    reg.refresh()
    shutil.rmtree(store.root / "dogs")
    reg.refresh()
    assert reg.loaded() == {("cats", "1")}
    with pytest.raises(ModelNotFound, match="'dogs' not found; available: cats"):
        reg.get("dogs")


def test_concurrent_first_requests_load_a_model_once(store: ModelStore) -> None:
    publish(store, "cats")
    loader = Loader()
    reg = registry(store, loader)
    start = threading.Barrier(8)
    results: list[tuple[str, str, Loaded]] = []

    def request() -> None:
        start.wait(5)
        results.append(reg.get("cats"))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [("cats", "1", Loaded("cats", "1", 0))] * 8
    assert loader.loads == [("cats", "1")]


def test_the_watcher_picks_up_new_versions_by_itself(store: ModelStore) -> None:
    publish(store, "cats", seed=1)
    reg = registry(store, Loader(), poll_interval_s=0.01)
    reg.start()
    try:
        assert reg.loaded() == {("cats", "1")}  # start() loads what is there before returning
        publish(store, "cats", seed=2)
        deadline = time.monotonic() + 10
        while ("cats", "2") not in reg.loaded() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert reg.get("cats")[1] == "2"
    finally:
        reg.stop()


# -- which model, when the request names none --------------------------------------------------------------
def test_a_named_model_wins_then_the_configured_default(store: ModelStore) -> None:
    publish(store, "resnet18")
    publish(store, "cats")
    assert registry(store, Loader()).resolve_name("dogs") == "dogs"
    assert registry(store, Loader(), default_model="cats").resolve_name("") == "cats"
    assert registry(store, Loader(), default_model="cats").get()[0] == "cats"


def test_without_a_default_the_preferred_model_then_the_newest(store: ModelStore) -> None:
    publish(store, "older", created_at="2024-01-01T00:00:00+00:00")
    publish(store, "newer", created_at="2025-01-01T00:00:00+00:00")
    publish(store, "oldest", created_at="2023-01-01T00:00:00+00:00")
    assert registry(store, Loader()).resolve_name("") == "newer"
    publish(store, "resnet18", created_at="2020-01-01T00:00:00+00:00")
    assert registry(store, Loader()).resolve_name("") == "resnet18"
    assert registry(store, Loader(), preferred_default="older").resolve_name("") == "older"


def test_an_empty_store_says_how_to_fill_it(store: ModelStore) -> None:
    reg = registry(store, Loader())
    reg.refresh()
    with pytest.raises(NoModelAvailable) as caught:
        reg.get()
    assert caught.value.message == EMPTY_STORE_MESSAGE
    with pytest.raises(NoModelAvailable, match="no detector"):
        registry(store, Loader(), empty_message="no detector").get()


# -- pinned versions -----------------------------------------------------------------------------------------
def test_pinned_versions_are_loaded_on_demand_and_kept_in_a_small_lru(store: ModelStore) -> None:
    for seed in range(1, 6):
        publish(store, "cats", seed=seed)  # versions 1..5
    loader = Loader()
    reg = registry(store, loader, max_pinned=2)
    reg.refresh()
    assert reg.get("cats", "5") == ("cats", "5", Loaded("cats", "5", 5))  # the latest: no extra load
    assert reg.get("cats", "1")[2] == Loaded("cats", "1", 1)
    assert reg.get("cats", "2")[2] == Loaded("cats", "2", 2)
    assert reg.get("cats", "1")[2] == Loaded("cats", "1", 1)  # a hit: now the most recently used
    assert reg.get("cats", "3")[2] == Loaded("cats", "3", 3)  # evicts 2, the least recently used
    assert reg.loaded() == {("cats", "5"), ("cats", "1"), ("cats", "3")}
    assert loader.loads == [("cats", "5"), ("cats", "1"), ("cats", "2"), ("cats", "3")]
    reg.get("cats", "2")  # evicted: loaded again
    assert loader.loads[-1] == ("cats", "2")


def test_an_unknown_version_lists_the_available_ones(store: ModelStore) -> None:
    publish(store, "cats")
    publish(store, "cats")
    reg = registry(store, Loader())
    reg.refresh()
    with pytest.raises(ModelNotFound, match="no version '9'; available versions: 1, 2"):
        reg.get("cats", "9")


# -- task filtering ------------------------------------------------------------------------------------------
def test_models_of_another_task_are_neither_loaded_nor_served(store: ModelStore) -> None:
    publish(store, "cats", created_at="2024-01-01T00:00:00+00:00")
    publish(store, "yolo", task="detection", created_at="2025-01-01T00:00:00+00:00")
    loader = Loader()
    reg = registry(store, loader)
    reg.refresh()
    assert loader.loads == [("cats", "1")]
    assert reg.resolve_name("") == "cats"  # the newer detection model is not a candidate
    with pytest.raises(ModelNotFound, match="'yolo' is a detection model, not classification"):
        reg.get("yolo")
    with pytest.raises(ModelNotFound, match="detection model"):
        reg.get("yolo", "1")
    detectors = registry(store, loader, task="detection")
    detectors.refresh()
    assert detectors.get() == ("yolo", "1", Loaded("yolo", "1", 0))


# -- versions that cannot be loaded ----------------------------------------------------------------------
def test_a_version_that_fails_to_load_is_reported_and_the_others_keep_serving(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    publish(store, "cats", seed=1)
    publish(store, "broken", seed=66)
    loader = Loader(broken=(66,))
    reg = registry(store, loader)
    with caplog.at_level(logging.ERROR, logger="vision.serving.registry"):
        reg.refresh()  # does not raise
    assert reg.get("cats") == ("cats", "1", Loaded("cats", "1", 1))
    assert reg.load_errors() == {
        ("broken", "1"): "model 'broken' version 1 could not be loaded: weights of seed 66 are damaged"
    }
    assert [r.getMessage() for r in caplog.records] == [reg.load_errors()[("broken", "1")]]
    with pytest.raises(ModelLoadFailed, match="weights of seed 66 are damaged") as caught:
        reg.get("broken")
    assert isinstance(caught.value, NotReady)  # UNAVAILABLE to a client: retry later or elsewhere
    reg.refresh()
    assert loader.loads.count(("broken", "1")) == 1  # not retried until a new version appears
    publish(store, "broken", seed=7)
    reg.refresh()
    assert reg.get("broken") == ("broken", "2", Loaded("broken", "2", 7))
    assert reg.load_errors() == {
        ("broken", "1"): "model 'broken' version 1 could not be loaded: weights of seed 66 are damaged"
    }


def test_a_bad_new_version_leaves_the_previous_one_serving(store: ModelStore) -> None:
    publish(store, "cats", seed=1)
    loader = Loader(broken=(66,))
    reg = registry(store, loader)
    reg.refresh()
    publish(store, "cats", seed=66)
    reg.refresh()
    assert reg.get("cats") == ("cats", "1", Loaded("cats", "1", 1))
    assert set(reg.load_errors()) == {("cats", "2")}
    with pytest.raises(ModelLoadFailed):
        reg.get("cats", "2")  # asked for by number: the reason, not a retry
    assert loader.loads.count(("cats", "2")) == 1


def test_load_errors_of_a_deleted_model_are_forgotten(store: ModelStore) -> None:
    publish(store, "cats")
    publish(store, "broken", seed=66)
    reg = registry(store, Loader(broken=(66,)))
    reg.refresh()
    assert set(reg.load_errors()) == {("broken", "1")}
    shutil.rmtree(store.root / "broken")
    reg.refresh()
    assert reg.load_errors() == {}

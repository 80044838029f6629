"""Issue 11, defect 3: a model service keeps only what it needs in memory.

At start only the default model is loaded; every other model loads on its first request; loaded versions stay
within ``max_loaded_models`` / ``max_memory_mb`` by unloading the least recently used (never the default);
a request holding an unloaded model finishes on it; hot reload swaps newer versions of loaded models only;
ModelCatalog's ``loaded`` follows all this; loaded versions are held against the publisher's pruning.
The loader is trivial (it records what it was asked to load), as in test_registry.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vision.errors import ModelLoadFailed, ModelNotFound
from vision.models.architectures import build_model
from vision.models.store import HOLDS_DIR, ModelMetadata, ModelStore, ModelVersion
from vision.models.weights import publish_state_dict
from vision.rpc.catalog import ModelCatalogServicer
from vision.serving.registry import ModelRegistry
from vision.settings import ModelServiceSettings
from vision.v1 import models_pb2

pytestmark = pytest.mark.fast


@dataclass(frozen=True)
class Loaded:
    name: str
    version: str


class Loader:
    def __init__(self) -> None:
        self.loads: list[tuple[str, str]] = []

    def __call__(self, version: ModelVersion) -> Loaded:
        self.loads.append(version.key)
        return Loaded(version.name, version.version)


def publish(store: ModelStore, name: str, *, seed: int = 0, created_at: str = "") -> ModelVersion:
    torch.manual_seed(seed)
    metadata = ModelMetadata("smallcnn", ["a", "b"], created_at=created_at)
    return publish_state_dict(store, name, build_model("smallcnn", 2).state_dict(), metadata)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", keep_versions=0)


def registry(store: ModelStore, loader: Loader, **options: object) -> ModelRegistry[Loaded]:
    return ModelRegistry(store, loader, **options)  # type: ignore[arg-type]


def catalog_loaded(reg: ModelRegistry[Loaded]) -> set[tuple[str, str]]:
    listed = ModelCatalogServicer(reg).ListModels(models_pb2.ListModelsRequest(), None)  # type: ignore[arg-type]
    return {(m.name, m.version) for m in listed.models if m.loaded}


# -- lazy loading --------------------------------------------------------------------------------------------
def test_only_the_default_model_is_loaded_at_start(store: ModelStore) -> None:
    for name in ("cats", "dogs", "birds", "resnet18"):
        publish(store, name)
    loader = Loader()
    reg = registry(store, loader)  # no default configured: the preferred resnet18
    reg.start()
    try:
        assert loader.loads == [("resnet18", "1")]
        assert reg.loaded() == catalog_loaded(reg) == {("resnet18", "1")}
    finally:
        reg.stop()
    configured = Loader()
    registry(store, configured, default_model="dogs").refresh()
    assert configured.loads == [("dogs", "1")]


def test_requests_naming_no_model_read_no_metadata_however_many_models_are_stored(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(30):
        publish(store, f"m{index:02d}", created_at=f"2026-01-01T00:00:{index:02d}Z")
    reg = registry(store, Loader())
    reg.refresh()
    reads: list[tuple[str, str]] = []
    real_get = store.get

    def counting_get(name: str, version: str | None = None) -> ModelVersion:
        reads.append((name, version or ""))
        return real_get(name, version)

    monkeypatch.setattr(store, "get", counting_get)  # counts the real store's reads, changes nothing
    assert {reg.get()[0] for _ in range(100)} == {"m29"}  # the newest, as of the last poll
    assert reads == []


def test_other_models_load_on_their_first_request_once(store: ModelStore) -> None:
    publish(store, "resnet18")
    publish(store, "cats")
    loader = Loader()
    reg = registry(store, loader)
    reg.refresh()
    assert reg.get("cats") == ("cats", "1", Loaded("cats", "1"))
    assert reg.get("cats") == ("cats", "1", Loaded("cats", "1"))
    assert loader.loads == [("resnet18", "1"), ("cats", "1")]
    assert catalog_loaded(reg) == {("resnet18", "1"), ("cats", "1")}


def test_a_newer_version_of_a_loaded_model_is_swapped_in_and_of_an_unloaded_one_only_noted(
    store: ModelStore,
) -> None:
    publish(store, "resnet18")
    publish(store, "cats")
    publish(store, "dogs")
    loader = Loader()
    reg = registry(store, loader)
    reg.refresh()
    *_, old_cats = reg.get("cats")
    publish(store, "cats", seed=1)
    publish(store, "dogs", seed=1)
    publish(store, "resnet18", seed=1)
    reg.refresh()
    assert reg.loaded() == {("resnet18", "2"), ("cats", "2")}  # dogs was never asked for: still not loaded
    assert ("dogs", "2") not in loader.loads and ("dogs", "1") not in loader.loads
    assert old_cats == Loaded("cats", "1")  # a request holding the old one finishes on it
    assert reg.get("dogs")[1] == "2"  # its first request loads the newest


# -- the memory budget ---------------------------------------------------------------------------------------
def test_least_recently_used_models_are_unloaded_beyond_max_loaded_models(store: ModelStore) -> None:
    for name in ("resnet18", "a", "b", "c"):
        publish(store, name)
    loader = Loader()
    reg = registry(store, loader, max_loaded_models=3)
    reg.refresh()
    reg.get("a")
    reg.get("b")
    reg.get("a")  # b is now the least recently used (resnet18, the default, never counts as a victim)
    reg.get("c")
    assert reg.loaded() == catalog_loaded(reg) == {("resnet18", "1"), ("a", "1"), ("c", "1")}
    reg.get("b")  # unloaded: loaded again, and a (least recent now) makes room
    assert loader.loads[-1] == ("b", "1")
    assert reg.loaded() == {("resnet18", "1"), ("c", "1"), ("b", "1")}


def test_the_memory_budget_counts_the_weights_files(store: ModelStore) -> None:
    for name in ("resnet18", "a", "b", "c"):
        publish(store, name)
    weights_mb = store.get("a").weights_path.stat().st_size / 2**20
    reg = registry(store, Loader(), max_memory_mb=weights_mb * 2.5)  # room for two and a half models
    reg.refresh()
    reg.get("a")
    reg.get("b")
    assert reg.loaded() == {("resnet18", "1"), ("b", "1")}
    reg.get("c")
    assert reg.loaded() == {("resnet18", "1"), ("c", "1")}


def test_the_default_model_is_never_unloaded_even_when_least_recently_used(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("cats", "a", "b"):
        publish(store, name)
    reg = registry(store, Loader(), default_model="cats", max_loaded_models=1)
    reg.refresh()
    with caplog.at_level(logging.WARNING, logger="vision.serving.registry"):
        for _ in range(3):
            reg.get("a")
            reg.get("b")
    assert ("cats", "1") in reg.loaded()
    assert reg.get() == ("cats", "1", Loaded("cats", "1"))
    assert reg.loaded() == {("cats", "1"), ("b", "1")}  # over a budget of 1: the default and the one in use
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "none can be unloaded" in warnings[0]  # said once, not per request


def test_a_model_unloaded_while_a_request_uses_it_keeps_working_for_that_request(store: ModelStore) -> None:
    publish(store, "resnet18")
    publish(store, "a")
    publish(store, "b")
    reg = registry(store, Loader(), max_loaded_models=2)
    reg.refresh()
    _, _, in_flight = reg.get("a")
    reg.get("b")  # a is unloaded: only the registry's reference is dropped
    assert ("a", "1") not in reg.loaded()
    assert in_flight == Loaded("a", "1")


def test_versions_asked_for_by_number_count_against_the_budget(store: ModelStore) -> None:
    publish(store, "resnet18")
    for seed in range(3):
        publish(store, "cats", seed=seed)
    reg = registry(store, Loader(), max_loaded_models=2)
    reg.refresh()
    reg.get("cats", "1")
    reg.get("cats", "2")
    assert reg.loaded() == {("resnet18", "1"), ("cats", "2")}
    assert reg.get("cats", "3")[1] == "3"  # the newest asked for by number is loaded as the newest
    assert reg.loaded() == {("resnet18", "1"), ("cats", "3")}


def test_the_engine_passes_the_budget_settings_to_the_registry(store: ModelStore) -> None:
    from vision.serving.engine import ServingEngine

    settings = ModelServiceSettings(model_dir=store.root, max_loaded_models=7, max_models_memory_mb=64)
    engine: ServingEngine[object, object, object] = ServingEngine(store, settings)
    try:
        assert engine.registry._max_loaded == 7
        assert engine.registry._max_bytes == 64 * 2**20
    finally:
        engine.close()
    defaults = ModelServiceSettings()
    assert (defaults.max_loaded_models, defaults.max_models_memory_mb) == (4, 1024.0)


# -- load failures of models that are not loaded -------------------------------------------------------------
def test_a_damaged_version_of_a_model_not_loaded_is_reported_without_loading_it(store: ModelStore) -> None:
    publish(store, "resnet18")
    damaged = publish(store, "broken")
    data = bytearray(damaged.weights_path.read_bytes())
    data[-8:] = bytes(8)
    damaged.weights_path.write_bytes(bytes(data))
    loader = Loader()
    reg = registry(store, loader)
    reg.refresh()
    assert "sha256" in reg.load_errors()[("broken", "1")]
    assert str(store.root) not in reg.load_errors()[("broken", "1")]  # no server paths
    with pytest.raises(ModelLoadFailed, match="sha256"):
        reg.get("broken")
    assert loader.loads == [("resnet18", "1")]


# -- retention: what the registry holds ----------------------------------------------------------------------
def test_loaded_versions_are_held_against_pruning_and_released_when_unloaded(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=1)
    publish(store, "resnet18")
    publish(store, "cats")
    reg = registry(store, Loader(), max_loaded_models=2)
    reg.refresh()
    reg.get("cats", "1")
    publish(store, "cats", seed=1)
    publish(store, "cats", seed=2)
    assert store.versions("cats") == ["1", "3"]  # 1 is in use by the service
    publish(store, "other")
    reg.get("other")  # unloads cats 1 (least recently used): its hold goes
    publish(store, "cats", seed=3)
    assert store.versions("cats") == ["4"]
    reg.stop()
    assert not any((store.root / HOLDS_DIR).iterdir())  # a stopped service holds nothing


def test_a_pruned_version_in_memory_keeps_serving_and_one_not_in_memory_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=2)
    monkeypatch.setattr(store, "hold", lambda *args: False)  # a read-only mount (Kubernetes): no holds
    publish(store, "resnet18")
    publish(store, "cats")
    publish(store, "cats", seed=1)
    reg = registry(store, Loader())
    reg.refresh()
    assert reg.get("cats", "1")[2] == Loaded("cats", "1")  # an older version, asked for by number
    for seed in range(2, 4):
        publish(store, "cats", seed=seed)
    assert store.versions("cats") == ["3", "4"]
    reg.refresh()
    assert reg.get("cats", "1")[2] == Loaded("cats", "1")  # its in-memory copy
    with pytest.raises(ModelNotFound, match="no version '2'; available versions: 3, 4"):
        reg.get("cats", "2")

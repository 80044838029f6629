"""The model store: versioned, atomic, safetensors weights with JSON metadata."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from tests.conftest import publish_random_model
from vision.errors import InvalidArgument, ModelNotFound, NoModelAvailable
from vision.models.store import METADATA_FILE, WEIGHTS_FILE, ModelMetadata, ModelStore
from vision.models.weights import load_classifier, publish_state_dict


def test_published_version_has_safetensors_weights_and_complete_metadata(store: ModelStore) -> None:
    version = publish_random_model(store, "pets", classes=["cat", "dog"])
    assert (version.path / WEIGHTS_FILE).read_bytes()[:8]  # safetensors header length
    meta = json.loads((version.path / METADATA_FILE).read_text())
    for key in (
        "architecture",
        "class_names",
        "input_size",
        "mean",
        "std",
        "metrics",
        "provenance",
        "created_at",
    ):
        assert key in meta
    assert meta["name"] == "pets" and meta["version"] == "1" and meta["num_classes"] == 2
    assert meta["weights_sha256"]


def test_versions_count_up_and_the_newest_is_the_default(store: ModelStore) -> None:
    for seed in range(3):
        publish_random_model(store, "pets", classes=["cat", "dog"], seed=seed)
    assert store.versions("pets") == ["1", "2", "3"]
    assert store.get("pets").version == "3"
    assert store.get("pets", "2").version == "2"
    assert store.snapshot() == {"pets": "3"}


def test_weights_round_trip_exactly(store: ModelStore) -> None:
    torch.manual_seed(3)
    version = publish_random_model(store, "tiny", arch="smallcnn", classes=["a", "b", "c"], seed=3)
    model = load_classifier(version)
    torch.manual_seed(3)
    from vision.models.architectures import build_model

    reference = build_model("smallcnn", 3).eval()
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model(x), reference(x))


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=0)  # all 8 kept: this test is about numbering

    def publish_one() -> None:
        def write(tmp: Path) -> dict[str, str]:
            (tmp / "w.bin").write_bytes(b"x")
            return {}

        result = store.publish("race", ModelMetadata("resnet18", ["a"]), write)
        assert result.path.is_dir()

    threads = [threading.Thread(target=publish_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.versions("race") == [str(i) for i in range(1, 9)]
    assert not [p for p in (store.root / "race").iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_a_half_written_version_is_invisible(store: ModelStore) -> None:
    publish_random_model(store, "pets", classes=["cat", "dog"])
    seen_during_write: list[list[str]] = []

    def slow_write(tmp: Path) -> dict[str, str]:
        (tmp / WEIGHTS_FILE).write_bytes(b"partial")
        seen_during_write.append(store.versions("pets"))
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError):
        store.publish("pets", ModelMetadata("resnet18", ["cat", "dog"]), slow_write)
    assert seen_during_write == [["1"]]
    assert store.versions("pets") == ["1"]
    assert [p.name for p in (store.root / "pets").iterdir()] == ["1"]


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "UPPER", "x" * 65, "a..b"])
def test_model_names_that_could_escape_the_store_are_refused(store: ModelStore, name: str) -> None:
    with pytest.raises(InvalidArgument):
        publish_state_dict(store, name, {"w": torch.zeros(1)}, ModelMetadata("resnet18", ["a"]))
    assert not store.root.exists() or not any(store.root.iterdir())


def test_lookups_say_what_exists(store: ModelStore) -> None:
    with pytest.raises(NoModelAvailable, match="import one"):
        store.get("resnet18")
    publish_random_model(store, "pets", classes=["cat", "dog"])
    with pytest.raises(ModelNotFound, match="available: pets"):
        store.get("nope")
    with pytest.raises(ModelNotFound, match="available versions: 1"):
        store.get("pets", "7")


def test_damaged_weights_are_detected(store: ModelStore) -> None:
    from vision.errors import InvalidCheckpoint

    version = publish_random_model(store, "pets", classes=["cat", "dog"])
    data = bytearray(version.weights_path.read_bytes())
    data[-1] ^= 0xFF
    version.weights_path.write_bytes(bytes(data))
    with pytest.raises(InvalidCheckpoint, match="sha256"):
        load_classifier(version)

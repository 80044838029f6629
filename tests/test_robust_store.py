"""Issue 11, defects 3 (store retention) and 8 (crash-safe publishing), and a full disk while publishing.

Publishing fsyncs every file and directory of a version before the rename and the model's directory after;
the rename is retried only while another publisher took the number, a bounded number of times; a full disk
raises StorageFull and leaves nothing behind (tested on a real, tiny tmpfs when this machine lets us mount
one, and by injecting ENOSPC at the writer and at fsync everywhere). After each publish the publisher keeps
the newest ``keep_versions`` versions of that model, plus versions a running service holds.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vision.errors import StorageFull
from vision.models import store as store_module
from vision.models.store import (
    HOLD_TTL_S,
    HOLDS_DIR,
    METADATA_FILE,
    WEIGHTS_FILE,
    ModelMetadata,
    ModelStore,
    PublishFailed,
)
from vision.models.weights import publish_state_dict

pytestmark = pytest.mark.fast


def publish_bytes(store: ModelStore, name: str, payload: bytes = b"w", artifacts: int = 0) -> str:
    """Publish a version whose 'weights' are ``payload`` (plus small artifact files); its version number."""

    def write(tmp: Path) -> dict[str, str]:
        (tmp / WEIGHTS_FILE).write_bytes(payload)
        for i in range(artifacts):
            (tmp / f"artifact{i}.png").write_bytes(b"png")
        return {}

    return store.publish(name, ModelMetadata("smallcnn", ["a", "b"]), write).version


def leftovers(store: ModelStore, name: str) -> list[str]:
    model_dir = store.root / name
    return sorted(p.name for p in model_dir.iterdir() if not p.name.isdigit()) if model_dir.is_dir() else []


# -- defect 8: durable, bounded publishing -------------------------------------------------------------------
def test_publish_fsyncs_every_file_and_the_temp_dir_before_the_rename_and_the_model_dir_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=0)
    publish_bytes(store, "cats")  # the model directory exists: only its own syncs are recorded below
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(src)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    publish_bytes(store, "cats", artifacts=2)

    renamed = next(i for i, (kind, _) in enumerate(events) if kind == "rename")
    tmp_dir = events[renamed][1]
    before = [path for kind, path in events[:renamed] if kind == "fsync"]
    after = [path for kind, path in events[renamed + 1 :] if kind == "fsync"]
    for file in (WEIGHTS_FILE, "artifact0.png", "artifact1.png", METADATA_FILE):
        assert f"{tmp_dir}/{file}" in before, f"{file} not fsynced before the rename"
    assert before[-1] == tmp_dir  # the directory itself, after all its files
    assert after[0] == str(store.root / "cats")  # the parent: the rename itself is durable


def test_a_rename_refused_for_another_reason_than_a_taken_number_fails_at_once(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def refuse(src: str | Path, dst: str | Path) -> None:
        calls.append(str(dst))
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(PublishFailed, match=r"model 'cats'.*Permission denied"):
        publish_bytes(store, "cats")
    assert len(calls) == 1  # no retry: it would fail the same way forever
    assert leftovers(store, "cats") == []


def test_a_taken_version_number_is_retried_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=0)
    monkeypatch.setattr(store_module, "MAX_PUBLISH_ATTEMPTS", 5)
    attempts: list[str] = []

    def always_taken(src: str | Path, dst: str | Path) -> None:
        attempts.append(Path(dst).name)
        Path(dst).mkdir()  # a concurrent publisher won this number
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(os, "rename", always_taken)
    with pytest.raises(PublishFailed, match="5 version numbers in a row were taken"):
        publish_bytes(store, "cats")
    assert attempts == ["1", "2", "3", "4", "5"]
    assert leftovers(store, "cats") == []


# -- a full disk ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root and a kernel that lets this process mount; skipped otherwise)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_raises_storage_full_and_leaves_nothing_half_written(tiny_disk: Path) -> None:
    store = ModelStore(tiny_disk / "models", keep_versions=0)
    publish_bytes(store, "cats", b"small")
    too_big = {"w": torch.zeros(512 * 1024)}  # 2 MiB of float32: more than the whole disk
    with pytest.raises(StorageFull) as caught:  # safetensors' writer (its Rust I/O error)
        publish_state_dict(store, "cats", too_big, ModelMetadata("smallcnn", ["a", "b"]))
    assert caught.value.message.startswith("the model store's disk is full: model 'cats' was not published")
    assert str(tiny_disk) not in caught.value.message  # plain: no server paths

    def copy_artifact(tmp: Path) -> dict[str, str]:  # the trainer's writer: shutil copies
        (tmp / WEIGHTS_FILE).write_bytes(b"w")
        with open(tmp / "curves.png", "wb") as f:
            f.write(os.urandom(2 * 1024 * 1024))
        return {}

    with pytest.raises(StorageFull):
        store.publish("cats", ModelMetadata("smallcnn", ["a", "b"]), copy_artifact)
    assert store.versions("cats") == ["1"]
    assert leftovers(store, "cats") == []
    assert publish_bytes(store, "cats", b"fits again") == "2"  # the space was given back


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
    ids=["ENOSPC", "EDQUOT", "wrapped-by-a-library"],
)
def test_a_writer_hitting_a_full_disk_raises_storage_full(store: ModelStore, failure: Exception) -> None:
    def write(tmp: Path) -> dict[str, str]:
        (tmp / WEIGHTS_FILE).write_bytes(b"partial")
        raise failure

    with pytest.raises(StorageFull, match="disk is full: model 'cats' was not published"):
        store.publish("cats", ModelMetadata("smallcnn", ["a"]), write)
    assert store.versions("cats") == [] and leftovers(store, "cats") == []


def test_a_full_disk_at_fsync_raises_storage_full(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFull):
        publish_bytes(store, "cats")
    monkeypatch.undo()
    assert store.versions("cats") == [] and leftovers(store, "cats") == []


def test_a_writers_own_errors_pass_unchanged(store: ModelStore) -> None:
    def write(tmp: Path) -> dict[str, str]:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "final/evaluation.json")

    with pytest.raises(FileNotFoundError):
        store.publish("cats", ModelMetadata("smallcnn", ["a"]), write)
    assert leftovers(store, "cats") == []


# -- defect 3: retention -------------------------------------------------------------------------------------
def test_publishing_keeps_the_newest_versions_of_that_model_only(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=3)
    for _ in range(6):
        publish_bytes(store, "cats")
    publish_bytes(store, "dogs")
    assert store.versions("cats") == ["4", "5", "6"]
    assert store.versions("dogs") == ["1"]
    assert leftovers(store, "cats") == []  # pruned versions are not left half-deleted
    assert publish_bytes(store, "cats") == "7"  # numbers never go back


def test_keep_versions_zero_keeps_every_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=0)
    for _ in range(7):
        publish_bytes(store, "cats")
    assert store.versions("cats") == [str(i) for i in range(1, 8)]


def test_the_retention_is_read_from_vision_model_keep_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ModelStore(tmp_path).keep_versions == 5  # the default
    monkeypatch.setenv("VISION_MODEL_KEEP_VERSIONS", "2")
    store = ModelStore(tmp_path / "models")
    for _ in range(4):
        publish_bytes(store, "cats")
    assert store.versions("cats") == ["3", "4"]


def test_a_held_version_is_never_pruned_until_its_hold_is_released_or_expires(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=2)
    publish_bytes(store, "cats")
    assert store.hold("cats", "1", "classifier-host-1")
    for _ in range(4):
        publish_bytes(store, "cats")
    assert store.versions("cats") == ["1", "4", "5"]  # 1 is held by a running service
    store.release("cats", "1", "classifier-host-1")
    publish_bytes(store, "cats")
    assert store.versions("cats") == ["5", "6"]

    assert store.hold("cats", "5", "crashed-service")
    hold = store.root / HOLDS_DIR / "cats@5@crashed-service"
    stale = time.time() - HOLD_TTL_S - 60
    os.utime(hold, (stale, stale))  # its holder died long ago
    publish_bytes(store, "cats")
    publish_bytes(store, "cats")
    assert store.versions("cats") == ["7", "8"]
    assert not hold.exists()  # expired holds are cleared


def test_leftovers_of_a_crashed_publisher_are_cleared_by_the_next_publish(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=0)
    publish_bytes(store, "cats")
    crashed = store.root / "cats" / ".tmp-crashed"
    crashed.mkdir()
    (crashed / WEIGHTS_FILE).write_bytes(b"half")
    in_progress = store.root / "cats" / ".tmp-writing-now"
    in_progress.mkdir()
    old = time.time() - store_module.STALE_TEMP_S - 60
    os.utime(crashed, (old, old))
    publish_bytes(store, "cats")
    assert leftovers(store, "cats") == [".tmp-writing-now"]  # another publisher's live temp dir stays

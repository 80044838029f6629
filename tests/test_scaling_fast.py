"""What a pod's limits mean to a process: the cores it may use (the cgroup's CPU quota caps the affinity
mask, so torch and the decode pools do not oversubscribe a limited container), and a model store the
trainer cannot write failing its start with what to fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vision.settings as settings_module
from tests.support.trainer import trainer_settings
from trainer_svc.server import create_trainer_server
from vision.models.store import ModelStore
from vision.settings import cgroup_cpu_limit, cpu_cores

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2: limits.cpu = 2
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # not in a cgroup we can read
        ({"cpu.max": "garbage"}, None),
    ],
)
def test_the_cgroup_cpu_limit_is_read_from_v2_or_v1(
    tmp_path: Path, files: dict[str, str], limit: float | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_the_cores_a_process_may_use_are_capped_by_its_cpu_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "CGROUP_ROOT", tmp_path)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpu_cores() == 1  # half a core: one thread, whatever the node has
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_cores() == min(2, len(os.sched_getaffinity(0)))  # 1.5 cores: 2 threads at most
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_cores() == len(os.sched_getaffinity(0))


def test_a_store_the_trainer_cannot_write_fails_its_start_with_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(RuntimeError, match=r"model store .* is not writable by this process \(uid \d+"):
        ModelStore(blocker / "models").check_writable()
    with pytest.raises(RuntimeError, match="fsGroup"):
        create_trainer_server(trainer_settings(tmp_path, model_dir=blocker / "models"))
    ModelStore(tmp_path / "models").check_writable()  # a writable one passes and keeps nothing
    assert list((tmp_path / "models").iterdir()) == []

"""`vision run` (what `make run` starts): every service plus the gateway; a service that dies is restarted
with back-off while the gateway answers 503 for it; one Ctrl-C stops them all, with nothing restarted."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import publish_random_model
from tests.reliability.mesh import VisionRun, wait_until
from vision.launcher import Child, LauncherSettings, Service, Supervisor
from vision.models.store import ModelStore


def _supervisor(**settings: float) -> tuple[Supervisor, Child, list[float]]:
    """A supervisor of one child whose 'process' is a real one that has already exited with status 3."""
    child = Child(Service("classifier", "classifier_svc", "VISION_CLASSIFIER_", 0), env={})
    starts: list[float] = []

    def start(now: float = 0.0) -> None:
        child.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        child.proc.wait()
        child.restart_at = None
        starts.append(now)

    child.start = start  # type: ignore[method-assign]
    supervisor = Supervisor([child], LauncherSettings(**settings))  # type: ignore[arg-type]
    return supervisor, child, starts


@pytest.mark.fast
def test_a_child_that_keeps_exiting_is_restarted_after_1_2_4_8_16_30_30_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisor, child, _starts = _supervisor()
    child.start()
    now, delays = 1000.0, []
    for _ in range(7):
        child.started_at = now
        supervisor.tick(now)  # notices the exit: schedules the restart
        assert child.proc is None and child.restart_at is not None
        delay = child.restart_at - now
        supervisor.tick(now + delay - 0.01)  # not yet
        assert child.proc is None
        now += delay
        supervisor.tick(now)
        assert child.proc is not None  # restarted
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    out = capsys.readouterr().out
    assert "[vision] classifier exited with status 3; restarting in 1s" in out
    assert "restarting in 30s" in out


@pytest.mark.fast
def test_the_back_off_starts_again_from_1s_after_a_minute_up() -> None:
    supervisor, child, _ = _supervisor()
    child.start()
    now = 1000.0
    for _ in range(4):  # 1, 2, 4, 8
        child.started_at = now
        supervisor.tick(now)
        assert child.restart_at is not None
        now = child.restart_at
        supervisor.tick(now)
    child.started_at = now
    supervisor.tick(now + 61)  # this start stayed up for over a minute
    assert child.restart_at == pytest.approx(now + 62)


@pytest.mark.fast
def test_nothing_is_restarted_once_stopping_has_begun() -> None:
    supervisor, child, starts = _supervisor(run_restart_initial_backoff_s=0.5)
    child.start()
    supervisor.tick(10.0)
    supervisor.stop_requested = True
    supervisor.tick(20.0)
    assert child.proc is None and len(starts) == 1


@pytest.mark.fast
def test_restart_settings_are_typed_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_RUN_RESTART_MAX_BACKOFF_S", "5")
    monkeypatch.setenv("VISION_RUN_RESTART_INITIAL_BACKOFF_S", "0.25")
    settings = LauncherSettings()
    assert (settings.run_restart_initial_backoff_s, settings.run_restart_max_backoff_s) == (0.25, 5.0)
    assert settings.run_restart_reset_after_s == 60.0
    monkeypatch.setenv("VISION_RUN_RESTART_MAX_BACKOFF_S", "soon")
    with pytest.raises(ValueError):
        LauncherSettings()


def test_vision_run_restarts_a_killed_service_and_ctrl_c_stops_everything(
    tmp_path: Path, bus_jpeg: bytes
) -> None:
    publish_random_model(ModelStore(tmp_path / "models"), name="smallcnn", arch="smallcnn")
    run = VisionRun(tmp_path)
    with run:
        run.wait_healthy()
        files = {"file": ("bus.jpg", bus_jpeg, "image/jpeg")}
        with httpx.Client(base_url=run.url, timeout=30) as client:
            reply = client.post("/predict", files=files)
            assert reply.status_code == 200 and reply.json()["success"] is True, reply.text
            gateway_pid = run.child_pid("gateway")
            old = run.kill("classifier")
            killed_at = time.monotonic()
            statuses: list[int] = []

            def answers_again() -> bool:
                status = client.post("/predict", files=files).status_code
                statuses.append(status)
                return status == 200

            assert wait_until(answers_again, 30, 0.25), f"no 200 within 30 s of the kill: {statuses}"
            recovery_s = time.monotonic() - killed_at
            assert set(statuses) <= {200, 503}, statuses
            assert run.child_pid("gateway") == gateway_pid  # the gateway stayed up
            new = run.child_pid("classifier")
            assert new is not None and new != old
        print(f"\n[figures] classifier killed: 200 again after {recovery_s:.1f} s; answers {statuses[:5]}...")
        children = run.child_pids()
        assert run.interrupt() == 0, run.tail()
        assert len(children) == 5
        for pid in children.values():  # each child was stopped and reaped by the launcher
            assert not Path(f"/proc/{pid}").exists()
    output = "\n".join(run.lines)
    assert f"http://127.0.0.1:{run.http_port}/" in output
    assert "[vision] classifier exited with status -9; restarting in 1s" in output
    assert "all stopped" in output
    assert output.count("started (pid") == 6  # five children plus the one restart: none during shutdown

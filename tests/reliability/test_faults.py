"""Faults against the running mesh: each gRPC service is SIGKILLed while clients send it requests through
the gateway. Clients only ever get 200 or 503 (never 500 or 502, never a wait past the gateway's deadline),
`vision run` restarts the service, and 200s come back within 30 s of the restart while the other services
keep answering. A training job whose trainer is killed mid-epoch resumes from its checkpoint after the
restart and publishes exactly one version. Each test waits until the whole system is healthy again."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.reliability.mesh import VisionRun, figures, wait_until
from tests.reliability.traffic import (
    CLIENT_TIMEOUT_S,
    Requests,
    Senders,
    digits_job,
    ended,
    jpeg,
    wait_for_job,
)
from vision.models.store import ModelStore

RECOVERY_S = 30.0  # from the restart to the first 200
ACCEPTED = {200, 503}
# (service killed, the request its clients send, a request another service answers meanwhile)
FAULTS = [
    ("classifier", "predict", "jobs"),
    ("explain", "explain", "predict"),
    ("detector", "detect", "predict"),
    ("trainer", "jobs", "predict"),
]

injected: Counter[str] = Counter()
refused: Counter[str] = Counter()  # answers other than 200 and 503, per service killed


@pytest.fixture(scope="module")
def requests_(bus_jpeg: bytes) -> Requests:
    return Requests(jpeg(320, bus_jpeg))


@pytest.fixture(scope="module", autouse=True)
def fault_figures() -> Iterator[None]:
    yield
    figures(
        "faults",
        injected=sum(injected.values()),
        per_service=dict(injected),
        answers_not_200_or_503=sum(refused.values()),
    )


def _mesh_healthy_again(mesh: VisionRun) -> None:
    mesh.wait_healthy(90)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("service", "kind", "bystander"), FAULTS, ids=[f[0] for f in FAULTS])
def test_sigkill_of_a_service_under_traffic_gives_only_200_or_503_and_200s_within_30s_of_its_restart(
    mesh: VisionRun, requests_: Requests, service: str, kind: str, bystander: str
) -> None:
    with (
        Senders(mesh.url, getattr(requests_, kind), threads=2) as clients,
        Senders(mesh.url, getattr(requests_, bystander), threads=1, pause_s=0.2) as others,
    ):
        assert wait_until(lambda: clients.statuses()[200] >= 4, 30), clients.statuses()
        old = mesh.kill(service)
        killed_at = time.monotonic()
        injected[service] += 1
        mesh.wait_restarted(service, old, timeout_s=30)
        restarted_at = time.monotonic()
        back = wait_until(lambda: clients.first_200_after(restarted_at) is not None, RECOVERY_S + 2, 0.1)
        first_200 = clients.first_200_after(restarted_at)
        time.sleep(0.5)  # a few answers more after recovery
    statuses, bystanders = clients.statuses(), others.statuses()
    refused[service] += sum(n for status, n in statuses.items() if status not in ACCEPTED)
    slowest = max(a.seconds for a in clients.answers)
    figures(
        f"sigkill {service}",
        requests=sum(statuses.values()),
        statuses=dict(statuses),
        restart_s=round(restarted_at - killed_at, 1),
        first_200_after_restart_s=round(first_200 - restarted_at, 1) if first_200 else None,
        slowest_answer_s=round(slowest, 2),
        bystander=f"{bystander}:{dict(bystanders)}",
    )
    try:
        assert set(statuses) <= ACCEPTED, f"answers other than 200/503: {dict(statuses)}"
        assert statuses[503] > 0, "no request met the dead service: the kill was not observed"
        assert back and first_200 is not None and first_200 - restarted_at <= RECOVERY_S
        assert slowest < CLIENT_TIMEOUT_S
        assert set(bystanders) == {200}, f"{bystander} while {service} was down: {dict(bystanders)}"
    finally:
        _mesh_healthy_again(mesh)


def _events_text(client: httpx.Client, job_id: str) -> str:
    """Every Server-Sent Event of an ended job (the stream ends after its last one)."""
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=30) as reply:
        assert reply.status_code == 200
        return "".join(reply.iter_text())


@pytest.mark.timeout(240)
def test_a_job_whose_trainer_is_sigkilled_mid_epoch_resumes_after_the_restart_and_publishes_exactly_once(
    mesh: VisionRun,
) -> None:
    name = "resumed-digits"
    with httpx.Client(base_url=mesh.url, timeout=CLIENT_TIMEOUT_S) as client:
        job_id = digits_job(client, name, epochs=6, per_class=120)

        def mid_epoch_after_a_checkpoint(job: dict[str, Any]) -> bool:
            progress = job["progress"] or {}
            return ended(job) or (
                job["status"] == "running"
                and job["epoch"] >= 1  # epoch 1's checkpoint is on disk
                and progress.get("epoch", 0) > job["epoch"]
                and 0 < progress.get("step", 0) < progress.get("steps_per_epoch", 0)
            )

        at_kill = wait_for_job(client, job_id, mid_epoch_after_a_checkpoint, 120)
        assert not ended(at_kill), f"the job ended before it could be killed: {at_kill}"
        old = mesh.kill("trainer")
        injected["trainer"] += 1
        mesh.wait_restarted("trainer", old)
        done = wait_for_job(client, job_id, ended, 180)
        events = _events_text(client, job_id)
    store = ModelStore(mesh.root / "models")
    made_by_job = [
        v for v in store.versions(name) if store.get(name, v).metadata.provenance.get("job_id") == job_id
    ]
    figures(
        "trainer killed mid-epoch",
        killed_at=f"epoch {at_kill['progress']['epoch']} step {at_kill['progress']['step']}"
        f"/{at_kill['progress']['steps_per_epoch']}",
        status=done["status"],
        versions_published=store.versions(name),
    )
    try:
        assert done["status"] == "succeeded", done["error"]
        assert (done["epoch"], done["total_epochs"]) == (6, 6)
        assert "resumed after epoch" in events, "the job started over instead of resuming"
        assert store.versions(name) == made_by_job == [done["model"]["version"]]
    finally:
        _mesh_healthy_again(mesh)

"""The Kubernetes backend without a cluster (none can be reached here): the Indexed Job and headless Service
of a job, checked against the Kubernetes 1.33 schemas and the trainer Deployment's volumes and security;
and the calls the trainer makes, against a stand-in API server.

The stand-in (`ApiStandIn`) is a true-boundary stand-in: a small HTTP server on loopback that answers the
five REST calls the official kubernetes client makes (create, read status, list, delete) the way the API
server does, and lets a test set the Job's conditions. It runs no pods: the test runs the pods' own
command (torchrun, `python -m trainer_svc.jobs.rank`) on this machine as two nodes, with the rendezvous
address rewritten to 127.0.0.1, so the ranks, their event files and the trainer's reading of them are
real."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s

from tests.support.digits import digit_images
from tests.support.trainer import trainer_settings
from trainer_svc.config import TrainerSettings
from trainer_svc.jobs import eventfile
from trainer_svc.jobs.cluster import Cluster
from trainer_svc.jobs.cluster_objects import build_job, build_service, object_name
from trainer_svc.jobs.supervisor import free_port
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.events import TrainEvent

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "1.33.0"
NS = "vision"
_PATH = re.compile(r"^/(?:api/v1|apis/batch/v1)/namespaces/vision/(jobs|services)(?:/([^/]+))?(/status)?$")


def config(**overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "architecture": "smallcnn", "pretrained": False, "freeze_backbone": False, "epochs": 1,
        "batch_size": 16, "img_size": 32, "horizontal_flip": False, "nproc_per_node": 1, "nnodes": 2,
        "class_names": [str(d) for d in range(10)],
    }  # fmt: skip
    return TrainConfig("digits", **{**fields, **overrides})


def settings_for(root: Path, **overrides: Any) -> TrainerSettings:
    fields = {"backend": "kubernetes", "kubernetes_namespace": NS, "kubernetes_image": "vision-trainer:test"}
    return trainer_settings(root, torch_threads=1, kubernetes_poll_s=0.2, **{**fields, **overrides})


# -- the objects --------------------------------------------------------------------------------------------
@pytest.mark.fast
@pytest.mark.parametrize("gpus", [0, 4])
def test_the_job_and_service_are_valid_kubernetes_1_33_objects(tmp_path: Path, gpus: int) -> None:
    settings = settings_for(tmp_path, kubernetes_gpus_per_pod=gpus)
    cfg = config(nproc_per_node=gpus or 2, nnodes=3)
    job = build_job(settings, cfg, "849d0aa1b2c3d4e5", 2, tmp_path / "launch.json", "img:1", NS)
    service = build_service("849d0aa1b2c3d4e5", 2, NS)
    for obj in (job, service):
        kubernetes_validate.validate(obj, SCHEMA, strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 3, 3, 0,
    )  # fmt: skip
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    name = object_name("849d0aa1b2c3d4e5", 2)
    assert pod["subdomain"] == service["metadata"]["name"] == job["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == pod_labels(job)
    command = container["command"]
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert {"--nnodes=3", "--node-rank=$(JOB_COMPLETION_INDEX)", f"--nproc-per-node={gpus or 2}"} <= set(
        command
    )
    assert f"--master-addr={name}-0.{name}" in command and "--master-port=29500" in command
    assert command[-3:] == ["-m", "trainer_svc.jobs.rank", str(tmp_path / "launch.json")]
    assert container["env"][0]["name"] == "JOB_COMPLETION_INDEX"
    labels = pod_labels(job)
    assert labels["app.kubernetes.io/name"] == "vision"
    assert labels["app.kubernetes.io/component"] == "trainer-worker"
    assert labels["vision-mesh/job-id"] == "849d0aa1b2c3d4e5"
    gpu = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert gpu == (str(gpus) if gpus else None)


@pytest.mark.fast
def test_the_pods_mount_the_trainers_volumes_and_run_as_restricted_as_the_trainer(tmp_path: Path) -> None:
    deployment = next(o for o in yaml.safe_load_all((REPO / "deploy/k8s/base/trainer.yaml").read_text()))
    trainer_pod = deployment["spec"]["template"]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in trainer_pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    settings = settings_for(tmp_path)
    pod = build_job(settings, config(), "a1", 1, tmp_path / "l.json", "img", NS)["spec"]["template"]["spec"]
    ours = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert ours == claims == {"models": "vision-models", "data": "vision-trainer-data"}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert (mounts["models"], mounts["data"]) == (
        str(settings.model_dir.resolve()),
        str(settings.data_dir.resolve()),
    )
    assert pod["securityContext"] == trainer_pod["securityContext"]
    assert pod["containers"][0]["securityContext"] == trainer_pod["containers"][0]["securityContext"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False


def pod_labels(job: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = job["spec"]["template"]["metadata"]["labels"]
    return labels


# -- the API calls, against the stand-in ---------------------------------------------------------------------
class ApiStandIn(ThreadingHTTPServer):
    """The API server's REST calls for Jobs and Services in namespace vision (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.conditions: dict[str, list[dict[str, str]]] = {}
        self.deleted: list[tuple[str, str, str]] = []  # (kind, name, query)
        self.created: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    def finish(self, name: str, condition: str, reason: str = "", message: str = "") -> None:
        self.conditions[name] = [{"type": condition, "status": "True", "reason": reason, "message": message}]


class _Handler(BaseHTTPRequestHandler):
    server: ApiStandIn

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str, str, bool] | None:
        path, _, query = self.path.partition("?")
        match = _PATH.match(path)
        return (match[1], match[2] or "", query, bool(match[3])) if match else None

    def do_POST(self) -> None:
        kind, _, _, _ = self._route() or ("", "", "", False)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.objects[(kind, body["metadata"]["name"])] = body
        self.server.created.put((kind, body))
        self._answer(201, body)

    def do_GET(self) -> None:
        kind, name, _, _ = self._route() or ("", "", "", False)
        if not name:
            items = [b for (k, _), b in self.server.objects.items() if k == kind]
            return self._answer(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        body = self.server.objects.get((kind, name))
        if body is None:
            return self._answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})
        self._answer(200, {**body, "status": {"conditions": self.server.conditions.get(name, [])}})

    def do_DELETE(self) -> None:
        kind, name, query, _ = self._route() or ("", "", "", False)
        self.server.deleted.append((kind, name, query))
        found = self.server.objects.pop((kind, name), None) is not None
        self._answer(
            200 if found else 404, {"kind": "Status", "apiVersion": "v1", "code": 200 if found else 404}
        )


@pytest.fixture
def api() -> Iterator[ApiStandIn]:
    server = ApiStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def cluster_for(settings: TrainerSettings, api: ApiStandIn) -> Cluster:
    return Cluster(
        settings, k8s.ApiClient(k8s.Configuration(host=f"http://127.0.0.1:{api.server_address[1]}"))
    )


def test_the_pods_command_trains_as_two_nodes_and_the_trainer_reads_their_events_and_cleans_up(
    tmp_path: Path, api: ApiStandIn
) -> None:
    settings = settings_for(tmp_path)
    workdir = settings.data_dir / "jobs" / "849d0aa1b2c3d4e5"
    for n, (label, png) in enumerate(digit_images(32, per_class=8)):  # as an upload stores them
        (workdir / "dataset" / label).mkdir(parents=True, exist_ok=True)
        (workdir / "dataset" / label / f"{n}.png").write_bytes(png)
    messages: list[dict[str, Any]] = []
    ended: queue.Queue[tuple[Any, str]] = queue.Queue()
    cluster_for(settings, api).run(
        "849d0aa1b2c3d4e5", config(), workdir, 1, messages.append, lambda o, how: ended.put((o, how))
    )
    sent = dict([api.created.get(timeout=10), api.created.get(timeout=10)])
    for obj in sent.values():
        kubernetes_validate.validate(obj, SCHEMA, strict=True)  # what the client really sent
    name = sent["jobs"]["metadata"]["name"]
    command = sent["jobs"]["spec"]["template"]["spec"]["containers"][0]["command"]
    port = free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, *[_on_this_machine(arg, index, name, port) for arg in command[1:]]],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for index in range(2)
    ]  # fmt: skip
    errors = [node.communicate(timeout=180)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    api.finish(name, "Complete")
    outcome, how = ended.get(timeout=30)
    assert outcome == {"type": "done"}, how
    assert (workdir / "final" / "model.safetensors").is_file()  # rank 0 wrote the model
    epochs = [m["event"] for m in messages if m["type"] == "event" and m["event"].kind == "epoch"]
    assert [e.epoch for e in epochs] == [1] and "2 processes (cpu, gloo)" in _notes(messages)
    assert {(kind, n) for kind, n, _ in api.deleted} == {("jobs", name), ("services", name)}
    assert any("propagationPolicy=Foreground" in q for kind, _, q in api.deleted if kind == "jobs")


def _on_this_machine(arg: str, index: int, name: str, port: int) -> str:
    """A pod's argument on this machine: its completion index, and rank 0's pod at 127.0.0.1:``port``."""
    arg = arg.replace("$(JOB_COMPLETION_INDEX)", str(index))
    arg = arg.replace(f"--master-addr={name}-0.{name}", "--master-addr=127.0.0.1")
    return arg.replace("--master-port=29500", f"--master-port={port}")


def _notes(messages: list[dict[str, Any]]) -> str:
    return " ".join(m["event"].message for m in messages if m["type"] == "event")


def test_a_failed_job_whose_rank_said_nothing_crashes_to_be_resumed_and_is_deleted(
    tmp_path: Path, api: ApiStandIn
) -> None:
    settings = settings_for(tmp_path)
    ended: queue.Queue[tuple[Any, str]] = queue.Queue()
    run = cluster_for(settings, api).run(
        "a1", config(), tmp_path / "a1", 3, lambda m: None, lambda *e: ended.put(e)
    )
    writer = eventfile.EventWriter(eventfile.rank_file(run.directory, 0))
    writer.send({"type": "event", "event": TrainEvent("progress", 1, 1, 3, 10)})
    writer.send({"type": "lost"})  # rank 0 lost rank 1, whose pod was evicted
    writer.close()
    api.finish(run.name, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    outcome, how = ended.get(timeout=10)
    assert outcome is None
    assert how.startswith(f"the Kubernetes Job {run.name} failed (BackoffLimitExceeded: Job has reached")
    assert "the training process of rank 1 (of 2)" in how
    assert not api.objects  # the Job and the Service are gone


def test_cancelling_deletes_the_job_with_the_grace_and_a_new_trainer_deletes_what_an_old_one_left(
    tmp_path: Path, api: ApiStandIn
) -> None:
    settings = settings_for(tmp_path)
    cluster = cluster_for(settings, api)
    ended: queue.Queue[tuple[Any, str]] = queue.Queue()
    run = cluster.run("c1", config(), tmp_path / "c1", 1, lambda m: None, lambda *e: ended.put(e))
    run.cancel(30)
    assert ended.get(timeout=10)[0] is None  # the manager reads it as cancelled: the cancel was asked
    assert ("jobs", run.name, "gracePeriodSeconds=30&propagationPolicy=Foreground") in api.deleted
    cluster.run("d1", config(), tmp_path / "d1", 1, lambda m: None, lambda *e: None).stop()  # shutdown
    assert not api.objects
    left = object_name("e1", 2)  # what a trainer that crashed left behind
    api.objects[("jobs", left)] = build_job(settings, config(), "e1", 2, tmp_path / "l.json", "img", NS)
    api.objects[("services", left)] = build_service("e1", 2, NS)
    cluster_for(settings, api).delete_all()
    assert not api.objects and {("jobs", left), ("services", left)} <= {(k, n) for k, n, _ in api.deleted}

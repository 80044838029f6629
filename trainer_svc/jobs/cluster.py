"""The Kubernetes backend (VISION_TRAINER_BACKEND=kubernetes): each attempt of a job runs as an Indexed Job
of ``nnodes`` pods plus a headless Service for its rendezvous (`trainer_svc.jobs.cluster_objects`),
through the official kubernetes client, in the trainer's namespace.

Events: each rank appends its messages to ``<job dir>/ranks-<attempt>/rank-<N>.jsonl`` on the shared data
volume (`trainer_svc.jobs.eventfile`). A thread per running job reads rank 0's file as it grows and the
Job's status every ``kubernetes_poll_s`` seconds; when the Job has completed, failed or gone, it reads every
rank's last word, deletes the Job (foreground: its pods are gone first) and the Service, and reports the
outcome to the manager as a local run would (`supervisor.combine`). Cancelling deletes the Job at once
(the pods get ``cancel_grace_s`` to stop); a trainer that starts deletes every Job and Service an earlier
trainer left (their jobs resume from their checkpoints).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from trainer_svc.config import TrainerSettings
from trainer_svc.jobs import eventfile
from trainer_svc.jobs.cluster_objects import WORKER_SELECTOR, build_job, build_service, object_name
from trainer_svc.jobs.supervisor import OnExit, OnMessage, RankEnd, combine, worker_args
from trainer_svc.training.config import TrainConfig

log = logging.getLogger(__name__)
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LAUNCH_FILE = "launch.json"
TIMEOUT_S = 30  # every API call
DELETE_WAIT_S = 120.0  # for a deleted Job's pods to stop before the job's next attempt starts


class Cluster:
    """The trainer's handle on the Kubernetes API: in-cluster credentials (a kubeconfig outside a cluster)
    unless an ``api`` client is given."""

    def __init__(self, settings: TrainerSettings, api: k8s.ApiClient | None = None) -> None:
        self.settings = settings
        if api is None:
            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            api = k8s.ApiClient()
        self.api = api
        self.batch, self.core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
        self.namespace = settings.kubernetes_namespace or _own_namespace()
        self.image = settings.kubernetes_image or self._own_image()

    def _own_image(self) -> str:
        """The image of the trainer's own pod (its hostname is the pod's name): the job pods run it."""
        try:
            pod = self.core.read_namespaced_pod(
                socket.gethostname(), self.namespace, _request_timeout=TIMEOUT_S
            )
        except ApiException as exc:
            raise RuntimeError(
                "backend=kubernetes: could not read the trainer's own pod to learn its image "
                f"({exc.status} {exc.reason}); set VISION_TRAINER_KUBERNETES_IMAGE"
            ) from exc
        containers = pod.spec.containers if pod.spec is not None else []
        named = [c for c in containers if c.name == "trainer"] or containers
        if not named or not named[0].image:
            raise RuntimeError(
                "backend=kubernetes: the trainer's pod names no image; set VISION_TRAINER_KUBERNETES_IMAGE"
            )
        return str(named[0].image)

    def run(
        self,
        job_id: str,
        config: TrainConfig,
        workdir: Path,
        attempt: int,
        on_message: OnMessage,
        on_exit: OnExit,
    ) -> ClusterRun:
        return ClusterRun(self, job_id, config, workdir, attempt, on_message, on_exit)

    def delete(self, name: str, grace_s: int | None = None, *, wait_s: float = 0.0) -> None:
        """Delete the Job ``name`` (its pods first) and its Service; gone already is fine. ``wait_s``: wait
        that long at most for the Job to be gone (its pods stopped: none of them writes to the job's files
        any more)."""
        calls = (
            lambda: self.batch.delete_namespaced_job(
                name, self.namespace, propagation_policy="Foreground", grace_period_seconds=grace_s,
                _request_timeout=TIMEOUT_S,
            ),
            lambda: self.core.delete_namespaced_service(name, self.namespace, _request_timeout=TIMEOUT_S),
        )  # fmt: skip
        for call in calls:
            try:
                call()
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("could not delete %s: %s %s", name, exc.status, exc.reason)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if self.job_state(name)[0] == "gone":
                    return
            except Exception as exc:
                log.warning("could not read %s: %s", name, exc)
            time.sleep(min(self.settings.kubernetes_poll_s, max(deadline - time.monotonic(), 0)))

    def delete_all(self) -> None:
        """Delete every training Job and Service in the namespace (what a stopped trainer left)."""
        jobs = self.batch.list_namespaced_job(
            self.namespace, label_selector=WORKER_SELECTOR, _request_timeout=TIMEOUT_S
        )
        services = self.core.list_namespaced_service(
            self.namespace, label_selector=WORKER_SELECTOR, _request_timeout=TIMEOUT_S
        )
        names = {job.metadata.name for job in jobs.items if job.metadata is not None}
        names |= {service.metadata.name for service in services.items if service.metadata is not None}
        for name in sorted(n for n in names if n):
            log.info("deleting %s, left by an earlier trainer: its job resumes from its checkpoint", name)
            self.delete(name, wait_s=DELETE_WAIT_S)

    def job_state(self, name: str) -> tuple[str, str]:
        """("running" | "succeeded" | "failed" | "gone", why): the Job's terminal condition, if any."""
        try:
            job = self.batch.read_namespaced_job_status(name, self.namespace, _request_timeout=TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return "gone", "the Kubernetes Job was deleted"
            raise
        for condition in (job.status.conditions if job.status is not None else None) or []:
            if condition.status != "True":
                continue
            if condition.type in ("Complete", "SuccessCriteriaMet"):
                return "succeeded", ""
            if condition.type in ("Failed", "FailureTarget"):
                return "failed", f"{condition.reason or 'Failed'}: {condition.message or ''}".rstrip(": ")
        return "running", ""


def _model(kind: Any, obj: dict[str, Any]) -> Any:
    """The client's model of a manifest (what its API methods take)."""
    model = kind.from_dict(obj)
    assert model is not None
    return model


def _own_namespace() -> str:
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        return "default"


class ClusterRun:
    """One attempt of a job as a Kubernetes Job, watched until it ends."""

    def __init__(
        self,
        cluster: Cluster,
        job_id: str,
        config: TrainConfig,
        workdir: Path,
        attempt: int,
        on_message: OnMessage,
        on_exit: OnExit,
    ) -> None:
        self.cluster, self.job_id, self.config = cluster, job_id, config
        self.name = object_name(job_id, attempt)
        self.directory = workdir / f"ranks-{attempt}"
        self._on_message, self._on_exit = on_message, on_exit
        self._stopped = threading.Event()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        launch = self.directory / LAUNCH_FILE
        launch.write_text(json.dumps(self.launch_args(workdir), indent=1))
        namespace = cluster.namespace
        service = build_service(job_id, attempt, namespace)
        job = build_job(cluster.settings, config, job_id, attempt, launch, cluster.image, namespace)
        try:
            cluster.core.create_namespaced_service(
                namespace, _model(k8s.V1Service, service), _request_timeout=TIMEOUT_S
            )
            cluster.batch.create_namespaced_job(namespace, _model(k8s.V1Job, job), _request_timeout=TIMEOUT_S)
        except BaseException:
            cluster.delete(self.name)
            raise
        log.info(
            "job %s: Kubernetes Job %s (%d x %d ranks)",
            job_id,
            self.name,
            config.nnodes,
            config.nproc_per_node,
        )
        self._thread = threading.Thread(target=self._watch, name=f"job-{job_id}", daemon=True)
        self._thread.start()

    def launch_args(self, workdir: Path) -> dict[str, Any]:
        """The ranks' WorkerArgs: the service's settings, a device chosen by LOCAL_RANK, no parent."""
        device = "cuda" if self.cluster.settings.kubernetes_gpus_per_pod else "cpu"
        args = worker_args(self.cluster.settings, self.job_id, self.config, workdir, device, parent_pid=0)
        return args.to_json()

    @property
    def pids(self) -> list[int | None]:
        return []  # no local processes

    def _watch(self) -> None:
        tail = eventfile.EventTail(eventfile.rank_file(self.directory, 0))
        state, why = "running", ""
        while True:
            self._relay(tail)
            try:
                state, why = self.cluster.job_state(self.name)
            except Exception as exc:  # the API server is unreachable for a while: ask again
                log.warning("job %s: could not read %s: %s", self.job_id, self.name, exc)
            if state != "running" or self._stopped.wait(self.cluster.settings.kubernetes_poll_s):
                break
        self._relay(tail)
        world = self.config.world_size
        ends = [RankEnd(r, eventfile.last_word(eventfile.rank_file(self.directory, r))) for r in range(world)]
        outcome, how = combine(ends, world)
        if state == "failed" and outcome is None:
            how = f"the Kubernetes Job {self.name} failed ({why}); {how}"
        self.cluster.delete(self.name, wait_s=0.0 if self._stopped.is_set() else DELETE_WAIT_S)
        if not self._stopped.is_set():
            self._on_exit(outcome, how)

    def _relay(self, tail: eventfile.EventTail) -> None:
        for message in tail.read():
            if message["type"] not in eventfile.OUTCOMES:
                try:
                    self._on_message(message)
                except Exception:
                    log.exception("job %s: could not record a rank's message", self.job_id)

    def cancel(self, grace_s: float) -> None:
        """Delete the Job now (its pods get ``grace_s`` seconds); the watcher then reports the end."""
        self.cluster.delete(self.name, int(grace_s))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Service shutdown: delete the Job; the job resumes from its checkpoint on the next start."""
        self._stopped.set()
        self.cluster.delete(self.name)
        self._thread.join(timeout_s)

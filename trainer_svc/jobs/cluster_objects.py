"""The Kubernetes objects of one attempt of a distributed job: an Indexed Job of ``nnodes`` pods and the
headless Service their rendezvous goes through. Plain dicts (batch/v1 Job, v1 Service), checked against
the Kubernetes 1.33 schemas by the tests; `trainer_svc.jobs.cluster` sends them.

Pod ``i`` of the Job (JOB_COMPLETION_INDEX ``i``, hostname ``<job>-<i>``) runs torchrun with static
rendezvous: ``--nnodes N --node-rank i --nproc-per-node P`` and rank 0's pod as the master,
``<job>-0.<service>:29500`` (the Service gives the pods their DNS names). Each of its P processes is one
rank, ``python -m trainer_svc.jobs.rank <launch file>``; rank = i * P + local rank. The pods mount the
trainer's model store and data volumes at the trainer's own paths, so every path in the launch file means
the same in a pod, and run as the trainer does (non-root 10001, read-only root, no capabilities, no
service-account token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer_svc.config import TrainerSettings
from trainer_svc.training.config import TrainConfig

RENDEZVOUS_PORT = 29500
JOB_ID_LABEL = "vision-mesh/job-id"
ATTEMPT_LABEL = "vision-mesh/attempt"
COMPONENT = "trainer-worker"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
WORKER_LABELS = {
    "app.kubernetes.io/name": "vision",
    "app.kubernetes.io/component": COMPONENT,
    "app.kubernetes.io/part-of": "vision",
    "app.kubernetes.io/managed-by": "vision-trainer",
}
WORKER_SELECTOR = ",".join(f"{k}={v}" for k, v in WORKER_LABELS.items())
UID = 10001
Obj = dict[str, Any]


def object_name(job_id: str, attempt: int) -> str:
    """The Job's and the Service's name: ``vision-train-<job id>-<attempt>`` (a DNS label)."""
    return f"vision-train-{job_id}-{attempt}"


def labels(job_id: str, attempt: int) -> dict[str, str]:
    return {**WORKER_LABELS, JOB_ID_LABEL: job_id, ATTEMPT_LABEL: str(attempt)}


def rank_command(config: TrainConfig, name: str, launch_file: Path) -> list[str]:
    """torchrun in pod JOB_COMPLETION_INDEX (expanded by the kubelet from the container's env)."""
    return [
        "python",
        "-m",
        "torch.distributed.run",
        f"--nnodes={config.nnodes}",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        f"--nproc-per-node={config.nproc_per_node}",
        f"--master-addr={name}-0.{name}",
        f"--master-port={RENDEZVOUS_PORT}",
        "--max-restarts=0",  # a rank that dies fails its pod and the Job: the trainer resumes the job
        "-m",
        "trainer_svc.jobs.rank",
        str(launch_file),
    ]


def _resources(settings: TrainerSettings, config: TrainConfig) -> dict[str, dict[str, str]]:
    resources = {k: dict(v) for k, v in settings.kubernetes_pod_config.resources.items()}
    if settings.kubernetes_gpus_per_pod:
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})["nvidia.com/gpu"] = str(config.nproc_per_node)
    return resources


def _container(
    settings: TrainerSettings, config: TrainConfig, name: str, launch_file: Path, image: str
) -> Obj:
    home = "/home/vision"
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
    env = [
        {"name": "JOB_COMPLETION_INDEX", "valueFrom": index},
        {"name": "HOME", "value": home},
        {"name": "XDG_CACHE_HOME", "value": f"{home}/.cache"},
        {"name": "TORCH_HOME", "value": f"{home}/.cache/torch"},
        {"name": "MPLCONFIGDIR", "value": f"{home}/.cache/matplotlib"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]  # fmt: skip
    mounts = [
        {"name": "models", "mountPath": str(settings.model_dir.resolve())},
        {"name": "data", "mountPath": str(settings.data_dir.resolve())},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": home},
        {"name": "shm", "mountPath": "/dev/shm"},  # DataLoader workers and NCCL pass tensors through it
    ]
    return {
        "name": "rank",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": rank_command(config, name, launch_file),
        "env": env,
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}],
        "resources": _resources(settings, config),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def _pod_spec(
    settings: TrainerSettings, config: TrainConfig, name: str, launch_file: Path, image: str
) -> Obj:
    pod = settings.kubernetes_pod_config
    spec: Obj = {
        "restartPolicy": "Never",
        "subdomain": name,  # with the Job's hostnames: <job>-<index>.<service> resolves to each pod
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(settings, config, name, launch_file, image)],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": settings.kubernetes_models_claim}},
            {"name": "data", "persistentVolumeClaim": {"claimName": settings.kubernetes_data_claim}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
            {"name": "home", "emptyDir": {"sizeLimit": "4Gi"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        spec["tolerations"] = list(pod.tolerations)
    if pod.service_account_name:
        spec["serviceAccountName"] = pod.service_account_name
    if pod.priority_class_name:
        spec["priorityClassName"] = pod.priority_class_name
    return spec


def build_job(
    settings: TrainerSettings,
    config: TrainConfig,
    job_id: str,
    attempt: int,
    launch_file: Path,
    image: str,
    namespace: str,
) -> Obj:
    """The Indexed Job: ``nnodes`` pods at once, each to completion, no retries of its own (a failed pod
    fails the Job; the trainer resumes the job from its checkpoint in a new attempt, up to max_attempts)."""
    name = object_name(job_id, attempt)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(job_id, attempt)},
        "spec": {
            "completionMode": "Indexed",
            "completions": config.nnodes,
            "parallelism": config.nnodes,
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,  # a Job the trainer could not delete (it crashed) goes anyway
            "template": {
                "metadata": {"labels": labels(job_id, attempt)},
                "spec": _pod_spec(settings, config, name, launch_file, image),
            },
        },
    }


def build_service(job_id: str, attempt: int, namespace: str) -> Obj:
    """The headless Service naming the Job's pods (``<job>-<index>.<service>``), ready or not: rank 0's
    pod must resolve before any rank is ready."""
    name = object_name(job_id, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(job_id, attempt)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(job_id, attempt),
            "ports": [
                {
                    "name": "rendezvous",
                    "port": RENDEZVOUS_PORT,
                    "targetPort": RENDEZVOUS_PORT,
                    "protocol": "TCP",
                }
            ],
        },
    }

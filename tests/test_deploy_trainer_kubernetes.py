"""The trainer's Kubernetes backend (issue 14; components/trainer-kubernetes, Helm trainer.backend): a
ServiceAccount, Role and RoleBinding that let the trainer run Jobs and Services and follow pods and logs in
its namespace and nothing more, the API token on the trainer's pod alone, its job pods' image, claims and
GPUs, and the network policy of a job's ranks (each other, DNS, public downloads) and of the trainer (the API
server)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tests.deploy_manifests import RENDERS, Obj, Render, rendered, selects
from tests.test_deploy_policy import parametrize_renders
from tests.test_deploy_seeding import egress_rules

KUBERNETES_RENDERS = [r for r in RENDERS if r.trainer_backend == "kubernetes"]
WORKER_LABELS = {"app.kubernetes.io/name": "vision", "app.kubernetes.io/component": "trainer-worker"}
RENDEZVOUS_PORT = 29500


RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "services"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
}


@parametrize_renders
def test_only_a_kubernetes_backend_gets_rbac_and_an_api_token(render: Render) -> None:
    manifest = rendered(render)
    rbac = [o for o in manifest.objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    assert not manifest.of_kind("ClusterRole") and not manifest.of_kind("ClusterRoleBinding")
    if render.trainer_backend != "kubernetes":
        assert not rbac
        if "trainer" in render.services:
            assert "VISION_TRAINER_BACKEND" not in manifest.env(manifest.container("trainer"))
        return
    assert sorted(o["kind"] for o in rbac) == ["Role", "RoleBinding", "ServiceAccount"]
    (account,), (role,), (binding,) = (manifest.of_kind(k) for k in ("ServiceAccount", "Role", "RoleBinding"))
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == RULES, "jobs and rendezvous Services to run, pods and logs to follow: nothing else"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert account.get("automountServiceAccountToken") is False, "only pods that ask get the token"
    trainer = manifest.pod_spec("trainer")
    assert trainer["serviceAccountName"] == account["metadata"]["name"]
    assert trainer["automountServiceAccountToken"] is True


@pytest.mark.parametrize("render", KUBERNETES_RENDERS, ids=str)
def test_the_trainers_job_pods_run_its_image_on_its_claims(render: Render) -> None:
    manifest = rendered(render)
    container = manifest.container("trainer")
    env = manifest.env(container)
    assert env["VISION_TRAINER_BACKEND"] == "kubernetes"
    assert env["VISION_TRAINER_KUBERNETES_IMAGE"] == container["image"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in manifest.pod_spec("trainer")["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert env["VISION_TRAINER_KUBERNETES_MODELS_CLAIM"] == claims["models"]
    assert env["VISION_TRAINER_KUBERNETES_DATA_CLAIM"] == claims["data"]
    data = manifest.named("PersistentVolumeClaim", claims["data"])
    assert data is not None and data["spec"]["accessModes"] == ["ReadWriteMany"], "every job pod mounts it"


@parametrize_renders
def test_gpu_job_pods_take_the_trainers_gpus_on_the_trainers_nodes(render: Render) -> None:
    manifest = rendered(render)
    if "trainer" not in render.services:
        return
    env = manifest.env(manifest.container("trainer"))
    gpus = int(manifest.container("trainer")["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert int(env.get("VISION_TRAINER_KUBERNETES_GPUS_PER_POD", "0")) == gpus
    if gpus:
        pod = manifest.pod_spec("trainer")
        config = json.loads(env["VISION_TRAINER_KUBERNETES_POD_CONFIG"])
        assert config == {"nodeSelector": pod["nodeSelector"], "tolerations": pod["tolerations"]}


def admits_port(rule: Obj, port: int) -> bool:
    """Does a NetworkPolicy rule let ``port`` through (no ports: every port)?"""
    return not rule.get("ports") or any(p.get("port") == port for p in rule["ports"])


def single_hosts(rule: Obj) -> bool:
    """Is every peer of an egress rule one address (an ipBlock /32 or /128)?"""
    blocks = [peer.get("ipBlock") for peer in rule.get("to", [])]
    return bool(blocks) and all(b and ipaddress.ip_network(b["cidr"]).num_addresses == 1 for b in blocks)


@pytest.mark.parametrize("render", [r for r in KUBERNETES_RENDERS if r.network_policies], ids=str)
def test_the_ranks_of_a_job_reach_each_other_and_the_trainer_reaches_the_api_server(render: Render) -> None:
    manifest = rendered(render)
    policies = [
        p for p in manifest.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], WORKER_LABELS)
    ]
    # Isolated both ways by their own policy: the chart's default deny selects its instance, which ranks lack.
    assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies), policies
    ingress = [rule for p in policies for rule in p["spec"].get("ingress", [])]
    assert ingress, "rank 0's rendezvous port must be reachable"
    for rule in ingress:  # from ranks alone, on 29500 and on the ports NCCL and Gloo pick
        assert rule["from"] and all(selects(peer["podSelector"], WORKER_LABELS) for peer in rule["from"]), (
            rule
        )
        assert admits_port(rule, RENDEZVOUS_PORT), rule
    egress = egress_rules(manifest, WORKER_LABELS)
    to_ranks = [
        r
        for r in egress
        if r.get("to")
        and all("podSelector" in peer and selects(peer["podSelector"], WORKER_LABELS) for peer in r["to"])
    ]
    assert to_ranks and all(admits_port(r, RENDEZVOUS_PORT) for r in to_ranks), egress
    assert any(not r.get("to") and {p["port"] for p in r["ports"]} == {53} for r in egress), "DNS"
    trainer = manifest.deployment("trainer")["spec"]["template"]["metadata"]["labels"]
    api = [r for r in egress_rules(manifest, trainer) if single_hosts(r)]
    assert api, "the trainer may reach the API server's endpoint"
    assert all({p["port"] for p in r["ports"]} <= {443, 6443} for r in api), api

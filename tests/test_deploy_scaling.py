"""Scaling on Kubernetes (issue 14), over every render of deploy/k8s: gRPC calls spread over every replica
(headless Services, round_robin, connection ages), GPU pods that fail rather than fall back to the CPU, two
replicas at least with disruption budgets, spread over nodes and zones, rollouts that need no spare GPU, the
gateway's drain, torch threads from the CPU limit, RuntimeClass, the model store's storage class, the CPU
images, and the chart's security contexts."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from tests.deploy_manifests import (
    BY_NAME,
    GRPC_SERVICES,
    NAMESPACE,
    RENDERS,
    Manifest,
    Obj,
    Render,
    container_port,
    cpu_cores,
    env_names_read_by,
    grpc_target,
    helm_objects,
    helm_value,
    kustomize,
    rendered,
    settings_class,
)
from tests.test_deploy_policy import grpc_components, parametrize_renders

GPU_RESOURCE = "nvidia.com/gpu"
INFERENCE = tuple(s.name for s in GRPC_SERVICES if s.inference)
HA_RENDERS = [r for r in RENDERS if r.highly_available]
# The connection ages the code's defaults have, set explicitly everywhere (grace: the trainer's uploads).
MAX_AGE_S = 60
MAX_AGE_GRACE_S = {"classifier": 300, "explain": 300, "detector": 300, "trainer": 3600}


def gpus(manifest: Manifest, component: str) -> int:
    return int(manifest.container(component)["resources"].get("limits", {}).get(GPU_RESOURCE, 0))


def headless_service(manifest: Manifest, component: str) -> Obj:
    found = manifest.named("Service", f"{manifest.render.name_of(component)}-headless")
    assert found is not None, f"{manifest.render}: no headless Service for {component}"
    return found


# -- every replica gets calls --------------------------------------------------------------------------------
@parametrize_renders
def test_each_grpc_service_has_a_headless_service_of_its_ready_pods(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        spec = headless_service(manifest, component)["spec"]
        assert spec["clusterIP"] == "None", "one DNS record per pod, no virtual IP in front of them"
        assert spec.get("publishNotReadyAddresses", False) is False, "a loading or draining pod gets no call"
        assert manifest.selected_components(spec["selector"]) == {component}
        (port,) = spec["ports"]
        assert port["name"] == "grpc"
        # Without a cluster IP nothing maps ports: the target's port must be the one the pods listen on.
        assert container_port(manifest.container(component), port["targetPort"]) == port["port"]


@parametrize_renders
def test_the_gateway_dials_every_replica_round_robin_through_the_headless_services(render: Render) -> None:
    manifest = rendered(render)
    env = manifest.env(manifest.container("gateway"))
    assert env["VISION_GATEWAY_LB_POLICY"] == "round_robin"
    domain = helm_value(render, "global", "clusterDomain") or "cluster.local"
    for component in grpc_components(render):
        address = env[f"VISION_GATEWAY_{component.upper()}_ADDR"]
        assert address.startswith("dns:///"), f"{address}: gRPC's DNS resolver sees every pod's address"
        host, port = grpc_target(address)
        # The fully qualified name: no search-path lookups, and the name mutual TLS checks.
        assert host == f"{headless_service(manifest, component)['metadata']['name']}.{NAMESPACE}.svc.{domain}"
        assert port == container_port(manifest.container(component), "grpc")


@parametrize_renders
def test_servers_close_old_connections_so_the_gateway_finds_new_replicas(render: Render) -> None:
    manifest = rendered(render)
    gateway = manifest.env(manifest.container("gateway"))
    gateway_settings = settings_class(BY_NAME["gateway"]).model_fields
    longest = {
        "model": float(gateway.get("VISION_GATEWAY_TIMEOUT_S", gateway_settings["timeout_s"].default)),
        "trainer": float(
            gateway.get("VISION_GATEWAY_TRAIN_TIMEOUT_S", gateway_settings["train_timeout_s"].default)
        ),
    }
    for component in grpc_components(render):
        prefix = BY_NAME[component].env_prefix
        env = manifest.env(manifest.container(component))
        assert float(env[f"{prefix}MAX_CONNECTION_AGE_S"]) == MAX_AGE_S, component
        grace = float(env[f"{prefix}MAX_CONNECTION_AGE_GRACE_S"])
        assert grace == MAX_AGE_GRACE_S[component], component
        # A call running when its connection ages out gets to finish.
        assert grace >= longest["trainer" if component == "trainer" else "model"], component
        assert {f"{prefix}MAX_CONNECTION_AGE_S", f"{prefix}MAX_CONNECTION_AGE_GRACE_S"} <= env_names_read_by(
            BY_NAME[component]
        )


# -- GPUs ------------------------------------------------------------------------------------------------
@parametrize_renders
def test_gpu_pods_use_cuda_or_fail_and_cpu_pods_say_cpu(render: Render) -> None:
    # "auto" would fall back to the CPU, quietly, in a pod that holds a GPU.
    manifest = rendered(render)
    for component in grpc_components(render):
        device = manifest.env(manifest.container(component))[f"{BY_NAME[component].env_prefix}DEVICE"]
        assert device == ("cuda" if gpus(manifest, component) else "cpu"), component
        assert (gpus(manifest, component) > 0) == render.gpu, component


@parametrize_renders
def test_only_gpu_pods_get_the_gpu_runtime_class(render: Render) -> None:
    manifest = rendered(render)
    for component, deployment in manifest.deployments().items():
        runtime = deployment["spec"]["template"]["spec"].get("runtimeClassName", "")
        expected = render.runtime_class if component in grpc_components(render) and render.gpu else ""
        assert runtime == expected, component


def test_the_gpu_overlays_runtime_class_block_uncommented_runs_the_gpu_pods_with_it() -> None:
    objects = [o for o in yaml.safe_load_all(kustomize("overlays/gpu", uncomment=["runtime-class"])) if o]
    runtimes = {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: o["spec"]["template"][
            "spec"
        ].get("runtimeClassName")
        for o in objects
        if o["kind"] == "Deployment"
    }
    assert runtimes == {
        **dict.fromkeys(("classifier", "explain", "detector", "trainer"), "nvidia"),
        "gateway": None,
    }


# -- availability ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("render", HA_RENDERS, ids=str)
def test_the_gateway_and_inference_services_keep_two_replicas_and_one_through_drains(render: Render) -> None:
    manifest = rendered(render)
    scalers = {
        **{h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
           for h in manifest.of_kind("HorizontalPodAutoscaler")},
        **{s["spec"]["scaleTargetRef"]["name"]: s["spec"]["minReplicaCount"]
           for s in manifest.of_kind("ScaledObject")},
    }  # fmt: skip
    budgets = {
        component: p["spec"]
        for p in manifest.of_kind("PodDisruptionBudget")
        for component in manifest.selected_components(p["spec"]["selector"])
    }
    for component in ("gateway", *INFERENCE):
        if component not in render.services:
            continue
        deployment = manifest.deployment(component)
        least = scalers.get(deployment["metadata"]["name"], deployment["spec"].get("replicas", 1))
        assert least >= 2, f"{component}: {least} replica(s) is an outage on every drain and rollout"
        assert budgets[component] == {"minAvailable": 1, "selector": budgets[component]["selector"]}


@parametrize_renders
def test_replicas_are_spread_over_nodes_and_zones(render: Render) -> None:
    manifest = rendered(render)
    for component in ("gateway", *INFERENCE):
        if component not in render.services:
            continue
        constraints = manifest.pod_spec(component).get("topologySpreadConstraints", [])
        own = helm_value(render, component, "topologySpreadConstraints")
        expected = (
            {(c["topologyKey"], c["whenUnsatisfiable"]) for c in own}
            if own
            else {
                ("kubernetes.io/hostname", "DoNotSchedule"),
                ("topology.kubernetes.io/zone", "ScheduleAnyway"),
            }
        )
        assert {(c["topologyKey"], c["whenUnsatisfiable"]) for c in constraints} == expected, component
        for constraint in constraints:
            assert constraint["maxSkew"] == 1
            assert manifest.selected_components(constraint["labelSelector"]) == {component}
            if not own:  # a rollout's new pods are balanced among themselves
                assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    if "trainer" in render.services:  # one pod: nothing to spread
        assert "topologySpreadConstraints" not in manifest.pod_spec("trainer")


@parametrize_renders
def test_rollouts_need_no_spare_gpu_and_take_no_cpu_replica_down_before_its_successor(render: Render) -> None:
    manifest = rendered(render)
    for component in ("gateway", *INFERENCE):
        if component not in render.services:
            continue
        strategy = manifest.deployment(component)["spec"]["strategy"]
        own = helm_value(render, component, "strategy")
        gpu = component != "gateway" and gpus(manifest, component) > 0
        default = {"maxSurge": 0, "maxUnavailable": 1} if gpu else {"maxSurge": "25%", "maxUnavailable": 0}
        assert strategy == (own or {"type": "RollingUpdate", "rollingUpdate": default}), component
    if "trainer" in render.services:  # one pod with its job database: never two at once
        assert manifest.deployment("trainer")["spec"]["strategy"] == {"type": "Recreate"}


@parametrize_renders
def test_the_gateway_drains_for_a_set_time_within_its_grace_period(render: Render) -> None:
    manifest = rendered(render)
    gateway = manifest.container("gateway")
    drain = float(manifest.env(gateway)["VISION_GATEWAY_DRAIN_S"])
    assert drain == (helm_value(render, "gateway", "drainSeconds") or 30)
    pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The pause, the drain, then time to close the channels before the kubelet's SIGKILL.
    assert manifest.pod_spec("gateway")["terminationGracePeriodSeconds"] >= pause + drain + 10


# -- threads ---------------------------------------------------------------------------------------------
def threads_variable(component: str) -> str:
    """The setting of the service's torch threads: the model services share one, the trainer has its own."""
    return "VISION_TRAINER_TORCH_THREADS" if component == "trainer" else "VISION_TORCH_THREADS"


@parametrize_renders
def test_torch_threads_follow_the_containers_cpu_limit(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        container = manifest.container(component)
        assert threads_variable(component) in env_names_read_by(BY_NAME[component])
        limit = math.ceil(cpu_cores(container["resources"]["limits"]["cpu"]))
        refs = {v["name"]: v.get("valueFrom", {}).get("resourceFieldRef") for v in container["env"]}
        for variable in (threads_variable(component), "OMP_NUM_THREADS"):
            assert refs.get(variable) == {"resource": "limits.cpu", "divisor": "1"}, f"{component} {variable}"
            assert manifest.env(container)[variable] == str(limit)
    gateway = {v["name"] for v in manifest.container("gateway").get("env", [])}
    assert not gateway & {"VISION_TORCH_THREADS", "OMP_NUM_THREADS"}, "the gateway has no torch"


# -- images ----------------------------------------------------------------------------------------------
@parametrize_renders
def test_the_torch_images_are_the_builds_of_the_clusters_kind(render: Render) -> None:
    # CPU clusters run the CPU builds (tag -cpu, ~4 GB smaller); the gateway's image has no torch.
    manifest = rendered(render)
    for component, _, container in manifest.containers():
        tag = container["image"].rpartition(":")[2]
        if component == "gateway":
            assert not tag.endswith("-cpu"), container["image"]
        else:
            assert tag.endswith(render.torch_tag_suffix) and (render.torch_tag_suffix or "-cpu" not in tag)


# -- storage ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu"])
def test_each_overlays_storage_class_block_uncommented_names_the_model_stores_class(overlay: str) -> None:
    def claims(text: str) -> dict[str, Any]:
        return {
            o["metadata"]["name"]: o["spec"].get("storageClassName")
            for o in yaml.safe_load_all(text)
            if o and o["kind"] == "PersistentVolumeClaim"
        }

    assert claims(kustomize(overlay)) == {"vision-models": None, "vision-trainer-data": None}
    uncommented = claims(kustomize(overlay, uncomment=["storage-class"]))
    assert uncommented == {"vision-models": "nfs-client", "vision-trainer-data": None}


@parametrize_renders
def test_helm_names_the_model_stores_storage_class_as_its_values_say(render: Render) -> None:
    claim = rendered(render).named("PersistentVolumeClaim", render.name_of("models"))
    if claim is not None:  # else an existing claim
        wanted = helm_value(render, "global", "modelStore", "storageClassName") or None  # "": the default
        assert claim["spec"].get("storageClassName") == wanted
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


# -- the chart's security contexts -----------------------------------------------------------------------
def test_helm_security_contexts_take_a_services_own_over_the_global_ones() -> None:
    objects = helm_objects(
        "classifier.podSecurityContext.runAsUser=20000",
        "global.containerSecurityContext.readOnlyRootFilesystem=false",
    )
    pods = {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: o["spec"]["template"][
            "spec"
        ]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    }
    assert pods["classifier"]["securityContext"]["runAsUser"] == 20000
    assert {p["securityContext"]["runAsUser"] for c, p in pods.items() if c != "classifier"} == {10001}
    for pod in pods.values():
        assert pod["securityContext"]["runAsNonRoot"] is True, "the rest of the default stays"
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False

"""Project policy over every render of deploy/k8s (kustomize overlays, Helm with several values files):
GPUs, probes, addresses, Pod Security "restricted", writable paths, shutdown timing, configuration names.
Network reachability, secrets and scaling: tests/test_deploy_network.py."""

from __future__ import annotations

import ast
import asyncio
import functools
import os
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest

from tests.deploy_manifests import (
    BY_NAME,
    GRPC_SERVICES,
    NAMESPACE,
    RENDER,
    RENDERS,
    REPO,
    Manifest,
    Obj,
    Render,
    Service,
    container_port,
    env_names_read_by,
    grpc_target,
    more_settings_classes,
    rendered,
    settings_class,
)

GPU_RESOURCE = "nvidia.com/gpu"
STARTUP_BUDGET_S = 600  # model loading and warm-up on a cold node
GPU_RENDERS = [r for r in RENDERS if r.gpu]
CPU_RENDERS = [r for r in RENDERS if not r.gpu]
# Paths a process writes to: each must lie on a writable volume (the root filesystem is read-only).
WRITABLE_ENV = (
    "HOME",
    "XDG_CACHE_HOME",
    "TORCH_HOME",
    "MPLCONFIGDIR",
    "YOLO_CONFIG_DIR",
    "VISION_DATA_DIR",
    "VISION_TRAINER_KAGGLEHUB_CACHE",
)
# Not settings of ours: what the libraries inside the images read.
LIBRARY_ENV = frozenset((*WRITABLE_ENV[:5], "YOLO_OFFLINE", "KAGGLE_CONFIG_DIR", "OMP_NUM_THREADS"))

parametrize_renders = pytest.mark.parametrize("render", RENDERS, ids=str)


def grpc_components(render: Render) -> list[str]:
    return [s.name for s in GRPC_SERVICES if s.name in render.services]


def mounts(manifest: Manifest, component: str) -> dict[str, bool]:
    """{mount path: writable} of the component's container."""
    return {
        m["mountPath"]: not m.get("readOnly", False) for m in manifest.container(component)["volumeMounts"]
    }


def volume_of(manifest: Manifest, component: str, mount_path: str) -> Obj:
    mount = next(m for m in manifest.container(component)["volumeMounts"] if m["mountPath"] == mount_path)
    volume: Obj = next(v for v in manifest.pod_spec(component)["volumes"] if v["name"] == mount["name"])
    return volume


def under(path: str, directory: str) -> bool:
    return (
        PurePosixPath(path) == PurePosixPath(directory)
        or PurePosixPath(directory) in PurePosixPath(path).parents
    )


# -- GPUs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("render", GPU_RENDERS, ids=str)
def test_every_gpu_service_requests_a_gpu_in_limits_and_lands_on_gpu_nodes(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        assert BY_NAME[component].gpu
        limits = manifest.container(component)["resources"]["limits"]
        assert int(limits.get(GPU_RESOURCE, 0)) >= 1, f"{component} has no {GPU_RESOURCE} limit"
        spec = manifest.pod_spec(component)
        assert spec["nodeSelector"].get("nvidia.com/gpu.present") == "true", component
        assert any(t["key"] == GPU_RESOURCE and t["effect"] == "NoSchedule" for t in spec["tolerations"]), (
            component
        )
    assert GPU_RESOURCE not in str(manifest.container("gateway")["resources"])


@pytest.mark.parametrize("render", CPU_RENDERS, ids=str)
def test_cpu_deployments_request_no_gpu_and_say_so_to_the_services(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        assert GPU_RESOURCE not in str(manifest.container(component)["resources"]), component
        assert "nodeSelector" not in manifest.pod_spec(component), component
        env = manifest.env(manifest.container(component))
        assert env[f"{BY_NAME[component].env_prefix}DEVICE"] == "cpu"


@parametrize_renders
def test_every_container_has_resource_requests_and_limits(render: Render) -> None:
    for component, _, container in rendered(render).containers():
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{component} {kind}"


# -- ports, probes and addresses ----------------------------------------------------------------------------
@parametrize_renders
def test_grpc_probes_check_the_port_the_service_listens_on(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        container = manifest.container(component)
        env = manifest.env(container)
        listening = int(env[f"{BY_NAME[component].env_prefix}PORT"])
        assert env[f"{BY_NAME[component].env_prefix}HOST"] == "0.0.0.0", (
            f"{component} must listen on all interfaces"
        )
        assert container_port(container, "grpc") == listening
        # With mutual TLS the port speaks TLS only, which the kubelet's gRPC probes cannot: they ask the
        # plaintext health-only port (tests/test_deploy_security.py checks it is there).
        health_port = int(env.get(f"{BY_NAME[component].env_prefix}HEALTH_PORT", "0"))
        probed = health_port if render.tls else listening
        assert probed, f"{component}: mutual TLS but no health port"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc_probe = container[probe]["grpc"]
            assert container_port(container, grpc_probe["port"]) == probed, f"{component} {probe}"
            assert grpc_probe.get("service", "") == "", (
                "the whole-server status: NOT_SERVING until models load"
            )


@parametrize_renders
def test_startup_probes_allow_ten_minutes_for_model_loading(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        startup = manifest.container(component)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_S, component


@functools.cache
def gateway_status(path: str) -> int:
    """What the real gateway app answers on GET ``path`` (no backends needed for its own liveness route)."""
    from gateway.config import GatewaySettings
    from gateway.main import create_app

    async def get() -> int:
        transport = httpx.ASGITransport(app=create_app(GatewaySettings()))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return (await client.get(path)).status_code

    return asyncio.run(get())


@parametrize_renders
def test_gateway_probes_ask_the_gateways_own_liveness_route_on_its_port(render: Render) -> None:
    manifest = rendered(render)
    container = manifest.container("gateway")
    env = manifest.env(container)
    assert env["VISION_GATEWAY_HOST"] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert container_port(container, http["port"]) == int(env["VISION_GATEWAY_PORT"]), probe
        # /healthz is the process itself; /health depends on every backend and would cascade failures.
        assert http["path"] == "/healthz", probe
        assert gateway_status(http["path"]) == 200, f"{probe}: GET {http['path']}"


@parametrize_renders
def test_each_grpc_service_has_a_cluster_ip_service_with_a_port_named_grpc(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        service = manifest.named("Service", render.name_of(component))
        assert service is not None, component
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert manifest.selected_components(service["spec"]["selector"]) == {component}
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert container_port(manifest.container(component), port["targetPort"]) == port["port"]


@parametrize_renders
def test_gateway_is_configured_with_the_grpc_services_dns_names_and_ports(render: Render) -> None:
    manifest = rendered(render)
    env = manifest.env(manifest.container("gateway"))
    for service in GRPC_SERVICES:
        address = env.get(f"VISION_GATEWAY_{service.name.upper()}_ADDR", "")
        if service.name not in render.services:
            assert not address, f"{service.name} is not deployed but the gateway is pointed at {address}"
            continue
        host, port = grpc_target(address)
        # "<service>" or "<service>.<namespace>[.svc[.<cluster domain>]]": the namespace's cluster DNS.
        name, *domain = host.split(".")
        assert domain[:2] in ([], [NAMESPACE], [NAMESPACE, "svc"]), address
        target = manifest.named("Service", name)
        assert target is not None, f"VISION_GATEWAY_{service.name.upper()}_ADDR={address}: no Service {name}"
        assert manifest.selected_components(target["spec"]["selector"]) == {service.name}, address
        (grpc,) = [p for p in target["spec"]["ports"] if p["name"] == "grpc"]
        # A headless Service maps no ports: the pods must listen on the port the target names.
        assert port == grpc["port"] == container_port(manifest.container(service.name), grpc["targetPort"])


@parametrize_renders
def test_gateway_service_and_ingress_reach_the_http_port(render: Render) -> None:
    manifest = rendered(render)
    service = manifest.named("Service", render.name_of("gateway"))
    assert service is not None
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert container_port(manifest.container("gateway"), port["targetPort"]) == 8000
    for ingress in manifest.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert (
                    backend["port"].get("name") == port["name"]
                    or backend["port"].get("number") == port["port"]
                )


# -- hardening ---------------------------------------------------------------------------------------------
def pod_containers(manifest: Manifest) -> list[tuple[str, Obj, Obj]]:
    """(component, pod spec, container) of every container of every Deployment and Job."""
    jobs = [
        (component, spec, container)
        for component in manifest.jobs()
        for spec in [manifest.job_pod_spec(component)]
        for container in spec.get("initContainers", []) + spec["containers"]
    ]
    return [*manifest.containers(), *jobs]


@parametrize_renders
def test_every_container_is_pod_security_restricted_with_a_read_only_root(render: Render) -> None:
    for component, pod, container in pod_containers(rendered(render)):
        assert_restricted(component, pod, container, assigned_uid=render.assigned_uid)


def assert_restricted(component: str, pod: Obj, container: Obj, assigned_uid: bool = False) -> None:
    """Pod Security "restricted" and a read-only root for one container of a pod spec. ``assigned_uid``: the
    platform picks uid, gid and fsGroup (OpenShift's SCC, from the namespace's range), so none is set."""
    pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})

    def setting(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    assert setting("runAsNonRoot") is True, component
    if assigned_uid:
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & (set(ctx) | set(pod_ctx)), component
    else:
        assert setting("runAsUser") not in (None, 0), f"{component}: a numeric non-root user"
    assert ctx.get("allowPrivilegeEscalation") is False, component
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"], component
    assert not ctx.get("capabilities", {}).get("add"), component
    assert setting("seccompProfile") == {"type": "RuntimeDefault"}, component
    assert ctx.get("readOnlyRootFilesystem") is True, component
    assert not ctx.get("privileged"), component
    assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), component
    assert not any("hostPath" in v for v in pod.get("volumes", [])), component


@parametrize_renders
def test_pods_get_no_api_token_and_no_service_link_variables(render: Render) -> None:
    # Service links would set VISION_CLASSIFIER_PORT=tcp://... (Service vision-classifier): a setting's name.
    # The one exception: a trainer that runs its jobs as Kubernetes Jobs talks to the API
    # (tests/test_deploy_jobs.py checks what its token may do).
    manifest = rendered(render)
    specs = [(c, d["spec"]["template"]["spec"]) for c, d in manifest.deployments().items()]
    specs += [(c, manifest.job_pod_spec(c)) for c in manifest.jobs()]
    for component, spec in specs:
        api_client = component == "trainer" and render.trainer_backend == "kubernetes"
        assert spec.get("automountServiceAccountToken") is api_client, component
        assert spec.get("enableServiceLinks") is False, component


def test_the_namespace_enforces_restricted_pod_security() -> None:
    namespace = rendered(RENDER["kustomize-gpu"]).named("Namespace", NAMESPACE)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@parametrize_renders
def test_every_path_a_service_writes_is_a_writable_volume(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        writable = [path for path, rw in mounts(manifest, component).items() if rw]
        assert "/tmp" in writable, component
        env = manifest.env(manifest.container(component))
        for var in WRITABLE_ENV:
            if var in env:
                assert any(under(env[var], path) for path in writable), f"{component}: {var}={env[var]}"
        for path in writable:  # writable means a volume, never the image
            assert volume_of(manifest, component, path), path


@parametrize_renders
def test_model_store_is_read_only_for_inference_and_read_write_for_the_trainer(render: Render) -> None:
    manifest = rendered(render)
    claims = set()
    for component in grpc_components(render):
        env = manifest.env(manifest.container(component))
        model_dir = env["VISION_MODEL_DIR"]
        assert mounts(manifest, component)[model_dir] == (component == "trainer"), component
        claim = volume_of(manifest, component, model_dir)["persistentVolumeClaim"]
        assert claim.get("readOnly", False) == (component != "trainer"), component
        claims.add(claim["claimName"])
    assert len(claims) == 1, f"one model store for every service, got {claims}"
    (claim_name,) = claims
    pvc = manifest.named("PersistentVolumeClaim", claim_name)
    if pvc is not None:  # else an existing claim the chart was pointed at
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    if "trainer" in render.services:
        data_dir = manifest.env(manifest.container("trainer"))["VISION_DATA_DIR"]
        assert "persistentVolumeClaim" in volume_of(manifest, "trainer", data_dir)
    assert "/models" not in mounts(manifest, "gateway")


@parametrize_renders
def test_termination_grace_covers_the_shutdown_delay_and_the_drain(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        env = manifest.env(manifest.container(component))
        prefix = BY_NAME[component].env_prefix
        needed = float(env[f"{prefix}SHUTDOWN_DELAY_SECONDS"]) + float(env[f"{prefix}GRACE_SECONDS"])
        assert float(env[f"{prefix}SHUTDOWN_DELAY_SECONDS"]) > 0, "time for endpoints to drop the pod"
        assert manifest.pod_spec(component)["terminationGracePeriodSeconds"] > needed, component
    gateway = manifest.container("gateway")
    pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = _gateway_drain_s(manifest.env(gateway))
    assert manifest.pod_spec("gateway")["terminationGracePeriodSeconds"] > pause + drain


def _gateway_drain_s(env: dict[str, str]) -> float:
    """How long the gateway lets requests finish on SIGTERM: uvicorn's timeout_graceful_shutdown in
    gateway/__main__.py, a number or the drain_s setting (VISION_GATEWAY_DRAIN_S, else its default)."""
    tree = ast.parse((REPO / "gateway" / "__main__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "timeout_graceful_shutdown":
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, (int, float)):
                return float(node.value.value)
            names = {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)}
            assert "drain_s" in names, f"timeout_graceful_shutdown is {ast.unparse(node.value)}"
            default = settings_class(BY_NAME["gateway"]).model_fields["drain_s"].default
            return float(env.get("VISION_GATEWAY_DRAIN_S", default))
    raise AssertionError("gateway/__main__.py no longer sets uvicorn's timeout_graceful_shutdown")


# -- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("render", "service"),
    [(r, s) for r in RENDERS for s in BY_NAME.values() if s.name in r.services],
    ids=lambda x: x.name if isinstance(x, Service) else str(x),
)
def test_every_configured_variable_is_a_setting_the_service_reads(render: Render, service: Service) -> None:
    manifest = rendered(render)
    accepted = env_names_read_by(service)
    for name, source in manifest.env_sources(manifest.container(service.name)).items():
        if name in LIBRARY_ENV:
            continue
        assert name in accepted, f"{service.name} does not read {name} (from {source})"


@pytest.mark.parametrize(
    ("render", "service"),
    [(r, s) for r in RENDERS for s in BY_NAME.values() if s.name in r.services],
    ids=lambda x: x.name if isinstance(x, Service) else str(x),
)
def test_every_service_accepts_its_configured_environment(
    render: Render, service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The values must parse, not only the names: "2.097152e+07" is no int, "True " no bool.
    manifest = rendered(render)
    container = manifest.container(service.name)
    for name in [n for n in os.environ if n.startswith("VISION_")]:
        monkeypatch.delenv(name)
    for name, value in manifest.env(container).items():
        if name.startswith("VISION_TLS_") and name.endswith("_FILE"):
            # The certificate files exist in the pod only, and the TLS settings read them (PEM markers) as
            # they are made: stand-ins take their place here. tests/test_deploy_security.py checks the paths.
            value = str(_pem_stand_in(tmp_path, name))
        monkeypatch.setenv(name, value)
    settings = settings_class(service)()
    for more in more_settings_classes(service):
        more()
    assert settings.host == "0.0.0.0"
    assert settings.port == container_port(container, "http" if service.name == "gateway" else "grpc")
    if service.is_grpc:
        assert str(settings.model_dir) in mounts(manifest, service.name)


@parametrize_renders
def test_configuration_comes_from_config_maps_and_secrets_only_through_volumes(render: Render) -> None:
    # The one value from elsewhere: the container's own CPU limit (the downward API), for its thread counts.
    for component, _, container in pod_containers(rendered(render)):
        for var in container.get("env", []):
            source = var.get("valueFrom", {})
            assert set(source) <= {"resourceFieldRef"}, f"{component}: {var['name']} comes from {source}"
            if source:
                ref = source["resourceFieldRef"]
                assert ref["resource"] == "limits.cpu", f"{component}: {var['name']} from {ref}"
                assert ref.get("containerName", container["name"]) == container["name"]


def _pem_stand_in(directory: Path, variable: str) -> Path:
    """A file with the PEM markers the TLS settings look for (no real key or certificate)."""
    kind = "PRIVATE KEY" if variable.endswith("KEY_FILE") else "CERTIFICATE"
    path = directory / f"{variable.lower()}.pem"
    path.write_text(f"-----BEGIN {kind}-----\nAA==\n-----END {kind}-----\n")
    return path

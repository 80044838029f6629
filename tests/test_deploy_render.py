"""deploy/k8s renders: kustomize overlays and the Helm chart give complete, schema-valid objects for every
enabled service, and the two ways of deploying describe the same system."""

from __future__ import annotations

import copy
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy_manifests import (
    CHART,
    FETCH_SCRIPT,
    HELM_VALUES,
    K8S_SCHEMA_VERSIONS,
    RENDER,
    RENDERS,
    SERVICES,
    Obj,
    Render,
    k8s_tools,
    rendered,
    run_tool,
    tool_process,
)


def unhashed(name: str) -> str:
    """A kustomize-generated name without its content hash suffix."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def test_kubectl_and_helm_come_from_the_project_script() -> None:
    tools = k8s_tools()
    assert "v1.33" in run_tool([tools.kubectl, "version", "--client"])
    assert run_tool([tools.helm, "version", "--short"]).startswith("v")


def test_fetch_script_says_what_is_missing_when_it_cannot_download(tmp_path: Any) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "uname", "mktemp", "rm"):  # no npm, no curl
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True)
        (bin_dir / tool).symlink_to(found.stdout.strip())
    (bin_dir / "python3").symlink_to("/bin/true")
    done = subprocess.run(
        ["bash", str(FETCH_SCRIPT), str(tmp_path / "cache")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "neither npm nor curl" in done.stderr


@pytest.mark.parametrize("render", RENDERS, ids=str)
def test_every_enabled_service_has_its_deployment_service_and_config(render: Render) -> None:
    manifest = rendered(render)
    assert set(manifest.deployments()) == set(render.services)
    for service in SERVICES:
        name = render.name_of(service.name)
        enabled = service.name in render.services
        assert (manifest.named("Service", name) is not None) == enabled, f"Service {name}"
        has_config = any(
            unhashed(o["metadata"]["name"]) == name
            if render.tool == "kustomize"
            else o["metadata"]["name"] == name
            for o in manifest.of_kind("ConfigMap")
        )
        assert has_config == enabled, f"ConfigMap {name}"
    assert (manifest.named("Ingress", render.name_of("gateway")) is not None) == render.ingress
    assert bool(manifest.of_kind("NetworkPolicy")) == render.network_policies
    assert bool(manifest.of_kind("Certificate")) == render.tls


# cert-manager's CRDs are not among kubernetes-validate's schemas: tests/test_deploy_security.py checks the
# fields the manifests give its objects instead.
# Nor are the Prometheus Operator's and KEDA's: tests/test_deploy_monitoring.py checks theirs.
CRD_GROUPS = ("cert-manager.io", "monitoring.coreos.com", "keda.sh")


def _has_schema(obj: Obj) -> bool:
    return obj["apiVersion"].split("/")[0] not in CRD_GROUPS


@pytest.mark.parametrize("version", K8S_SCHEMA_VERSIONS)
@pytest.mark.parametrize("render", RENDERS, ids=str)
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(render: Render, version: str) -> None:
    errors = []
    for obj in filter(_has_schema, rendered(render).objects):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            path = "/".join(str(p) for p in getattr(exc, "path", []))
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} {path}: {getattr(exc, 'message', exc)}")
    assert not errors, "\n".join(errors)


def test_schema_validation_rejects_a_misspelled_field() -> None:
    # Strict mode is what makes the check above worth having: a typo must not pass as an unknown field.
    deployment = copy.deepcopy(rendered(RENDER["kustomize-gpu"]).deployment("classifier"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_SCHEMA_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("values", HELM_VALUES, ids=lambda v: "+".join(v) or "defaults")
def test_helm_chart_lints_cleanly(values: tuple[str, ...]) -> None:
    args: list[Any] = [k8s_tools().helm, "lint", "--strict", CHART]
    for path in values:
        args += ["--values", CHART / path]
    assert "0 chart(s) failed" in run_tool(args)


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("classifier.gpus=1", "additional properties 'gpus' not allowed"),
        ("explain.config.VISION_CLASSIFIER_MAX_QUEUE=8", "propertyName 'VISION_CLASSIFIER_MAX_QUEUE'"),
        ("global.modelStore.accessMode=ReadWriteOnce", "modelStore/accessMode"),
        ("trainer.backend=k8s", "trainer/backend"),
        ("global.topologySpread.hostname=Sometimes", "topologySpread/hostname"),
        ("seedModels.image=vision-trainer", "additional properties 'image' not allowed"),
        ("gateway.strategy.rollingUpdate.maxSurges=1", "additional properties 'maxSurges' not allowed"),
    ],
)
def test_helm_refuses_values_the_chart_does_not_know(setting: str, complaint: str) -> None:
    done = tool_process([k8s_tools().helm, "template", "vision", CHART, "--set", setting])
    assert done.returncode != 0
    assert complaint in done.stderr


def test_helm_asks_for_the_api_server_when_it_cannot_look_it_up() -> None:
    # `helm template` sees no cluster, so the Endpoints default/kubernetes lookup finds nothing.
    args = ["template", "vision", CHART, "--set", "trainer.backend=kubernetes"]
    done = tool_process([k8s_tools().helm, *args])
    assert done.returncode != 0
    assert "set trainer.kubernetes.apiServerEgress" in done.stderr


def test_helm_refuses_a_gateway_without_a_classifier() -> None:
    done = tool_process([k8s_tools().helm, "template", "vision", CHART, "--set", "classifier.enabled=false"])
    assert done.returncode != 0
    assert "VISION_GATEWAY_CLASSIFIER_ADDR is required" in done.stderr


def _pod_shape(manifest_render: Render, component: str) -> dict[str, Any]:
    """What a Deployment's pods are, minus what legitimately differs between the two renderers (labels,
    annotations, generated ConfigMap names)."""
    manifest = rendered(manifest_render)
    spec = copy.deepcopy(manifest.pod_spec(component))
    container: Obj = spec["containers"][0]
    env = manifest.env(container)
    container["env"] = sorted(container.get("env", []), key=lambda e: e["name"])
    container["envFrom"] = len(container.get("envFrom", []))
    # Order carries no meaning in these lists (kustomize patches prepend what they add).
    container["ports"] = sorted(container.get("ports", []), key=lambda p: str(p["name"]))
    container["volumeMounts"] = sorted(container.get("volumeMounts", []), key=lambda m: str(m["mountPath"]))
    spec["volumes"] = sorted(spec.get("volumes", []), key=lambda v: v["name"])
    for volume in spec["volumes"]:
        volume.get("persistentVolumeClaim", {}).pop("claimName", None)
    spec["tolerations"] = sorted(spec.get("tolerations", []), key=lambda t: str(sorted(t.items())))
    return {
        "pod": spec,
        "replicas": manifest.deployment(component)["spec"].get("replicas"),
        "strategy": manifest.deployment(component)["spec"].get("strategy"),
        "env": env,
    }


TWINS = [
    (RENDER["kustomize-gpu"], RENDER["helm-default"]),
    (RENDER["kustomize-cpu"], RENDER["helm-cpu"]),
    (RENDER["kustomize-gpu-mtls"], RENDER["helm-tls"]),
    (RENDER["kustomize-gpu-monitoring"], RENDER["helm-monitoring"]),
    (RENDER["kustomize-gpu-trainer-kubernetes"], RENDER["helm-trainer-kubernetes"]),
]
TWIN_IDS = ["gpu", "cpu", "mtls", "monitoring", "trainer-kubernetes"]
# Whole renders with the same objects: the chart's defaults seed the store, as components/seed-models does.
OBJECT_TWINS = [(RENDER["kustomize-gpu-seed"], RENDER["helm-default"]), TWINS[2], TWINS[3], TWINS[4]]


@pytest.mark.parametrize(("kustomize", "helm"), TWINS, ids=TWIN_IDS)
@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_kustomize_and_helm_deploy_the_same_pods(kustomize: Render, helm: Render, service: Any) -> None:
    assert _pod_shape(kustomize, service.name) == _pod_shape(helm, service.name)


@pytest.mark.parametrize(
    ("kustomize", "helm"), OBJECT_TWINS, ids=["gpu-seed", "mtls", "monitoring", "trainer-kubernetes"]
)
def test_kustomize_and_helm_render_the_same_objects(kustomize: Render, helm: Render) -> None:
    def names(render: Render) -> set[tuple[str, str]]:
        hashed = render.tool == "kustomize"  # generated ConfigMaps end in a content hash
        return {
            (
                o["kind"],
                unhashed(o["metadata"]["name"])
                if hashed and o["kind"] == "ConfigMap"
                else o["metadata"]["name"],
            )
            for o in rendered(render).objects
            if o["kind"] != "Namespace"  # helm installs into a namespace it is given
        }

    assert names(kustomize) == names(helm)

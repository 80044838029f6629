"""The metrics ports over every render of deploy/k8s: each process's GET /metrics port (plain HTTP) is
declared on its container and its Service, configured as the code reads it, and reachable from Prometheus's
namespace alone: no other pod, no Ingress, no LoadBalancer. Also Helm's metrics values and its extra
autoscaling metrics. The Prometheus Operator's objects: tests/test_deploy_monitoring.py."""

from __future__ import annotations

import pytest

from tests.deploy_manifests import (
    BY_NAME,
    CHART,
    RENDER,
    RENDERS,
    SERVICES,
    Manifest,
    Obj,
    Render,
    Service,
    container_port,
    default_metrics_port,
    helm_objects,
    k8s_tools,
    rendered,
    tool_process,
)
from tests.test_deploy_policy import parametrize_renders

POLICY_RENDERS = [r for r in RENDERS if r.network_policies]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _metrics_port(manifest: Manifest, component: str) -> int:
    return container_port(manifest.container(component), "metrics")


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_the_deployments_metrics_ports_are_the_codes_defaults(service: Service) -> None:
    assert default_metrics_port(service) == service.metrics_port


@parametrize_renders
def test_every_container_declares_the_metrics_port_it_is_configured_with(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        container = manifest.container(component)
        env = manifest.env(container)
        configured = int(env[f"{BY_NAME[component].env_prefix}METRICS_PORT"])
        assert configured == BY_NAME[component].metrics_port, component
        assert _metrics_port(manifest, component) == configured, component
        ports = [p["containerPort"] for p in container["ports"]]
        assert len(ports) == len(set(ports)), f"{component}: two ports share a number: {ports}"
        # The probes keep asking the service itself (gRPC health, /healthz), never the metrics server.
        for probe in PROBES:
            action = container[probe].get("grpc") or container[probe]["httpGet"]
            assert container_port(container, action["port"]) != configured, f"{component} {probe}"


@parametrize_renders
def test_every_cluster_ip_service_has_a_port_named_metrics(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        services = [
            s
            for s in manifest.of_kind("Service")
            if manifest.selected_components(s["spec"]["selector"]) == {component}
        ]
        internal = [s for s in services if s["spec"].get("type", "ClusterIP") == "ClusterIP"]
        headless = [s for s in internal if s["spec"].get("clusterIP") == "None"]
        internal = [s for s in internal if s not in headless]
        assert internal, f"{component}: no ClusterIP Service"
        for service in internal:
            (port,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
            assert port["port"] == BY_NAME[component].metrics_port, service["metadata"]["name"]
            assert container_port(manifest.container(component), port["targetPort"]) == port["port"]
        # The gRPC clients' headless Service has the gRPC port alone: with the metrics port too, a
        # ServiceMonitor selecting the component's Services would scrape every pod twice.
        for service in headless:
            assert [p["name"] for p in service["spec"]["ports"]] == ["grpc"], service["metadata"]["name"]


@parametrize_renders
def test_no_public_service_or_ingress_reaches_a_metrics_port(render: Render) -> None:
    manifest = rendered(render)
    for service in manifest.of_kind("Service"):
        if service["spec"].get("type", "ClusterIP") != "ClusterIP":  # LoadBalancer, NodePort: published
            (component,) = manifest.selected_components(service["spec"]["selector"])
            metrics = _metrics_port(manifest, component)
            for port in service["spec"]["ports"]:
                target = container_port(manifest.container(component), port.get("targetPort", port["port"]))
                assert port["name"] != "metrics" and target != metrics, service["metadata"]["name"]
    for ingress in manifest.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = manifest.named("Service", backend["name"])
                assert service is not None, backend
                (port,) = [
                    p
                    for p in service["spec"]["ports"]
                    if backend["port"].get("name") == p["name"] or backend["port"].get("number") == p["port"]
                ]
                assert port["name"] != "metrics", f"{ingress['metadata']['name']} routes {path['path']} to it"


def _admits(manifest: Manifest, component: str, rule: Obj, port: int) -> bool:
    """Does the Ingress rule admit traffic to ``port`` of the component (a rule without ports admits all)?"""
    ports = rule.get("ports")
    if not ports:
        return True
    container = manifest.container(component)
    return any("port" not in p or container_port(container, p["port"]) == port for p in ports)


@pytest.mark.parametrize("render", POLICY_RENDERS, ids=str)
def test_only_prometheus_namespace_reaches_the_metrics_ports(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        port = _metrics_port(manifest, component)
        rules = [
            (r, peers)
            for r, peers in manifest.policy_rules(component, "Ingress")
            if _admits(manifest, component, r, port)
        ]
        assert rules, f"{component}: Prometheus may not scrape it"
        for rule, peers in rules:
            assert peers, f"{component}: its metrics port admits everyone: {rule}"
            for peer in peers:
                assert "ipBlock" not in peer, f"{component}: its metrics port admits addresses: {peer}"
                namespaces = peer.get("namespaceSelector", {}).get("matchLabels", {})
                assert namespaces == {"kubernetes.io/metadata.name": render.prometheus_namespace}, peer
                assert not peer["namespaceSelector"].get("matchExpressions"), peer


def test_helm_metrics_network_policy_admits_the_peers_it_is_given() -> None:
    objects = helm_objects(
        "metrics.networkPolicy.from[0].namespaceSelector.matchLabels.team=observability",
        "metrics.networkPolicy.from[0].podSelector.matchLabels.app=prometheus",
    )
    (policy,) = [o for o in objects if o["metadata"]["name"] == "vision-metrics-from-prometheus"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"team": "observability"}},
            "podSelector": {"matchLabels": {"app": "prometheus"}},
        }
    ]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_helm_admits_nobody_to_the_metrics_ports_with_no_peers() -> None:
    names = [o["metadata"]["name"] for o in helm_objects("metrics.networkPolicy.from=null")]
    assert "vision-metrics-from-prometheus" not in names
    assert "vision-default-deny" in names


def test_helm_refuses_address_blocks_as_metrics_peers() -> None:
    # Scrapers are pods in the cluster: an ipBlock (0.0.0.0/0 above all) would let the internet in.
    args = ["template", "vision", CHART, "--set", "metrics.networkPolicy.from[0].ipBlock.cidr=0.0.0.0/0"]
    done = tool_process([k8s_tools().helm, *args])
    assert done.returncode != 0
    assert "additional properties 'ipBlock' not allowed" in done.stderr


def test_helm_gateway_behind_a_load_balancer_has_its_metrics_on_an_internal_service() -> None:
    services = {
        o["metadata"]["name"]: o
        for o in helm_objects("gateway.service.type=LoadBalancer")
        if o["kind"] == "Service"
    }
    assert [p["name"] for p in services["vision-gateway"]["spec"]["ports"]] == ["http"]
    internal = services["vision-gateway-metrics"]["spec"]
    assert internal["type"] == "ClusterIP" and [p["name"] for p in internal["ports"]] == ["metrics"]


def test_helm_no_longer_knows_expose_metrics() -> None:
    # The public port has no /metrics to route: the value is gone, and a leftover one fails the install.
    done = tool_process(
        [k8s_tools().helm, "template", "vision", CHART, "--set", "gateway.ingress.exposeMetrics=true"]
    )
    assert done.returncode != 0
    assert "additional properties 'exposeMetrics' not allowed" in done.stderr


def _hpa(objects: list[Obj], name: str) -> Obj:
    (hpa,) = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == name]
    return hpa


QUEUE_METRIC = {
    "type": "Pods",
    "pods": {
        "metric": {"name": "vision_queue_depth"},
        "target": {"type": "AverageValue", "averageValue": 8},
    },
}


def test_helm_autoscaling_metrics_are_added_beside_cpu() -> None:
    hpa = _hpa(rendered(RENDER["helm-monitoring"]).objects, "vision-classifier")
    kinds = [m["type"] for m in hpa["spec"]["metrics"]]
    assert kinds == ["Resource", "Pods"]
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "vision_queue_depth"


def test_helm_autoscaling_can_drop_cpu_for_queue_depth_alone() -> None:
    objects = helm_objects(
        "detector.autoscaling.targetCPUUtilizationPercentage=0",
        "detector.autoscaling.metrics[0].type=Pods",
        "detector.autoscaling.metrics[0].pods.metric.name=vision_queue_depth",
        "detector.autoscaling.metrics[0].pods.target.type=AverageValue",
        "detector.autoscaling.metrics[0].pods.target.averageValue=8",
    )
    assert _hpa(objects, "vision-detector")["spec"]["metrics"] == [QUEUE_METRIC]
    assert [m["type"] for m in _hpa(objects, "vision-classifier")["spec"]["metrics"]] == ["Resource"]


def test_helm_refuses_an_autoscaler_without_any_metric() -> None:
    done = tool_process(
        [
            k8s_tools().helm,
            "template",
            "vision",
            CHART,
            "--set",
            "explain.autoscaling.targetCPUUtilizationPercentage=0",
        ]
    )
    assert done.returncode != 0
    assert "explain.autoscaling: set targetCPUUtilizationPercentage or metrics" in done.stderr

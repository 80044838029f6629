"""Monitoring with the Prometheus Operator (components/monitoring, Helm `metrics.*`): ServiceMonitors that
scrape each Service's metrics port, alerts and recording rules, a Grafana dashboard, KEDA's queue-depth
scalers. Every PromQL expression must parse with a real PromQL parser (promql-parser, Prometheus's grammar)
and name only the metrics the code exports, with their labels. Kustomize and Helm ship one copy of the rules
and of the dashboard."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml

from tests.deploy_manifests import (
    CHART,
    GRPC_SERVICES,
    K8S,
    NAMESPACE,
    RENDERS,
    Obj,
    Render,
    container_port,
    rendered,
)

MONITORING_RENDERS = [r for r in RENDERS if r.monitoring]
COMPONENT = K8S / "components" / "monitoring"
SHARED_FILES = ("dashboard.json", "prometheus-rule.yaml")
INFERENCE = tuple(s.name for s in GRPC_SERVICES if s.inference)


def _histogram(name: str, labels: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {f"{name}_bucket": (*labels, "le"), f"{name}_sum": labels, f"{name}_count": labels}


# What the code exports (issue 13: "Observability"), each metric with its own labels. The rules and the
# dashboard may use these, what Prometheus adds, and what the rules record; nothing else.
GRPC = ("grpc_type", "grpc_service", "grpc_method")
EXPORTED: dict[str, tuple[str, ...]] = {
    # every gRPC service (grpc-prometheus names)
    "grpc_server_started_total": GRPC,
    "grpc_server_handled_total": (*GRPC, "grpc_code"),
    **_histogram("grpc_server_handling_seconds", GRPC),
    # the model services
    **_histogram("vision_inference_seconds", ("model", "version")),
    **_histogram("vision_batch_size", ("model",)),
    **_histogram("vision_queue_wait_seconds", ("model",)),
    "vision_queue_depth": (),
    **_histogram("vision_decode_seconds", ()),
    "vision_models_loaded": ("model", "version"),
    "vision_model_load_failures_total": ("model",),
    "vision_gpu_memory_used_bytes": ("gpu",),
    "vision_gpu_memory_total_bytes": ("gpu",),
    "vision_gpu_utilization_ratio": ("gpu",),
    # the trainer
    "vision_trainer_jobs": ("state",),
    "vision_trainer_jobs_finished_total": ("state",),
    **_histogram("vision_trainer_epoch_seconds", ()),
    **_histogram("vision_trainer_images_per_second", ()),
    "vision_trainer_upload_bytes_total": (),
    # the gateway
    "vision_gateway_requests_total": ("route", "method", "status"),
    **_histogram("vision_gateway_request_seconds", ("route",)),
    "vision_gateway_upstream_errors_total": ("service", "code"),
    "vision_gateway_auth_rejections_total": ("reason",),
    "vision_gateway_rate_limited_total": (),
    "vision_gateway_in_flight_requests": (),
}
FAMILIES = {re.sub(r"_(bucket|sum|count)$", "", name) for name in EXPORTED}
SCRAPE_SERIES = {"up": ()}  # made by Prometheus for every target
# What every scraped series carries (the Prometheus Operator's target labels; job = the component).
TARGET_LABELS = ("namespace", "job", "pod", "service", "container", "endpoint", "instance")
SERVER_SIDE_CODES = ("UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED")
CALLER_CODES = ("OK", "CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED")
# Concrete stand-ins for the dashboard's Grafana variables, so that the parser sees plain PromQL.
GRAFANA_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "namespace": NAMESPACE,
    "service": "classifier",
}


# -- the shared files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHARED_FILES)
def test_the_chart_carries_the_components_rules_and_dashboard_unchanged(name: str) -> None:
    # Helm cannot read outside the chart, kustomize outside its root: one file, copied, never edited twice.
    assert (CHART / "files" / name).read_bytes() == (COMPONENT / name).read_bytes(), (
        f"cp deploy/k8s/components/monitoring/{name} deploy/k8s/helm/vision/files/{name}"
    )


@functools.cache
def rule_file() -> Obj:
    rule: Obj = yaml.safe_load((COMPONENT / "prometheus-rule.yaml").read_text())
    return rule


@functools.cache
def dashboard() -> Obj:
    board: Obj = json.loads((COMPONENT / "dashboard.json").read_text())
    return board


def rules() -> list[Obj]:
    return [rule for group in rule_file()["spec"]["groups"] for rule in group["rules"]]


def alerts() -> list[Obj]:
    return [rule for rule in rules() if "alert" in rule]


def recorded() -> dict[str, Obj]:
    return {rule["record"]: rule for rule in rules() if "record" in rule}


# -- PromQL ------------------------------------------------------------------------------------------------
def selectors(expr: Any) -> list[Any]:
    found: list[Any] = []
    promql_parser.walk(
        expr, lambda node: found.append(node) if isinstance(node, promql_parser.VectorSelector) else None
    )
    return found


def aggregations(expr: Any) -> list[Any]:
    found: list[Any] = []
    promql_parser.walk(
        expr, lambda node: found.append(node) if isinstance(node, promql_parser.AggregateExpr) else None
    )
    return found


def labels_of(name: str) -> set[str]:
    """The labels a series of this name carries (a recorded one: what its rule aggregates by)."""
    if name in EXPORTED or name in SCRAPE_SERIES:
        return {*EXPORTED.get(name, ()), *TARGET_LABELS}
    if name in recorded():
        by = set()
        for aggregation in aggregations(promql_parser.parse(recorded()[name]["expr"])):
            if aggregation.modifier is not None:
                by |= set(aggregation.modifier.labels) - {"le"}
        return by
    raise AssertionError(f"{name} is neither exported by the code nor recorded by the rules")


def check_names_and_labels(text: str) -> set[str]:
    """Parse ``text`` and check that it names known series with their own labels; returns the names."""
    expr = promql_parser.parse(text)
    names = set()
    for selector in selectors(expr):
        assert selector.name, f"a selector without a metric name: {text}"
        known = labels_of(selector.name)
        used = {m.name for m in selector.matchers.matchers}
        assert used <= known, f"{selector.name} has no label {sorted(used - known)}: {text}"
        names.add(selector.name)
    for aggregation in aggregations(expr):
        if aggregation.modifier is not None and aggregation.modifier.type == promql_parser.AggModifierType.By:
            below = set().union(*(labels_of(s.name) for s in selectors(aggregation.expr)))
            missing = set(aggregation.modifier.labels) - below - {"le"}
            assert not missing, f"aggregated by {sorted(missing)}, which nothing below has: {text}"
    return names


def metrics_behind(names: set[str]) -> set[str]:
    """The exported metrics a set of names stands for (recorded names replaced by their definitions)."""
    found = set()
    for name in names:
        if name in recorded():
            found |= metrics_behind(
                {s.name for s in selectors(promql_parser.parse(recorded()[name]["expr"]))}
            )
        else:
            found.add(name)
    return found


def test_the_parser_rejects_what_prometheus_rejects() -> None:
    # The checks below are only worth having if the parser is strict.
    for broken in ("sum(rate(x[5m])", "rate(x)", "x{a=b}", "histogram_quantile(0.99 sum(x))", "x[5q]"):
        with pytest.raises(ValueError):
            promql_parser.parse(broken)


# -- the rules ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_every_rule_parses_and_uses_only_exported_metrics_with_their_labels(rule: Obj) -> None:
    assert check_names_and_labels(rule["expr"])


@pytest.mark.parametrize("alert", alerts(), ids=lambda r: r["alert"])
def test_every_alert_says_how_bad_what_and_for_how_long(alert: Obj) -> None:
    assert re.fullmatch(r"Vision[A-Z][A-Za-z]+", alert["alert"])
    assert promql_parser.parse_duration(alert["for"]).total_seconds() > 0, "a `for:` that rides out blips"
    assert alert["labels"]["severity"] in ("critical", "warning", "info")
    assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_recording_rules_follow_the_naming_convention_and_are_used() -> None:
    used: set[str] = set()
    for rule in rules():
        used |= {s.name for s in selectors(promql_parser.parse(rule["expr"]))}
    for name in recorded():
        assert re.fullmatch(r"vision:[a-z0-9_]+:[a-z0-9_]+", name), "level:metric:operations"
        assert name in used, f"{name} is recorded but nothing uses it"


@pytest.mark.parametrize(
    "metric",
    [
        "grpc_server_handled_total",  # error rate and RESOURCE_EXHAUSTED per service
        "vision_gateway_requests_total",  # 429s and 5xx at the gateway
        "vision_gateway_rate_limited_total",
        "grpc_server_handling_seconds_bucket",  # p99 latency
        "vision_gateway_request_seconds_bucket",
        "vision_model_load_failures_total",
        "vision_trainer_jobs_finished_total",
    ],
)
def test_the_alerts_watch(metric: str) -> None:
    watched = set()
    for alert in alerts():
        watched |= metrics_behind({s.name for s in selectors(promql_parser.parse(alert["expr"]))})
    assert metric in watched


def _matcher_values(label: str) -> list[str]:
    """The values (regexes included) the rules match ``label`` against."""
    values = []
    for rule in rules():
        for selector in selectors(promql_parser.parse(rule["expr"])):
            values += [m.value for m in selector.matchers.matchers if m.name == label]
    return values


def test_the_error_rate_counts_server_side_codes_and_not_the_callers_mistakes() -> None:
    (errors,) = [v for v in _matcher_values("grpc_code") if "INTERNAL" in v]
    for code in SERVER_SIDE_CODES:
        assert re.fullmatch(errors, code), code
    for code in (*CALLER_CODES, "RESOURCE_EXHAUSTED"):  # a full queue has its own alert
        assert not re.fullmatch(errors, code), code
    assert "RESOURCE_EXHAUSTED" in _matcher_values("grpc_code")


def test_the_trainer_alert_counts_failed_jobs() -> None:
    states = [
        {m.name: m.value for m in s.matchers.matchers}.get("state")
        for a in alerts()
        for s in selectors(promql_parser.parse(a["expr"]))
        if s.name == "vision_trainer_jobs_finished_total"
    ]
    assert states == ["failed"]


def test_the_rules_select_our_grpc_services_only() -> None:
    for pattern in _matcher_values("grpc_service"):
        assert re.fullmatch(pattern, "vision.v1.Classifier") or re.fullmatch(pattern, "vision.v1.Detector")
        assert not re.fullmatch(pattern, "grpc.health.v1.Health") and not re.fullmatch(pattern, "visionXv1.X")


@pytest.mark.parametrize("render", MONITORING_RENDERS, ids=str)
def test_the_rendered_prometheus_rule_is_the_shared_file(render: Render) -> None:
    (rule,) = rendered(render).of_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == rule_file()["spec"]
    assert "release" in rule["metadata"]["labels"], "kube-prometheus-stack selects rules by release"


# -- the ServiceMonitors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("render", RENDERS, ids=str)
def test_monitoring_objects_are_rendered_only_where_asked_for(render: Render) -> None:
    manifest = rendered(render)
    dashboards = [c for c in manifest.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    for found in (manifest.of_kind("ServiceMonitor"), manifest.of_kind("PrometheusRule"), dashboards):
        assert bool(found) == render.monitoring


@pytest.mark.parametrize("render", MONITORING_RENDERS, ids=str)
def test_each_service_monitor_scrapes_the_metrics_port_of_its_components_services(render: Render) -> None:
    manifest = rendered(render)
    scraped = []
    for monitor in manifest.of_kind("ServiceMonitor"):
        spec = monitor["spec"]
        assert "namespaceSelector" not in spec, "its own namespace, the Services'"
        services = manifest.services_selected(spec["selector"])
        (component,) = {c for s in services for c in manifest.selected_components(s["spec"]["selector"])}
        scraped.append(component)
        # job = the component, the name the rules and the dashboard select on.
        assert spec["jobLabel"] == "app.kubernetes.io/component"
        assert {s["metadata"]["labels"][spec["jobLabel"]] for s in services} == {component}
        (endpoint,) = spec["endpoints"]
        assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "http")
        assert promql_parser.parse_duration(endpoint["interval"]) > promql_parser.parse_duration(
            endpoint["scrapeTimeout"]
        )
        ports = [p for s in services for p in s["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert ports, f"no Service of {component} has the port {endpoint['port']}"
        for port in ports:
            assert container_port(manifest.container(component), port["targetPort"]) == container_port(
                manifest.container(component), "metrics"
            )
        assert "release" in monitor["metadata"]["labels"], "kube-prometheus-stack selects by release"
    assert sorted(scraped) == sorted(render.services), "one ServiceMonitor per component"


# -- the dashboard -----------------------------------------------------------------------------------------
def panels(board: Obj) -> Iterator[Obj]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside collapsed rows


def concrete(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def targets() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def test_the_dashboard_has_unique_panel_ids_and_a_prometheus_datasource_variable() -> None:
    board = dashboard()
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), ids
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in panels(board):
        for owner in (panel, *panel.get("targets", [])):
            if "datasource" in owner:
                assert owner["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    # One row per model service, repeated over these values; the job label is the component.
    assert variables["service"]["query"].split(",") == list(INFERENCE)
    assert any(p.get("repeat") == "service" for p in panels(board))


@pytest.mark.parametrize("expr", targets())
def test_every_dashboard_query_parses_and_uses_only_exported_metrics(expr: str) -> None:
    assert check_names_and_labels(concrete(expr))


def test_the_dashboards_variables_query_exported_series() -> None:
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            check_names_and_labels(match.group(1))
            assert match.group(2) in TARGET_LABELS


def test_the_dashboard_shows_every_exported_metric() -> None:
    shown = set().union(*(check_names_and_labels(concrete(expr)) for expr in targets()))
    missing = FAMILIES - {re.sub(r"_(bucket|sum|count)$", "", name) for name in shown}
    assert not missing, f"no panel shows {sorted(missing)}"


@pytest.mark.parametrize("render", MONITORING_RENDERS, ids=str)
def test_the_dashboard_config_map_is_labelled_for_grafanas_sidecar(render: Render) -> None:
    (config_map,) = [
        c for c in rendered(render).of_kind("ConfigMap") if c["metadata"]["name"].endswith("dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = config_map["data"].values()
    assert json.loads(content) == dashboard()
    assert len(content.encode()) < 256 * 1024, "kubectl apply keeps a copy in an annotation (256 KiB at most)"


# -- KEDA --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("render", [r for r in RENDERS if r.keda], ids=str)
def test_keda_scales_each_inference_service_on_its_own_queue(render: Render) -> None:
    manifest = rendered(render)
    for scaled in manifest.of_kind("ScaledObject"):
        target = manifest.named("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        assert target is not None
        (component,) = manifest.selected_components(target["spec"]["selector"])
        assert component in INFERENCE
        assert scaled["spec"]["minReplicaCount"] >= 1, "never zero: loading the models takes minutes"
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert check_names_and_labels(query) == {"vision_queue_depth"}
        (selector,) = selectors(promql_parser.parse(query))
        matchers = {m.name: m.value for m in selector.matchers.matchers}
        assert matchers == {"namespace": NAMESPACE, "job": component}
        assert float(trigger["metadata"]["threshold"]) > 0

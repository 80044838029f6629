"""Project policy over every render of deploy/k8s, continued: network reachability (default deny, who may
reach whom), secrets, storage and scaling."""

from __future__ import annotations

import pytest

from tests.deploy_manifests import (
    GRPC_SERVICES,
    RENDERS,
    Manifest,
    Obj,
    Render,
    container_port,
    rendered,
    selects,
)
from tests.test_deploy_policy import grpc_components, parametrize_renders

POLICY_RENDERS = [r for r in RENDERS if r.network_policies]
SCALED_RENDERS = [r for r in RENDERS if r.autoscaling]


# -- network ------------------------------------------------------------------------------------------------
def _policies(manifest: Manifest, component: str, kind: str) -> list[Obj]:
    labels = manifest.deployment(component)["spec"]["template"]["metadata"]["labels"]
    return [
        p
        for p in manifest.of_kind("NetworkPolicy")
        if kind in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], labels)
    ]


def _peers(manifest: Manifest, component: str, kind: str) -> list[tuple[Obj, list[Obj]]]:
    """(rule, peers) of every rule that admits traffic to (Ingress) or from (Egress) the component."""
    return manifest.policy_rules(component, kind)


@pytest.mark.parametrize("render", POLICY_RENDERS, ids=str)
def test_every_pod_is_denied_by_default_in_both_directions(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        for kind in ("Ingress", "Egress"):
            assert _policies(manifest, component, kind), f"{component}: no {kind} policy, so all is allowed"


@pytest.mark.parametrize("render", POLICY_RENDERS, ids=str)
def test_only_the_gateway_reaches_the_grpc_services(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        rules = _peers(manifest, component, "Ingress")
        assert rules, f"{component} admits nobody, not even the gateway"
        for rule, peers in rules:
            ports = [container_port(manifest.container(component), p["port"]) for p in rule["ports"]]
            if render.tls and ports == [container_port(manifest.container(component), "health")]:
                continue  # the plaintext health-only port, for the kubelet's probes (test_deploy_security.py)
            if ports == [container_port(manifest.container(component), "metrics")]:
                continue  # Prometheus, from its namespace alone (tests/test_deploy_metrics.py)
            assert peers, f"{component} admits everyone: {rule}"
            for peer in peers:
                assert set(peer) == {"podSelector"}, f"{component} admits {peer}"
                assert manifest.selected_components(peer["podSelector"]) == {"gateway"}, peer
            assert ports == [container_port(manifest.container(component), "grpc")]
        gateway_out = _peers(manifest, "gateway", "Egress")
        assert any(
            "podSelector" in peer and component in manifest.selected_components(peer["podSelector"])
            for _, peers in gateway_out
            for peer in peers
        ), f"the gateway may not call {component}"


@pytest.mark.parametrize("render", POLICY_RENDERS, ids=str)
def test_only_the_trainer_may_leave_the_cluster(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        for rule, peers in _peers(manifest, component, "Egress"):
            external = not peers or any("ipBlock" in p for p in peers)
            dns_only = all(p.get("port") == 53 for p in rule.get("ports", [{}]))
            if external and not dns_only:
                # The gateway only to fetch the JWT issuer's keys over HTTPS, and only when JWTs are on.
                jwks = component == "gateway" and render.jwt and [p["port"] for p in rule["ports"]] == [443]
                assert component == "trainer" or jwks, f"{component} may egress: {rule}"
    if "trainer" in render.services:
        trainer_out = [peers for _, peers in _peers(manifest, "trainer", "Egress")]
        assert any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peers in trainer_out for p in peers)


@pytest.mark.parametrize("render", POLICY_RENDERS, ids=str)
def test_only_the_trainer_its_ranks_and_the_seeding_job_may_leave_the_cluster(render: Render) -> None:
    # Every policy, not only those of the Deployments: the seeding Job's pod and the ranks of distributed
    # training jobs (pods the trainer creates) have policies of their own.
    allowed = {"trainer", "trainer-worker", "seed-models"}
    for policy in rendered(render).of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            peers = rule.get("to", [])
            dns_only = all(p.get("port") == 53 for p in rule.get("ports", [{}]))
            if not (any("ipBlock" in peer for peer in peers) or (not peers and not dns_only)):
                continue
            labels = policy["spec"]["podSelector"].get("matchLabels", {})
            component = labels.get("app.kubernetes.io/component")
            jwks = component == "gateway" and render.jwt and [p["port"] for p in rule["ports"]] == [443]
            assert component in allowed or jwks, f"{policy['metadata']['name']} lets {component} out: {rule}"


# -- secrets, storage, scaling -----------------------------------------------------------------------------
@parametrize_renders
def test_kaggle_credentials_are_mounted_into_the_trainer_only(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        env = manifest.env(manifest.container(component))
        # Secrets a pod may have besides: its TLS certificate, and the gateway's API keys.
        own = {env.get("VISION_TLS_CERT_FILE", "").rpartition("/")[0]}
        own.add(env.get("VISION_AUTH_KEYS_FILE", "").rpartition("/")[0])
        own_volumes = {
            m["name"] for m in manifest.container(component)["volumeMounts"] if m["mountPath"] in own
        }
        secrets = [
            v
            for v in manifest.pod_spec(component)["volumes"]
            if "secret" in v and v["name"] not in own_volumes
        ]
        if component != "trainer":
            assert not secrets, f"{component} mounts {secrets}"
            continue
        (volume,) = secrets
        assert volume["secret"]["optional"] is True, "the trainer must start without Kaggle credentials"
        env = manifest.env(manifest.container("trainer"))
        mount = next(m for m in manifest.container("trainer")["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True and env["KAGGLE_CONFIG_DIR"] == mount["mountPath"]
        secret = manifest.named("Secret", volume["secret"]["secretName"])
        if secret is not None:
            keys = {**secret.get("data", {}), **secret.get("stringData", {})}
            assert set(keys) == {"kaggle.json"}, "kagglehub reads KAGGLE_CONFIG_DIR/kaggle.json"


@pytest.mark.parametrize("render", SCALED_RENDERS, ids=str)
def test_gateway_and_inference_services_autoscale_and_have_disruption_budgets(render: Render) -> None:
    manifest = rendered(render)
    scaled = {"gateway"} | {s.name for s in GRPC_SERVICES if s.inference}
    # With KEDA, its ScaledObjects scale the inference services (and make their HPAs); the gateway keeps its.
    by_keda = scaled - {"gateway"} if render.keda else set()
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in manifest.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {render.name_of(c) for c in scaled - by_keda}
    scaled_objects = {s["spec"]["scaleTargetRef"]["name"]: s for s in manifest.of_kind("ScaledObject")}
    assert set(scaled_objects) == {render.name_of(c) for c in by_keda}
    for component in scaled:
        deployment = manifest.deployment(component)
        scaler = {**hpas, **scaled_objects}[deployment["metadata"]["name"]]
        assert scaler["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert "replicas" not in deployment["spec"], f"{component}: the autoscaler owns the replica count"
    budgets = [
        manifest.selected_components(p["spec"]["selector"]) for p in manifest.of_kind("PodDisruptionBudget")
    ]
    assert sorted(budgets, key=sorted) == sorted(({c} for c in scaled), key=sorted)
    trainer = manifest.deployment("trainer")["spec"]
    assert trainer["replicas"] == 1 and trainer["strategy"]["type"] == "Recreate"


@parametrize_renders
def test_images_are_the_services_own_and_pinned_to_a_tag(render: Render) -> None:
    for component, _, container in rendered(render).containers():
        image = container["image"]
        repository, _, tag = image.rpartition(":")
        assert repository.endswith(f"/vision-{component}"), image
        assert tag and tag != "latest", image

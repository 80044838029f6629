"""Security policy over every render of deploy/k8s: authentication on at the gateway with its keys from a
Secret, the split Ingress (limits, TLS, nothing internal routed), namespaces, egress that never reaches the
cloud metadata service or private ranges, and mutual TLS between the services (cert-manager Certificates,
certificates mounted, TLS settings, probes on the plaintext health port)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from typing import Any

import pytest

from tests.deploy_manifests import (
    BY_NAME,
    CLUSTER_SCOPED_KINDS,
    GRPC_SERVICES,
    NAMESPACE,
    RENDERS,
    Manifest,
    Obj,
    Render,
    container_port,
    grpc_target,
    helm_objects,
    rendered,
)
from tests.test_deploy_policy import grpc_components, parametrize_renders
from vision.security.tls import GATEWAY_CLIENT_NAME
from vision.settings import DEFAULT_MAX_UPLOAD_BYTES

INGRESS_RENDERS = [r for r in RENDERS if r.ingress]
TLS_RENDERS = [r for r in RENDERS if r.tls]
POLICY_RENDERS = [r for r in RENDERS if r.network_policies]
# What the public must reach (the web page included), and what must stay inside the cluster.
INFERENCE_PATHS = ("/predict", "/explain", "/detect", "/models", "/healthz", "/", "/static/app.js")
TRAINING_PATHS = ("/train", "/jobs", "/jobs/abc/events")
INTERNAL_PATHS = ("/metrics", "/metrics/", "/docs", "/docs/oauth2-redirect", "/redoc")
# No pod may reach these through an ipBlock: node credentials (metadata) and the cluster's own networks.
FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",
        "169.254.0.0/16",
        "fd00:ec2::254/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    )
)


def _secret_mount(manifest: Manifest, component: str, path: str) -> tuple[Obj, Obj]:
    """(volumeMount, volume) of the Secret volume the file ``path`` of the component's container lies in."""
    container = manifest.container(component)
    mount = next(
        (m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == PurePosixPath(path).parent),
        None,
    )
    assert mount is not None, f"{component}: {path} is in no mounted directory (subPath mounts do not count)"
    volume = next(v for v in manifest.pod_spec(component)["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{component}: {path} is not from a Secret: {volume}"
    return mount, volume


def _assert_directory_mount_of_key(mount: Obj, volume: Obj, path: str) -> None:
    # subPath mounts never see a Secret's updates (renewed certificates, created and revoked keys).
    assert "subPath" not in mount and "subPathExpr" not in mount, mount
    assert mount.get("readOnly") is True, mount
    items = volume["secret"].get("items")
    key = PurePosixPath(path).name
    assert items is None or any(i["path"] == key for i in items), f"{key} is not projected: {items}"


# -- namespaces ---------------------------------------------------------------------------------------------
@parametrize_renders
def test_every_namespaced_object_names_the_namespace(render: Render) -> None:
    # Without it, `kubectl apply` puts the object into the context's namespace (deploy review, finding 8:
    # the Ingress landed in `default`, where the gateway's Service does not exist).
    for obj in rendered(render).objects:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED_KINDS:
            assert namespace is None, f"{obj['kind']}/{obj['metadata']['name']} is cluster-scoped"
        else:
            assert namespace == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}: namespace {namespace}"


# -- authentication -----------------------------------------------------------------------------------------
@parametrize_renders
def test_the_gateway_requires_credentials(render: Render) -> None:
    env = rendered(render).env(rendered(render).container("gateway"))
    assert env.get("VISION_AUTH_REQUIRED") == "true"


@parametrize_renders
def test_api_keys_come_from_a_secret_mounted_as_a_directory(render: Render) -> None:
    manifest = rendered(render)
    env = manifest.env(manifest.container("gateway"))
    keys_file = env.get("VISION_AUTH_KEYS_FILE", "")
    assert keys_file, "no API-key file (VISION_AUTH_KEYS_FILE)"
    mount, volume = _secret_mount(manifest, "gateway", keys_file)
    _assert_directory_mount_of_key(mount, volume, keys_file)
    # The operator creates it (`kubectl create secret generic ... --from-file=keys.json`): no keys in values.
    assert manifest.named("Secret", volume["secret"]["secretName"]) is None
    # Required unless JWTs can sign callers in without it.
    assert volume["secret"].get("optional", False) == render.jwt


@parametrize_renders
def test_jwt_sign_in_is_complete_where_configured_and_absent_elsewhere(render: Render) -> None:
    manifest = rendered(render)
    env = manifest.env(manifest.container("gateway"))
    jwt = {k: v for k, v in env.items() if k.startswith("VISION_AUTH_JWT_")}
    if not render.jwt:
        assert not jwt, jwt
        return
    assert jwt["VISION_AUTH_JWT_ISSUER"].startswith("https://")
    assert jwt["VISION_AUTH_JWT_AUDIENCE"]
    assert jwt["VISION_AUTH_JWT_JWKS_URL"].startswith("https://")
    assert jwt["VISION_AUTH_JWT_ROLE_CLAIM"]
    if render.network_policies:  # the gateway may fetch the issuer's keys: HTTPS to public addresses
        rules = [
            rule
            for p in manifest.of_kind("NetworkPolicy")
            if "Egress" in p["spec"]["policyTypes"]
            and manifest.selected_components(p["spec"]["podSelector"]) == {"gateway"}
            for rule in p["spec"]["egress"]
            if any("ipBlock" in peer for peer in rule.get("to", []))
        ]
        assert rules and all([p["port"] for p in rule["ports"]] == [443] for rule in rules), rules


# -- the Ingresses ------------------------------------------------------------------------------------------
def _routes(ingress: Obj, path: str) -> bool:
    """Does the Ingress route ``path`` (Kubernetes semantics: Exact is equality, Prefix matches whole path
    elements, so /models matches /models/x but not /modelsx)?"""
    for rule in ingress["spec"]["rules"]:
        for entry in rule["http"]["paths"]:
            rule_path, kind = entry["path"], entry["pathType"]
            if kind == "Exact" and path == rule_path:
                return True
            if kind in ("Prefix", "ImplementationSpecific"):
                elements = [e for e in rule_path.split("/") if e]
                if [e for e in path.split("/") if e][: len(elements)] == elements:
                    return True
    return False


def _size_bytes(value: str) -> int:
    """An nginx size ("21m", "2100m", "1g", "512k", "1048576") in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def _ingresses(render: Render) -> tuple[Obj, Obj]:
    manifest = rendered(render)
    inference = manifest.named("Ingress", render.name_of("gateway"))
    training = manifest.named("Ingress", render.name_of("gateway") + "-training")
    names = [i["metadata"]["name"] for i in manifest.of_kind("Ingress")]
    assert inference is not None and training is not None, names
    assert len(manifest.of_kind("Ingress")) == 2
    return inference, training


@pytest.mark.parametrize("render", INGRESS_RENDERS, ids=str)
def test_the_ingress_is_split_into_inference_and_training(render: Render) -> None:
    inference, training = _ingresses(render)
    for path in INFERENCE_PATHS:
        assert _routes(inference, path) and not _routes(training, path), path
    for path in TRAINING_PATHS:
        assert _routes(training, path) and not _routes(inference, path), path


@pytest.mark.parametrize("render", INGRESS_RENDERS, ids=str)
def test_metrics_and_docs_have_no_public_route(render: Render) -> None:
    for ingress in _ingresses(render):
        for path in INTERNAL_PATHS:
            assert not _routes(ingress, path), f"{ingress['metadata']['name']} routes {path}"


def test_helm_exposes_the_docs_only_when_asked() -> None:
    objects = helm_objects("gateway.ingress.enabled=true", "gateway.ingress.exposeDocs=true")
    (inference,) = [
        o for o in objects if o["kind"] == "Ingress" and o["metadata"]["name"] == "vision-gateway"
    ]
    assert _routes(inference, "/docs") and _routes(inference, "/redoc")
    assert not _routes(inference, "/metrics")


@pytest.mark.parametrize("render", INGRESS_RENDERS, ids=str)
def test_each_ingress_has_an_explicit_class_and_tls_for_its_hosts(render: Render) -> None:
    for ingress in _ingresses(render):
        spec = ingress["spec"]
        assert spec.get("ingressClassName"), "unset, the cluster's default controller (or none) takes it"
        assert spec.get("tls"), f"{ingress['metadata']['name']}: no TLS"
        covered = {host for entry in spec["tls"] for host in entry["hosts"]}
        assert all(entry.get("secretName") for entry in spec["tls"])
        assert {rule.get("host") for rule in spec["rules"]} <= covered
        annotations = ingress["metadata"].get("annotations", {})
        assert annotations.get("nginx.ingress.kubernetes.io/ssl-redirect", "true") == "true"


@pytest.mark.parametrize("render", INGRESS_RENDERS, ids=str)
def test_inference_bodies_are_limited_to_about_the_image_limit_with_short_timeouts(render: Render) -> None:
    manifest = rendered(render)
    image_limit = int(manifest.env(manifest.container("gateway"))["VISION_MAX_IMAGE_BYTES"])
    inference, _ = _ingresses(render)
    annotations = inference["metadata"]["annotations"]
    body = _size_bytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
    assert image_limit < body <= 2 * image_limit, "an image plus its form, not more"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) <= 120, timeout
    assert annotations.get("nginx.ingress.kubernetes.io/proxy-request-buffering", "on") == "on"


@pytest.mark.parametrize("render", INGRESS_RENDERS, ids=str)
def test_training_streams_its_large_uploads_with_long_timeouts(render: Render) -> None:
    _, training = _ingresses(render)
    annotations = training["metadata"]["annotations"]
    body = _size_bytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
    assert DEFAULT_MAX_UPLOAD_BYTES < body <= 2 * DEFAULT_MAX_UPLOAD_BYTES
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", "Server-Sent Events"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600


# -- egress -------------------------------------------------------------------------------------------------
def _uncovered(block: Obj) -> list[str]:
    """The forbidden networks an ipBlock reaches (overlaps and does not except)."""
    cidr = ipaddress.ip_network(block["cidr"])
    excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
    return [
        str(net)
        for net in FORBIDDEN_NETWORKS
        if net.version == cidr.version
        and net.overlaps(cidr)
        and not any(net.version == e.version and net.subnet_of(e) for e in excepted)  # type: ignore[arg-type]
    ]


# The one private address a pod may reach: the API server's endpoint, for a trainer that runs its jobs as
# Kubernetes Jobs, on the API server's ports alone.
API_SERVER_PORTS = {443, 6443}


def _is_api_server_rule(manifest: Manifest, policy: Obj, rule: Obj) -> bool:
    hosts = [peer.get("ipBlock", {}) for peer in rule.get("to", [])]
    single = [
        h for h in hosts if h and not h.get("except") and ipaddress.ip_network(h["cidr"]).num_addresses == 1
    ]
    return (
        manifest.render.trainer_backend == "kubernetes"
        and manifest.selected_components(policy["spec"]["podSelector"]) == {"trainer"}
        and bool(hosts)
        and single == hosts
        and {port["port"] for port in rule.get("ports", [])} <= API_SERVER_PORTS
    )


@pytest.mark.parametrize("render", POLICY_RENDERS, ids=str)
def test_no_egress_reaches_the_metadata_service_or_private_ranges(render: Render) -> None:
    manifest = rendered(render)
    blocks = [
        peer["ipBlock"]
        for p in manifest.of_kind("NetworkPolicy")
        for rule in p["spec"].get("egress", [])
        if not _is_api_server_rule(manifest, p, rule)
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]
    if "trainer" in render.services:
        assert blocks, "the trainer has an egress rule"
    for block in blocks:
        assert not _uncovered(block), f"{block['cidr']} reaches {_uncovered(block)}"
    for block in (b for b in blocks if b["cidr"] in ("0.0.0.0/0", "::/0")):
        assert block["cidr"] == "::/0" or "169.254.0.0/16" in block["except"], "the metadata service"


# -- mutual TLS -------------------------------------------------------------------------------------------
@parametrize_renders
def test_certificates_and_tls_settings_appear_together(render: Render) -> None:
    manifest = rendered(render)
    for component in render.services:
        env = manifest.env(manifest.container(component))
        tls = {k for k in env if k.startswith("VISION_TLS_")}
        assert bool(tls) == render.tls, f"{component}: {sorted(tls)}"


@pytest.mark.parametrize("render", TLS_RENDERS, ids=str)
def test_each_service_has_a_certificate_for_its_service_name(render: Render) -> None:
    manifest = rendered(render)
    certificates = {c["spec"]["secretName"]: c for c in manifest.of_kind("Certificate")}
    for component in [*grpc_components(render), "gateway"]:
        env = manifest.env(manifest.container(component))
        for variable, key in (
            ("VISION_TLS_CERT_FILE", "tls.crt"),
            ("VISION_TLS_KEY_FILE", "tls.key"),
            ("VISION_TLS_CA_FILE", "ca.crt"),
        ):
            path = env[variable]
            assert PurePosixPath(path).name == key, (
                f"{component}: {variable}={path} (cert-manager's key {key})"
            )
            mount, volume = _secret_mount(manifest, component, path)
            _assert_directory_mount_of_key(mount, volume, path)
        certificate = certificates.get(volume["secret"]["secretName"])
        assert certificate is not None, f"{component} mounts {volume['secret']['secretName']}: no Certificate"
        spec = certificate["spec"]
        if component == "gateway":
            # The one client the services let assert a caller.
            assert spec["commonName"] == GATEWAY_CLIENT_NAME
            assert GATEWAY_CLIENT_NAME in env["VISION_TLS_TRUSTED_CLIENTS"].split(",")
            assert "client auth" in spec["usages"]
            continue
        assert "server auth" in spec["usages"]
        address = manifest.env(manifest.container("gateway"))[f"VISION_GATEWAY_{component.upper()}_ADDR"]
        # With a dns:/// target the gateway checks the target's host: the headless Service's name.
        host, _ = grpc_target(address)
        assert host in spec["dnsNames"], f"the gateway dials {host}; the certificate names {spec['dnsNames']}"
        for name in (render.name_of(component), f"{render.name_of(component)}-headless"):
            assert f"{name}.{NAMESPACE}.svc" in spec["dnsNames"], name
        # Mutual TLS: the CA is set on the server, so clients without a certificate from it are refused.
        assert env["VISION_TLS_CA_FILE"]


@pytest.mark.parametrize("render", TLS_RENDERS, ids=str)
def test_probes_ask_the_plaintext_health_port_when_the_service_port_is_mutual_tls(render: Render) -> None:
    manifest = rendered(render)
    for component in grpc_components(render):
        container = manifest.container(component)
        env = manifest.env(container)
        health = int(env[f"{BY_NAME[component].env_prefix}HEALTH_PORT"])
        assert health != int(env[f"{BY_NAME[component].env_prefix}PORT"])
        assert container_port(container, "health") == health
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container_port(container, container[probe]["grpc"]["port"]) == health, (
                f"{component} {probe}"
            )
    if render.network_policies:  # explicit, for CNIs that police the node's traffic too
        admitted = [
            p
            for p in manifest.of_kind("NetworkPolicy")
            for rule in p["spec"].get("ingress", [])
            if [port["port"] for port in rule.get("ports", [])] == ["health"]
        ]
        assert admitted
        for policy in admitted:
            assert manifest.selected_components(policy["spec"]["podSelector"]) == set(grpc_components(render))


# cert-manager is not in kubernetes-validate's schemas: the fields these manifests use, checked here.
CERTIFICATE_FIELDS = {"secretName", "commonName", "dnsNames", "usages", "duration", "renewBefore",
                      "privateKey", "issuerRef", "isCA"}  # fmt: skip
USAGES = {"server auth", "client auth", "digital signature", "key encipherment", "cert sign"}
ISSUER_KINDS = {"Issuer", "ClusterIssuer"}


@pytest.mark.parametrize("render", TLS_RENDERS, ids=str)
def test_cert_manager_objects_use_only_fields_cert_manager_knows(render: Render) -> None:
    manifest = rendered(render)
    issuers = {i["metadata"]["name"]: i for i in manifest.of_kind("Issuer")}
    for obj in manifest.objects:
        if not obj["apiVersion"].startswith("cert-manager.io/"):
            continue
        assert obj["apiVersion"] == "cert-manager.io/v1", obj["apiVersion"]
        assert obj["kind"] in {"Certificate", *ISSUER_KINDS}, obj["kind"]
        spec: dict[str, Any] = obj["spec"]
        if obj["kind"] != "Certificate":
            assert set(spec) in ({"selfSigned"}, {"ca"}), spec
            if "ca" in spec:
                assert set(spec["ca"]) == {"secretName"}
            continue
        assert set(spec) <= CERTIFICATE_FIELDS, set(spec) - CERTIFICATE_FIELDS
        assert spec["secretName"] and (spec.get("dnsNames") or spec.get("commonName"))
        assert set(spec.get("usages", [])) <= USAGES
        for duration in ("duration", "renewBefore"):
            if duration in spec:
                assert re.fullmatch(r"\d+h", spec[duration]), spec[duration]
        assert spec.get("privateKey", {}).get("algorithm", "RSA") in {"RSA", "ECDSA", "Ed25519"}
        ref = spec["issuerRef"]
        assert ref.get("group", "cert-manager.io") == "cert-manager.io"
        assert ref.get("kind", "Issuer") in ISSUER_KINDS
        if ref.get("kind", "Issuer") == "Issuer":
            assert ref["name"] in issuers, f"{obj['metadata']['name']}: no Issuer {ref['name']}"


def test_every_grpc_service_is_covered_by_the_tls_renders() -> None:
    assert {s.name for s in GRPC_SERVICES} <= set().union(*(r.services for r in TLS_RENDERS))
